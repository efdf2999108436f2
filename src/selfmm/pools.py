"""Worker processes that stop with Ctrl-C, for every command with a pool (extract-dataset,
serve, training's data-loading workers).

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, the workers too.
Ours ignore it (`ignore_interrupts`, run by their initializer; the data loader's are forked
with it blocked, `forked_without_interrupts`), so that the parent alone decides and no worker
prints a traceback; the parent then `stop`s its pool: queued jobs are
cancelled and running workers are terminated, not waited for. A job must therefore write its
results atomically (selfmm.io), so that a terminated worker leaves at most a temporary file.

`keep_interrupts` makes sure the parent does stop: Python drops a KeyboardInterrupt raised
while a finalizer runs, and torch's data loader joins its workers in one (between epochs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

STOP_TIMEOUT_S = 2.0
# A Ctrl-C lost in a finalizer is delivered again this much later, outside it.
REDELIVER_S = 0.05


def ignore_interrupts() -> None:
    """In a worker: leave SIGINT to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def forked_without_interrupts() -> Iterator[None]:
    """Processes forked inside the block start with SIGINT blocked, and keep it blocked.

    torch's data loader forks its workers at every epoch, and a Ctrl-C that reaches one before
    its own handler is set prints that worker's traceback. A forked child inherits the signal
    mask of the thread that forks it (a spawned one does not); the parent's own SIGINT waits
    until the block ends, then arrives as usual."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop(executor: ProcessPoolExecutor, timeout: float = STOP_TIMEOUT_S) -> None:
    """Cancel the queued jobs of `executor` and end its workers now, within `timeout` seconds."""
    # The executor forgets its processes on shutdown; Python 3.14's terminate_workers() does
    # this, 3.10-3.13 have only the attribute.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


@contextlib.contextmanager
def keep_interrupts() -> Iterator[None]:
    """Within the block, a Ctrl-C that Python swallowed in a finalizer (`Exception ignored in
    ... __del__`; the command would carry on as if nothing happened) is sent again. For a
    process that ends on Ctrl-C: the command line's."""
    previous = sys.unraisablehook
    pending = threading.Event()

    def redeliver() -> None:
        pending.clear()
        os.kill(os.getpid(), signal.SIGINT)

    def hook(unraisable) -> None:
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            previous(unraisable)
        elif not pending.is_set():
            pending.set()
            timer = threading.Timer(REDELIVER_S, redeliver)
            timer.daemon = True
            timer.start()

    sys.unraisablehook = hook
    try:
        yield
    except KeyboardInterrupt:
        # The process ends now. Objects that Ctrl-C left half-built (a data loader interrupted
        # in its constructor) complain in their finalizers as they are collected, which tells
        # the user nothing.
        sys.unraisablehook = lambda unraisable: None
        raise
    except BaseException:
        sys.unraisablehook = previous
        raise
    sys.unraisablehook = previous
