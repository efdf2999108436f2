"""Worker processes that stop with Ctrl-C, for every command with a pool (extract-dataset, serve).

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, the workers too.
They ignore it (`ignore_interrupts`, run by their initializer), so that the parent alone
decides and no worker prints a traceback; the parent then `stop`s its pool: queued jobs are
cancelled and running workers are terminated, not waited for. A job must therefore write its
results atomically (selfmm.io), so that a terminated worker leaves at most a temporary file.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ProcessPoolExecutor

STOP_TIMEOUT_S = 2.0


def ignore_interrupts() -> None:
    """In a worker: leave SIGINT to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
