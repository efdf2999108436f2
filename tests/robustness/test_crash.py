"""Crash safety: SIGKILL a real `selfmm train` at random moments, resume each time, and get
exactly the files of an uninterrupted run.

A kill is either timed (a seeded random delay over the uninterrupted run's duration: start-up
and data loading, mid-epoch) or triggered by a file write (the moment an atomic writer's
temporary file for a checkpoint, the best weights, the u-labels, the history, the metrics or
the results appears). Kills are chained: kill, `--resume`, kill, ... until the run finishes
unkilled; a chain that finishes before its kills are used up hands them to a new chain.
The default suite makes 5 kills; `-m slow` runs the 20-kill variant.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WRITES = {
    "checkpoint": ".checkpoint-epoch",
    "best weights": ".best.safetensors.",
    "u-labels": ".ulabels.npz.",
    "history": ".history.json.",
    "metrics": ".metrics.json.",
    "results": ".results.json.",
}
# Timed kills alternate with write-triggered ones; results come last since they end a chain.
SCHEDULE = ["time", "checkpoint", "mid-epoch", "best weights", "u-labels", "time", "history", "checkpoint",
            "time", "metrics", "results"]


def command(data: Path, bert: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "selfmm", "train", "--dataset", "mosi", "--data", str(data),
            "--out", str(out), "--text-model", str(bert), "--seeds", "7", "--max-epochs", "3",
            "--set", "batch_size=4", "--set", "accumulation_steps=2"] + (["--resume"] if resume else [])


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    # One thread: on a busy machine spinning OpenMP threads slow every run many times over.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def pending_write(out: Path) -> str | None:
    """Which atomic write is under way in `out` (its temporary file exists), if any."""
    for directory in (out, out / "seed-7"):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if name.endswith(".tmp"):
                return next((kind for kind, prefix in WRITES.items() if name.startswith(prefix)), name)
    return None


def run_until(cmd: list[str], log: Path, kind: str, delay: float, out: Path) -> tuple[int | None, str]:
    """Run `cmd`; SIGKILL it after `delay` s ("time") or when a `kind` write starts.

    Returns (exit status or None when killed, where the kill landed)."""
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=environment(),
                                start_new_session=True)
        start, wall_start = time.monotonic(), time.time()
        while proc.poll() is None:
            writing = pending_write(out)
            if (kind == "time" and time.monotonic() - start >= delay) or (
                kind == "mid-epoch" and in_later_epoch(out, writing, wall_start)
            ) or (
                kind not in ("time", "mid-epoch") and writing is not None and writing == kind
            ):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None, describe(log, out, pending_write(out))
            time.sleep(0.0005)
    return proc.returncode, "finished"


def in_later_epoch(out: Path, writing: str | None, started: float) -> bool:
    """True a quarter second after this process finished an epoch: a kill inside the next one."""
    if writing is not None:
        return False
    written = []
    for path in out.glob("seed-7/checkpoint-epoch*.pt"):
        with contextlib.suppress(FileNotFoundError):  # the run may rotate it away after the listing
            written.append(path.stat().st_mtime)
    return bool(written) and max(written) > started and time.time() - max(written) >= 0.25


def describe(log: Path, out: Path, writing: str | None) -> str:
    if writing:
        return f"while writing {writing}"
    text = log.read_text()
    if "epoch" not in text and not list(out.glob("seed-7/checkpoint-epoch*.pt")):
        return "during start-up and data loading"
    return "mid-epoch (training or validation)"


def outputs(out: Path) -> dict:
    seed = out / "seed-7"
    ulabels = np.load(seed / "ulabels.npz")
    history = json.loads((seed / "history.json").read_text())
    return {
        "results": json.loads((out / "results.json").read_text())["seeds"],
        "metrics": json.loads((seed / "metrics.json").read_text()),
        "predictions": (seed / "test_predictions.csv").read_text(),
        "ulabels": {k: ulabels[k].tolist() for k in ulabels.files},
        "losses": [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in history],
        "best": (seed / "best.safetensors").read_bytes(),
    }


def crash_and_resume(tmp_path: Path, data: Path, bert: Path, kills: int, seed: int) -> None:
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    assert run_until(command(data, bert, reference, False), tmp_path / "reference.log", "never", 0,
                     reference)[0] == 0, (tmp_path / "reference.log").read_text()
    duration = time.monotonic() - t0
    expected = outputs(reference)

    rng = random.Random(seed)
    landed: list[str] = []
    chain = 0
    while len(landed) < kills:
        chain += 1
        out = tmp_path / f"chain{chain}"
        resume = False
        while True:
            kind = SCHEDULE[len(landed) % len(SCHEDULE)] if len(landed) < kills else "never"
            log = tmp_path / f"chain{chain}-{len(landed)}.log"
            status, where = run_until(command(data, bert, out, resume), log, kind,
                                      rng.uniform(0, duration), out)
            resume = True
            if status is None:
                landed.append(where)
                continue
            assert status == 0, log.read_text()
            break
        got = outputs(out)
        for key in expected:
            assert got[key] == expected[key], f"chain {chain}: {key} differs from the uninterrupted run"
        assert not list(out.rglob("*.tmp")), "a resumed run left temporary files behind"
    print(f"\n{kills} kills over {chain} chain(s), reference run {duration:.1f} s: "
          + "; ".join(f"{w} x{landed.count(w)}" for w in dict.fromkeys(landed)))


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, synth_path, tiny_bert):
    crash_and_resume(tmp_path, synth_path("mosi", scale=0.02), tiny_bert, kills=5, seed=1)


@pytest.mark.slow
def test_twenty_kills(tmp_path, synth_path, tiny_bert):
    crash_and_resume(tmp_path, synth_path("mosi", scale=0.02), tiny_bert, kills=20, seed=2)


def torchrun(port: int, cmd: list[str]) -> list[str]:
    """`cmd` (a `python -m selfmm train ...`) under torchrun with 2 gloo processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            *cmd[1:], "--device", "cpu"]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The parent is the 2nd field after the parenthesised command name.
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_after_first_checkpoint(cmd: list[str], log: Path, out: Path) -> bool:
    """Run `cmd`; SIGKILL it and every process below it (torchrun starts its workers in
    sessions of their own) the moment epoch 1's checkpoint exists. Whether it was killed
    (False: it finished first)."""
    first = out / "seed-7" / "checkpoint-epoch0001.pt"
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=environment(),
                                start_new_session=True)
        while proc.poll() is None:
            if first.exists():
                for pid in [*descendants(proc.pid), proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.0005)
    return False


