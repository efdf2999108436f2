"""Atomic file output: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
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


# A full, read-only or forbidden disk is the user's to fix, not a bug: one line, no traceback.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _write_error(path: Path, exc: OSError) -> SelfMMError:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return SelfMMError(f"cannot write {path}: {reason}; the previous version of the file, if any, is intact")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
