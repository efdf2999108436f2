"""Outputs: never overwritten by accident, probed for writability, one writer at a time.

Two locks, both `flock`s that the kernel drops when their holder dies (even by SIGKILL), so a
stale lock file never blocks anyone:
- `OutputLock(path)`: `.NAME.selfmm.lock` beside any output (a file or a folder), held by the
  command that writes it, so that a second command on the same output is refused instead of
  replacing the first one's work. Whoever holds it also removes what a killed writer of that
  output left beside it (the atomic writer's `.NAME.XXXXXXXX.tmp`).
- `RunDirectory(path)`: a run folder, with `OUT/.selfmm.lock` inside as well, for the run's
  whole life.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
import threading
from pathlib import Path

from .errors import SelfMMError

LOCK = ".selfmm.lock"
# Errors that mean no one can write beside the output at all (a read-only or full disk, a
# folder we may not write): the command goes on without the lock and fails, or not, as it
# would have (nothing can race it there).
_CANNOT_LOCK_BESIDE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


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


def temporary_pattern(path: Path) -> re.Pattern[str]:
    """The names the atomic writer (selfmm.io) gives the temporary files of `path`."""
    return re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")


def remove_temporaries(path: Path) -> None:
    """Remove the temporary files (or folders) of `path` that a killed writer left beside it.
    Only while holding `path`'s OutputLock: no one else is writing them then."""
    pattern = temporary_pattern(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _flock(lock: Path, what: str) -> int:
    """An exclusive flock on `lock` (created if need be), naming its holder inside; raises
    SelfMMError naming the holder when another process has it, OSError when it cannot lock."""
    for _ in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SelfMMError(f"{what} is in use by process {holder} (lock file {lock}); wait for it "
                              "or choose another output") from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            # The previous holder removed the file between our open and our lock.
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        return fd
    raise SelfMMError(f"could not lock {what}")


def _unlock(lock: Path, fd: int) -> None:
    # Unlink while still holding the lock, so no one locks a file about to vanish.
    lock.unlink(missing_ok=True)
    os.close(fd)


# Locks this process holds, by lock file: a command that claims its output and then calls a
# library function that claims it again (selfmm.fit's RunDirectory) must not refuse itself.
_held: dict[str, list[int]] = {}  # path -> [fd, depth]
_held_guard = threading.Lock()


class OutputLock:
    """`with OutputLock(path):` one writer for the output `path`, which need not exist yet.
    Missing parent folders are created and, if they are still empty at the end, removed."""

    def __init__(self, path: str | os.PathLike, what: str | None = None) -> None:
        self.path = Path(path)
        self.lock = self.path.parent / f".{self.path.name}{LOCK}"
        self.what = what or f"output {self.path}"
        self._made: list[Path] = []
        self._key = os.path.abspath(self.lock)
        self._locked = False

    def __enter__(self) -> OutputLock:
        with _held_guard:
            if self._key in _held:
                _held[self._key][1] += 1
                self._locked = True
                return self
        self._make_parents()
        try:
            fd = _flock(self.lock, self.what)
        except OSError as exc:
            self._remove_made()
            if exc.errno in _CANNOT_LOCK_BESIDE:
                return self  # nothing can be written beside it: nothing to race with
            raise SelfMMError(f"cannot lock {self.what}: {exc.strerror or exc}") from None
        except SelfMMError:
            self._remove_made()
            raise
        with _held_guard:
            _held[self._key] = [fd, 1]
        self._locked = True
        remove_temporaries(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._locked:
            self._remove_made()
            return
        self._locked = False
        with _held_guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1]:
                return
            del _held[self._key]
        _unlock(self.lock, entry[0])
        self._remove_made()

    def _make_parents(self) -> None:
        missing = []
        for parent in self.path.parents:
            if parent.exists() or parent.is_symlink():
                break
            missing.append(parent)
        for parent in reversed(missing):
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            except OSError:
                break  # the command's own write says why
            self._made.append(parent)

    def _remove_made(self) -> None:
        for parent in reversed(self._made):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: the command wrote there
        self._made = []


class RunDirectory:
    """Context manager that claims `path` for one process: `with RunDirectory(out, resume):`."""

    def __init__(self, path: str | os.PathLike, resume: bool = False):
        self.path = Path(path)
        self.resume = resume
        self._lock = self.path / LOCK
        self._fd: int | None = None
        self._beside = OutputLock(self.path, f"output directory {self.path}")

    def check(self) -> None:
        """Refuse a path that is not a directory, or that holds a run while not resuming."""
        if self.path.exists() and not self.path.is_dir():
            raise SelfMMError(f"`out` {self.path} exists and is not a directory")
        existing = self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())
        if existing and not self.resume:
            raise SelfMMError(f"`out` {self.path} already holds a run; pass `resume=True` to continue "
                              "it or choose another directory")

    def __enter__(self) -> Path:
        self.check()
        self._beside.__enter__()
        try:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SelfMMError(f"cannot create output directory {self.path}: {exc.strerror or exc}") from None
            probe_writable(self.path)
            try:
                self._fd = _flock(self._lock, f"output directory {self.path}")
            except OSError as exc:
                raise SelfMMError(f"cannot lock output directory {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self._beside.__exit__()
            raise
        self._remove_stale_temporaries()
        return self.path

    def _remove_stale_temporaries(self) -> None:
        # A process killed mid-write leaves its atomic writer's temporary file behind; nothing
        # reads those, and while we hold the lock no other process is writing one.
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _unlock(self._lock, self._fd)
            self._fd = None
            self._beside.__exit__()
