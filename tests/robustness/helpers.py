"""Shared pieces of the robustness tests: tiny valid feature files, a memory cap, tiny runs."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from selfmm.data.batch import Collator
from selfmm.data.layout import SPLITS
from selfmm.data.types import FeatureData


def tiny_split(n: int = 3, *, aligned: bool = False, seed: int = 0) -> dict:
    """A valid MMSA split of `n` clips, small enough that thousands of corruptions stay fast."""
    rng = np.random.default_rng(seed)
    lt, la, lv = (4, 4, 4) if aligned else (4, 6, 5)
    text = np.zeros((n, 3, lt))
    text[:, 0, :2] = [101, 2023]
    text[:, 1, :2] = 1
    split = {
        "text_bert": text,
        "audio": rng.standard_normal((n, la, 2)).astype(np.float32),
        "vision": rng.standard_normal((n, lv, 3)).astype(np.float32),
        "regression_labels": np.linspace(-1, 1, n).astype(np.float32),
        "id": np.array([f"clip$_${i}" for i in range(n)], dtype=object),
        "raw_text": np.array(["a b"] * n),
    }
    if not aligned:
        split["audio_lengths"] = np.full(n, la)
        split["vision_lengths"] = [lv] * n
    for s in "TAV":
        split[f"regression_labels_{s}"] = np.zeros(n, np.float32)
    return split


def tiny_file(aligned: bool = False) -> dict:
    return {split: tiny_split(aligned=aligned, seed=i) for i, split in enumerate(SPLITS)}


def assert_usable(data: FeatureData) -> None:
    """What a successful load promises: every split can be batched into finite tensors."""
    for name, split in data.splits.items():
        n = len(split)
        assert n >= 1, name
        assert len(split.ids) == n and len(split.raw_text) == n
        assert np.isfinite(split.labels).all()
        batch = Collator(split)(list(range(min(n, 4))))
        for tensor in (batch.text, batch.audio, batch.vision, batch.labels):
            assert tensor.isfinite().all() if tensor.is_floating_point() else True
        assert (batch.text >= 0).all() and (batch.text[:, 1:] <= 1).all()
        assert ((batch.audio_lengths >= 0) & (batch.audio_lengths <= batch.audio.shape[1])).all()
        assert ((batch.vision_lengths >= 0) & (batch.vision_lengths <= batch.vision.shape[1])).all()


def _address_space() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def memory_cap(extra: int = 1 << 30) -> Iterator[None]:
    """Cap this process's address space at its current size plus `extra` bytes, so a file
    that makes the loader allocate without bound fails the test (MemoryError) instead of
    quietly succeeding on a machine with enough memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def train_argv(data: str | Path, out: str | Path, bert: str | Path, *extra: str, command: str = "train") -> list[str]:
    """A tiny `selfmm train` (or `ablate`): one seed, one epoch, batches of 8."""
    return [command, "--dataset", "mosi", "--data", str(data), "--out", str(out), "--text-model", str(bert),
            "--seeds", "7", "--max-epochs", "1", "--set", "batch_size=8", *extra]


def copy_run(tiny_run: dict[str, Path], to: Path, checkpoints: bool = True) -> Path:
    ignore = None if checkpoints else shutil.ignore_patterns("*.pt")
    shutil.copytree(tiny_run["run"], to, ignore=ignore)
    return to


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)