def test_two_processes_killed_and_resumed_match_an_uninterrupted_run(tmp_path, synth_path, tiny_bert):
    """Under torchrun each rank draws its own dropout masks, and only rank 0 writes the
    checkpoint: it holds every rank's random state, and each rank resumes its own. Killed
    once epoch 1's checkpoint is written and resumed, the run ends identical to an
    uninterrupted one: u-labels, losses, weights and predictions."""
    data = synth_path("mosi", scale=0.05)  # 64 training clips: 8 global batches of 2 x 4
    reference, out = tmp_path / "reference", tmp_path / "killed"
    status, _ = run_until(torchrun(29551, command(data, tiny_bert, reference, False)), tmp_path / "reference.log",
                          "never", 0, reference)
    assert status == 0, (tmp_path / "reference.log").read_text()
    assert kill_after_first_checkpoint(torchrun(29552, command(data, tiny_bert, out, False)),
                                       tmp_path / "killed.log", out), "the run finished before it could be killed"
    assert not (out / "seed-7" / "metrics.json").exists()
    status, _ = run_until(torchrun(29553, command(data, tiny_bert, out, True)), tmp_path / "resumed.log",
                          "never", 0, out)
    log = (tmp_path / "resumed.log").read_text()
    assert status == 0, log
    assert "seed 7: resuming after epoch" in log
    expected, got = outputs(reference), outputs(out)
    for key in expected:
        assert got[key] == expected[key], f"{key} differs from the uninterrupted run"
