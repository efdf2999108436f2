"""Checkpoints that are written whole, verified on reading, and never execute code.

A checkpoint file is `torch.save`'s bytes followed by a fixed trailer holding their SHA-256, so
a truncated or altered file is recognised before anything is unpickled; reading uses
`torch.load(weights_only=True)`, which admits tensors and plain containers only.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import torch

from .errors import SelfMMError
from .io import atomic_writer

FORMAT_VERSION = 1
_TRAILER = re.compile(rb"\nSELFMM-SHA256:([0-9a-f]{64})\n$")
_TRAILER_LEN = len(b"\nSELFMM-SHA256:\n") + 64
_NAME = re.compile(r"checkpoint-epoch(\d+)\.pt$")


class CheckpointError(SelfMMError):
    """A checkpoint that is truncated, altered, of another format, or unreadable."""


def save(path: str | Path, state: dict[str, Any]) -> None:
    write(path, serialize(state))


def serialize(state: dict[str, Any]) -> memoryview:
    """`state`'s bytes as they stand now: later changes to its tensors do not reach them."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return buffer.getbuffer()  # a view: no copy of the ~270 MB (MiniLM + Adam)


def write(path: str | Path, payload: memoryview) -> None:
    """`serialize`'s bytes, hashed, into `path` atomically."""
    digest = hashlib.sha256(payload).hexdigest().encode()
    with atomic_writer(path, "wb") as handle:
        handle.write(payload)
        handle.write(b"\nSELFMM-SHA256:" + digest + b"\n")


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read: {exc.strerror or exc}") from None
    match = _TRAILER.search(blob[-_TRAILER_LEN:])
    if match is None:
        raise CheckpointError(f"checkpoint {path}: no checksum trailer (truncated or not a selfmm checkpoint)")
    payload = blob[: len(blob) - _TRAILER_LEN]
    if hashlib.sha256(payload).hexdigest().encode() != match.group(1):
        raise CheckpointError(f"checkpoint {path}: checksum mismatch (the file was altered or damaged)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"checkpoint {path}: unreadable: {exc}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {state.get('format_version') if isinstance(state, dict) else '?'}"
            f", expected {FORMAT_VERSION}"
        )
    return state


def epoch_path(directory: Path, epoch: int) -> Path:
    return directory / f"checkpoint-epoch{epoch:04d}.pt"


def saved_epochs(directory: Path) -> list[int]:
    """Epochs with a checkpoint file in `directory`, newest first."""
    found = [int(m.group(1)) for p in directory.glob("checkpoint-epoch*.pt") if (m := _NAME.search(p.name))]
    return sorted(found, reverse=True)


def load_newest(directory: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint that verifies, and a line for each newer one that did not."""
    problems: list[str] = []
    for epoch in saved_epochs(directory):
        try:
            return load(epoch_path(directory, epoch)), problems
        except CheckpointError as exc:
            problems.append(str(exc))
    return None, problems


def prune(directory: Path, keep: int = 2) -> None:
    """Keep the newest `keep` epoch checkpoints: one to resume from, one to fall back to."""
    for epoch in saved_epochs(directory)[keep:]:
        epoch_path(directory, epoch).unlink(missing_ok=True)
