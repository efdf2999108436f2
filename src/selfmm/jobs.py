"""Seeds side by side: `fit(..., jobs=N)` trains up to N seeds at once, one process each.

Each job is a fresh (spawned) process holding its own copy of the data and of torch, with
the machine's threads divided among the jobs (`threads` each). Training on the CPU leaves a
core idle while the LSTMs run on one thread; two jobs fill it. A seed in a job runs exactly
`train.fit_seed`, as one job does with the same thread count, and so gives the same results.

The parent only waits: a seed that fails stops the others (their workers are terminated, as
on Ctrl-C, see selfmm.pools) and its error is raised in the parent. A job writes its files
atomically, and a job stopped mid-epoch resumes from its last checkpoint like any run.

On a GPU the N jobs share the one device (each its own CUDA context and memory).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import pools
from .configuration import Config
from .data.types import FeatureData
from .models import model_builder
from .train import fit_seed


@dataclass(frozen=True)
class SeedTask:
    """What every job needs to train any seed of the run."""

    cfg: Config
    out: Path  # the run directory
    device: torch.device
    model: type[torch.nn.Module] | None  # None: Self-MM; else importable by name in a new process
    resume: bool
    provenance: dict[str, Any]


_data: FeatureData | None = None
_task: SeedTask | None = None


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """torch's CPU threads divided among `jobs`, at least one each."""
    return max(1, (threads or torch.get_num_threads()) // jobs)


def _start(data: FeatureData, task: SeedTask, threads: int) -> None:
    """A job's initializer: the data and task once per process; its share of the threads."""
    global _data, _task
    pools.ignore_interrupts()  # Ctrl-C is the parent's to handle (selfmm.pools)
    # A terminated job (the parent stopping it) unwinds like an interrupted run, so that its
    # atomic writers remove their temporary files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing one: a named semaphore that a terminated job
    # never unlinks, which multiprocessing then reports as leaked. A job shows no bar anyway.
    tqdm.set_lock(threading.RLock())
    _data, _task = data, task


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fit(seed: int) -> dict[str, float]:
    task = _task
    try:
        return fit_seed(task.cfg, _data, task.out / f"seed-{seed}", seed, task.device,
                        model_builder(task.cfg, task.model), resume=task.resume, log=_log, progress=False,
                        provenance=task.provenance)
    except SystemExit as stopped:
        # Terminated by the parent, and unwound (temporary files removed): leave now, rather
        # than hand the exit back to the pool's loop, which would wait for its next job.
        os._exit(stopped.code if isinstance(stopped.code, int) else 1)


def fit_seeds(data: FeatureData, task: SeedTask, seeds: list[int], jobs: int,
              threads: int) -> dict[int, dict[str, float]]:
    """Every seed's test metrics, training up to `jobs` seeds at once on `threads` threads each."""
    executor = ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start, initargs=(data, task, threads))
    try:
        futures = {executor.submit(_fit, seed): seed for seed in seeds}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()
        return {seed: future.result() for future, seed in futures.items()}
    except BaseException:
        pools.stop(executor)  # a failed seed or Ctrl-C: the other jobs stop now
        raise
    finally:
        executor.shutdown(wait=True)
