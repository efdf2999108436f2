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

SIGTERM (`kill`, a service manager, a job's time limit) stops a command the same way: within
`terminate_as_interrupt` it raises `Terminated`, a KeyboardInterrupt, so that every clean-up
Ctrl-C runs runs too (pools stopped, temporary files removed, locks released, the
multiprocessing temporary folder removed at exit); Python's default would end the process on
the spot.
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (see `terminate_as_interrupt`)."""


def ignore_interrupts() -> None:
    """In a worker: leave SIGINT to the parent, and let SIGTERM (the parent's `stop`) end it
    quietly even where it inherited the parent's handler."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread, as SIGINT raises
    KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _held(*signals: int) -> Iterator[None]:
    """In the main thread, `signals` that arrive inside the block are noted and delivered once
    when it ends. Blocking a signal in the main thread alone does not hold it: any other thread
    (torch's) takes it, and Python raises it in the main thread all the same."""
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(noted):
            signal.raise_signal(sig)


@contextlib.contextmanager
def forked_without_interrupts(*held: int) -> Iterator[None]:
    """Processes forked inside the block start with SIGINT blocked, and keep it blocked; the
    parent's own SIGINT (and any of `held`) waits until the block ends, then arrives as usual.

    torch's data loader forks its workers at every epoch, and a Ctrl-C that reaches one before
    its own handler is set prints that worker's traceback. A forked child inherits the signal
    mask of the thread that forks it (a spawned one does not)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _held(signal.SIGINT, *held):
            yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def starting_processes() -> contextlib.AbstractContextManager[None]:
    """Around code that starts worker processes: SIGINT and SIGTERM wait, and arrive when the
    block ends. So a signal never lands half-way through starting a process, which would leave
    a child that its parent does not know of, and that `stop` cannot end (a worker forked by the
    fork server while its parent, interrupted, never read its pid: it outlived the command).
    SIGINT is also blocked, so that a fork server started here (which imports for seconds
    before it ignores SIGINT itself) and the workers it forks never see a Ctrl-C to the process
    group."""
    return forked_without_interrupts(signal.SIGTERM)


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
