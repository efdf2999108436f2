"""Disk and directory faults: unwritable, read-only, full; two runs on one directory.

The tests run as root in CI, where chmod does not stop writes, so unwritable and full disks
are real tmpfs mounts (skipped where mounting is not permitted) or an injected ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selfmm.cli import main
from selfmm.errors import SelfMMError
from selfmm.io import write_json
from selfmm.rundir import LOCK, RunDirectory

from .helpers import remount, tmpfs


def train(out: Path, data: Path, bert: Path, *extra: str) -> int:
    return main(["train", "--dataset", "mosi", "--data", str(data), "--out", str(out), "--text-model", str(bert),
                 "--seeds", "7", "--max-epochs", "1", "--set", "batch_size=8", *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("selfmm: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_out_below_a_file_fails_before_loading_anything(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["train", "--dataset", "mosi", "--data", str(tmp_path / "missing.pkl"),
                 "--out", str(tmp_path / "file"), "--text-model", "x"])
    assert code == 2 and "exists and is not a directory" in one_error_line(capsys)


def test_read_only_directory_is_found_by_the_probe(tmp_path, synth_path, tiny_bert, capsys):
    with tmpfs(tmp_path / "ro", "size=1m") as mount:
        (mount / "run").mkdir()
        remount(mount, "ro")
        assert train(mount / "run", synth_path("mosi", scale=0.02), tiny_bert, "--resume") == 2
        assert "run is not writable: Read-only file system" in one_error_line(capsys)
        assert train(mount / "new", synth_path("mosi", scale=0.02), tiny_bert) == 2
        assert "cannot create output directory" in one_error_line(capsys)


def test_full_disk_is_found_by_the_probe(tmp_path, synth_path, tiny_bert, capsys):
    with tmpfs(tmp_path / "full", "size=32k") as mount:
        assert train(mount / "run", synth_path("mosi", scale=0.02), tiny_bert) == 2
        assert "not writable: the disk is full" in one_error_line(capsys)
        assert not list((mount / "run").iterdir())  # probe removed, lock released


def test_disk_full_mid_run_fails_cleanly_then_resumes(tmp_path, synth_path, tiny_bert, capsys):
    """Room for the probe and the config, not for the weights: one line, exit 2, no partial or
    temporary file, no results; after freeing space, --resume finishes the run."""
    data = synth_path("mosi", scale=0.02)
    with tmpfs(tmp_path / "small", "size=2m") as mount:
        run = mount / "run"
        assert train(run, data, tiny_bert) == 2
        assert "the disk is full" in one_error_line(capsys)
        left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
        assert not [name for name in left if name.endswith(".tmp") or "results" in name or "metrics" in name
                    or name.endswith((".safetensors", ".pt"))], left
        assert LOCK not in left
        remount(mount, "size=64m")
        assert train(run, data, tiny_bert, "--resume") == 0
        assert set(json.loads((run / "results.json").read_text())["seeds"]) == {"7"}


def test_injected_enospc_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json(target, {"seeds": {"1": 0.5}})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SelfMMError, match="results.json: the disk is full; the previous version"):
        write_json(target, {"seeds": {"1": 0.9}})
    assert json.loads(target.read_text()) == {"seeds": {"1": 0.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


HOLDER = """
import sys, time
from selfmm.rundir import RunDirectory
with RunDirectory(sys.argv[1], resume=True):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_run_on_a_locked_directory_names_the_holder(tmp_path, synth_path, tiny_bert, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(run, synth_path("mosi", scale=0.02), tiny_bert, "--resume") == 2
        line = one_error_line(capsys)
        assert f"in use by process {holder.pid} on " in line and LOCK in line
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL left the lock file behind; the kernel released its lock with the process.
    assert (run / LOCK).exists()
    assert train(run, synth_path("mosi", scale=0.02), tiny_bert, "--resume") == 0
    assert (run / "results.json").exists() and not (run / LOCK).exists()


def test_lock_in_one_process(tmp_path):
    with RunDirectory(tmp_path / "run"):
        with pytest.raises(SelfMMError, match=f"in use by process {os.getpid()} on "):
            RunDirectory(tmp_path / "run", resume=True).__enter__()
    with RunDirectory(tmp_path / "run", resume=True):
        pass
