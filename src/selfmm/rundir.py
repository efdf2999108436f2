"""Output directories: never overwritten by accident, probed for writability, locked per run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import SelfMMError

LOCK = ".selfmm.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe_writable(directory: Path) -> None:
    """Create and remove a small file, so a read-only or full disk fails before training."""
    probe = directory / ".selfmm.probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 65536)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise SelfMMError(f"output directory {directory} is not writable: {reason}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


class RunDirectory:
    """Context manager that claims `path` for one process: `with RunDirectory(out, resume):`."""

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.resume = resume
        self._lock = self.path / LOCK
        self._held = False

    def check(self) -> None:
        """Refuse a path that is not a directory, or that holds a run while not resuming."""
        if self.path.exists() and not self.path.is_dir():
            raise SelfMMError(f"--out {self.path} exists and is not a directory")
        existing = self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())
        if existing and not self.resume:
            raise SelfMMError(f"--out {self.path} already holds a run; pass --resume to continue it "
                              "or choose another directory")

    def __enter__(self) -> Path:
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SelfMMError(f"cannot create output directory {self.path}: {exc.strerror or exc}") from None
        probe_writable(self.path)
        self._acquire()
        self._remove_stale_temporaries()
        return self.path

    def _remove_stale_temporaries(self) -> None:
        # A process killed mid-write leaves its atomic writer's temporary file behind; nothing
        # reads those, and while we hold the lock no other process is writing one.
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = int(self._lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    holder = 0
                if holder and _alive(holder) and holder != os.getpid():
                    raise SelfMMError(f"output directory {self.path} is in use by process {holder} "
                                      f"(lock file {self._lock}); wait for it or choose another --out") from None
                # The holder died without cleaning up (e.g. SIGKILL): the lock is stale.
                self._lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self._held = True
            return
        raise SelfMMError(f"could not lock output directory {self.path}")

    def __exit__(self, *exc) -> None:
        if self._held:
            self._lock.unlink(missing_ok=True)
            self._held = False
