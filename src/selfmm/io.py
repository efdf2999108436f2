"""Atomic file output: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import SelfMMError

_UMASK = os.umask(0)
os.umask(_UMASK)


def plain_mode(folder: bool = False) -> int:
    """The permissions a plain open() or mkdir() would give: mkstemp and mkdtemp make their
    files 0600 and folders 0700, which a temporary file renamed into place must not keep."""
    return (0o777 if folder else 0o666) & ~_UMASK


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    why = not_a_file(path)
    if why not in (None, MISSING):
        # os.replace would put a file in its place: a FIFO, a device node (as root, /dev/null)
        # or a socket is never ours to replace.
        raise SelfMMError(f"{path} {why}; selfmm replaces only regular files")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in _DISK_ERRORS:
            raise _write_error(path, exc) from exc
        raise
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        os.chmod(tmp, plain_mode())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
            raise _write_error(path, exc) from exc
        raise


MISSING = "does not exist"
LOOP = "is a symbolic link loop"
BROKEN = "is a broken symbolic link"
_KINDS = ((stat.S_ISDIR, "is a folder"), (stat.S_ISFIFO, "is a FIFO (a named pipe)"),
          (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
          (stat.S_ISSOCK, "is a socket"))


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` is not a regular file, in words for a message ("is a folder", "is a symbolic
    link loop", MISSING, ...), following symbolic links; None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return BROKEN if os.path.islink(path) else MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LOOP
        if exc.errno == errno.ENOTDIR:
            return MISSING + " (a part of its path is a file)"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS if test(mode)), "is not a regular file")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A folder built under a temporary name beside `path` (yielded); on success it takes
    `path`'s place, an earlier folder there being moved aside and removed; on an exception it
    is removed and `path` is left as it was. So no reader ever sees half a folder, and two
    writers never mix their files. A writer killed half-way leaves `.NAME.XXXXXXXX.tmp`, which
    the next holder of the output's lock removes (selfmm.rundir)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise SelfMMError(f"{path} exists and is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
    except OSError as exc:
        if exc.errno in _DISK_ERRORS:
            raise _write_error(path, exc, "folder") from exc
        raise
    try:
        yield tmp
        if path.is_dir():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.replace(path, aside)  # a folder may replace an empty folder
            os.replace(tmp, path)
            _remove(aside)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(cause, OSError) and cause.errno in _DISK_ERRORS:
            raise _write_error(path, cause, "folder") from cause
        raise


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_file(path: str | os.PathLike, what: str, noun: str = "regular file",
               error: type[SelfMMError] = SelfMMError) -> None:
    """Raise `error` ("video clip.mp4 is a folder, not a video file", "data file x.pkl is a
    symbolic link loop") unless `path` is a regular file (through any links)."""
    why = not_a_file(path)
    if why is None:
        return
    if why.startswith("is a") and why not in (LOOP, BROKEN):
        why += f", not a {noun}"
    raise error(f"{what} {path} {why}")


# A full, read-only or forbidden disk is the user's to fix, not a bug: one line, no traceback.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _write_error(path: Path, exc: OSError, noun: str = "file") -> SelfMMError:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return SelfMMError(f"cannot write {path}: {reason}; the previous version of the {noun}, if any, is intact")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
