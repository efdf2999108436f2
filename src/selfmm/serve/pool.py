"""The scoring processes: `workers` of them, each holding its own copy of the run.

Processes, not threads: threads would share one model, but feature extraction is not
thread-safe: two threads sharing its OpenCV face cascade got different (wrong) face features on
every one of 20 tries, while one cascade per thread matched the sequential result. A process
that crashes on a hostile file also takes only itself down; the pool is then restarted.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..pools import starting_processes, stop
from ..predict import Predictor
from . import worker

log = logging.getLogger("selfmm.serve")


def process_context() -> multiprocessing.context.BaseContext:
    """Not fork: forking a process that runs torch's and uvicorn's threads can deadlock the
    child. A fork server instead: a fresh process that imports the heavy modules once, from
    which each worker forks, so that starting or restarting one costs loading the weights."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([worker.__name__, "transformers"])
    return context


def start_fork_server() -> None:
    """Start the fork server now, so that it imports its modules while this process loads the
    run: the first workers' start then hardly waits for it, and neither does a Ctrl-C that
    lands during that start (pools.starting_processes holds signals while processes start)."""
    context = process_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver, resource_tracker

        # The resource tracker first: starting it unblocks SIGINT on the way out, which would
        # undo the block that the fork server must be started under.
        resource_tracker.ensure_running()
        with starting_processes():
            forkserver.ensure_running()


def stop_fork_server() -> None:
    """End the fork server at once, once the workers are gone: it would otherwise finish its
    imports (seconds) before it noticed that no one needs it. A later pool starts another."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # no public handle on it: the one multiprocessing keeps
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)  # then `_stop` reaps it and forgets it (its own tests' way)
    except ProcessLookupError:
        pass
    server._stop()


class WorkerDied(Exception):
    """A scoring process died (a crash in a decoder, or a kill) while a job was in it."""


class ScoringPool:
    """`workers` processes, each with its own Predictor of `predictor`'s run; restarted when
    one dies."""

    def __init__(self, predictor: Predictor, workers: int) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.workers = workers
        self._initargs = (str(predictor.run), str(predictor.device), predictor.text_model,
                          max(1, (cores or 1) // workers), predictor.speech)
        self._executor = self._new_executor()
        self.mean_seconds = 1.0  # running mean of a job's time, for Retry-After

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=process_context(),
                                   initializer=worker.load, initargs=self._initargs)

    def _spawn(self, executor: ProcessPoolExecutor, *job: Any) -> Future:
        # A submission may start the processes, and the first one the fork server, which
        # imports torch and transformers for seconds before it ignores SIGINT: a Ctrl-C to the
        # process group then printed its traceback, and a signal landing mid-start left a
        # child that failed with its own. See pools.starting_processes.
        with starting_processes():
            return executor.submit(*job)

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the run."""
        futures = [self._spawn(self._executor, worker.ready) for _ in range(self.workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    def wait_ready(self) -> None:
        """`start` from synchronous code: a Ctrl-C while the workers load interrupts the wait."""
        for future in [self._spawn(self._executor, worker.ready) for _ in range(self.workers)]:
            future.result()

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        if self._executor is broken:
            log.warning("a scoring worker died; restarting the pool")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()

    def _submit(self, *args: Any) -> tuple[ProcessPoolExecutor, Future]:
        executor = self._executor
        try:
            return executor, self._spawn(executor, worker.score, *args)
        except BrokenProcessPool:  # it broke while idle: no job was lost
            self._restart(executor)
            return self._executor, self._spawn(self._executor, worker.score, *args)

    async def score(self, path: Path, transcript: str | None, max_seconds: float) -> dict[str, Any]:
        """Score the video at `path` in a worker (see worker.score); WorkerDied if its process
        died meanwhile (the pool is restarted for the next job)."""
        executor, future = self._submit(str(path), transcript, max_seconds)
        try:
            result = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._restart(executor)
            raise WorkerDied from None
        self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * result["seconds"]
        return result

    def close(self) -> None:
        """At shutdown (Ctrl-C): queued jobs are cancelled and running ones cut short."""
        stop(self._executor)
