"""Output directories: never overwritten by accident, probed for writability, locked per run."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from .errors import SelfMMError

LOCK = ".selfmm.lock"


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
        self._fd: int | None = None

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
        """flock the lock file: the kernel drops the lock when its holder dies, even by SIGKILL,
        so a stale lock needs no guessing from pids; the file names the holder for messages."""
        for _ in range(3):
            fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SelfMMError(f"output directory {self.path} is in use by process {holder} "
                                  f"(lock file {self._lock}); wait for it or choose another --out") from None
            except OSError as exc:
                os.close(fd)
                raise SelfMMError(f"cannot lock output directory {self.path}: {exc.strerror or exc}") from None
            try:
                same = os.stat(self._lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                # The previous holder removed the file between our open and our lock.
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
            self._fd = fd
            return
        raise SelfMMError(f"could not lock output directory {self.path}")

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # Unlink while still holding the lock, so no one locks a file about to vanish.
            self._lock.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
