"""One writer per output, and only regular files replaced (selfmm.rundir.OutputLock, the claim
in selfmm.cli.outputs, selfmm.io): a FIFO or a device node given as an output is refused
whatever the flags; a second command on an output that another is writing is refused; what a
killed writer left beside (or inside) an output is removed by the next command on it; `cache`
builds its folder aside, so a full disk or two concurrent commands never leave a partial or
mixed cache.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selfmm.cli import main
from selfmm.cli.outputs import OUTPUTS, check_output
from selfmm.cli.parser import build_parser
from selfmm.data.mmsa import load_features
from selfmm.errors import SelfMMError
from selfmm.io import write_text
from selfmm.rundir import LOCK, OutputLock

from .helpers import remount, tmpfs
from .test_outputs import argv, refused

FILES = sorted(c for c in OUTPUTS if not OUTPUTS[c].folder)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def device_node(path: Path) -> Path:
    """A character device like /dev/null (1, 3), made here so that nothing real is at stake."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


@pytest.mark.parametrize("command", FILES)
def test_force_replaces_only_regular_files(command, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    node = device_node(tmp_path / "null")
    for target, kind in ((fifo, "is a FIFO (a named pipe)"), (node, "is a character device")):
        err = refused(capsys, argv(command, target, tmp_path) + ["--force"])
        assert f"{target} {kind}; selfmm replaces only regular files, --force or not" in err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(node.stat().st_mode)
    # The real /dev/null: only the policy is run, so nothing could be replaced even if it failed.
    with pytest.raises(SelfMMError, match="/dev/null is a character device"):
        check_output(build_parser().parse_args(argv(command, Path("/dev/null"), tmp_path) + ["--force"]))


def test_the_library_writer_replaces_only_regular_files(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(device_node(tmp_path / "null"))
    for target, kind in ((fifo, r"FIFO \(a named pipe\)"), (link, "character device"), (tmp_path, "folder")):
        with pytest.raises(SelfMMError, match=f"is a {kind}; selfmm replaces only regular files"):
            write_text(target, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    write_text(tmp_path / "plain", "x")  # a new or regular file is written as before


HOLDER = """
import sys, time
from selfmm.rundir import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                              env=env())
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_command_on_an_output_in_use_is_refused(tmp_path, synth_path, capsys):
    source = synth_path("mosi", scale=0.02)
    out, cache = tmp_path / "s.pkl", tmp_path / "c"
    for path, args in ((out, ["synth", "--profile", "mosi", "--scale", "0.001", "--out", str(out)]),
                       (cache, ["cache", str(source), "--out", str(cache)])):
        holder = hold(path)
        try:
            for extra in ([], ["--force"]):  # refused, not waited for and then replaced
                err = refused(capsys, args + extra)
                assert f"{path} is in use by process {holder.pid} on " in err and LOCK in err
            assert not path.exists()
        finally:
            holder.kill()
            holder.wait()
        assert main(args) == 0  # the kernel dropped the lock with its holder
        capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "s.pkl"]  # lock files gone


def test_two_caches_into_one_folder_never_mix(tmp_path, synth_path):
    """Two `cache --force` of different files (same shapes) into one folder at once: whatever
    the interleaving, the folder holds one file's arrays, whole."""
    sources = [synth_path("mosi", scale=0.02, seed=seed) for seed in (0, 1)]
    out = tmp_path / "c"
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "selfmm", "cache", str(s), "--out", str(out), "--force"],
                                  stderr=subprocess.PIPE, text=True, env=env()) for s in sources]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert any(code == 0 for code, _ in results), results
        for code, err in results:
            assert code == 0 or (code == 2 and "is in use by process" in err), err
        cached = load_features(out)
        origins = [load_features(s) for s in sources]
        same = [all(np.array_equal(cached.splits[n].audio, o.splits[n].audio)
                    and np.array_equal(cached.splits[n].vision, o.splits[n].vision)
                    and cached.splits[n].ids == o.splits[n].ids for n in cached.splits) for o in origins]
        assert sum(same) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


SLOW_CACHE = """
import sys, time
import numpy as np
header = np.lib.format.write_array_header_1_0
def slow(*args, **kwargs):
    header(*args, **kwargs)
    print("writing", flush=True)
    time.sleep(600)
np.lib.format.write_array_header_1_0 = slow
from selfmm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_cache_leaves_no_folder_and_its_temporary_goes_with_the_next(tmp_path, synth_path):
    source, out = synth_path("mosi", scale=0.02), tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CACHE, "cache", str(source), "--out", str(out)],
                            stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "c" not in left and any(name.startswith(".c.") and name.endswith(".tmp") for name in left), left
    assert main(["cache", str(source), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert load_features(out).splits["test"].ids == load_features(source).splits["test"].ids


def test_what_a_killed_writer_left_is_removed_by_the_next_command(tmp_path, synth_path):
    source = synth_path("mosi", scale=0.02)
    # synth's temporary file beside its output, and another file's that is not its own
    out = tmp_path / "s.pkl"
    (tmp_path / ".s.pkl.a1b2c3d4.tmp").write_bytes(b"\0" * 1000)
    (tmp_path / ".s.pkl.old.a1b2c3d4.tmp").write_bytes(b"mine")
    assert main(["synth", "--profile", "mosi", "--scale", "0.001", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.pkl.old.a1b2c3d4.tmp", "s.pkl"]
    # an older cache's temporary inside its folder, and a cache folder's temporary beside it
    cache = tmp_path / "c"
    assert main(["cache", str(source), "--out", str(cache)]) == 0
    (cache / ".train.audio.npy.x1y2z3w4.tmp").write_bytes(b"\0" * 1000)
    (tmp_path / ".c.q1w2e3r4.tmp").mkdir()
    (tmp_path / ".c.q1w2e3r4.tmp" / "train.audio.npy").write_bytes(b"\0" * 1000)
    assert main(["cache", str(source), "--out", str(cache), "--force"]) == 0
    assert not list(cache.glob(".*")) and not list(tmp_path.glob(".c.*"))


def test_a_full_disk_during_cache_is_one_line_and_leaves_no_partial_folder(tmp_path, synth_path, capsys):
    source = synth_path("mosi", scale=0.03)
    with tmpfs(tmp_path / "small", "size=64m") as mount:
        out = mount / "c"
        assert main(["cache", str(source), "--out", str(out)]) == 0
        capsys.readouterr()
        size = sum(p.stat().st_size for p in out.iterdir())
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        # Room for the cache, not for a second one beside it: the rewrite fails, the cache stays.
        remount(mount, f"size={size * 3 // 2}")
        err = refused(capsys, ["cache", str(source), "--out", str(out), "--force"])
        assert f"cannot write {out}: the disk is full" in err
        assert sorted(p.name for p in mount.iterdir()) == ["c"]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        # No room at all: nothing is left, not even an empty folder.
        err = refused(capsys, ["cache", str(source), "--out", str(mount / "new")])
        assert f"cannot write {mount / 'new'}: the disk is full" in err
        assert sorted(p.name for p in mount.iterdir()) == ["c"]


def test_the_lock_is_reentrant_and_cleans_up_the_folders_it_made(tmp_path):
    target = tmp_path / "new" / "deeper" / "x.pkl"
    with OutputLock(target):
        assert (tmp_path / "new" / "deeper" / f".x.pkl{LOCK}").exists()
        with OutputLock(target):  # the command, then the library function it calls
            pass
        assert (tmp_path / "new" / "deeper" / f".x.pkl{LOCK}").exists()
    assert not (tmp_path / "new").exists()  # nothing was written: the folders it made are gone
