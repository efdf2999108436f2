"""Admission and uploads: how many requests may be in flight, and a multipart body streamed to
a private file with its limits held while it is read.

The body goes through python-multipart's streaming parser, part by part, with the callbacks
below. Its all-in-one FormParser and Starlette's form parser do not fit: neither counts a file
while it arrives (FormParser hands a file over at the end of its part; Starlette's has no size
limit for files and spools them to nameless temporary files, which a scoring process cannot
open), so neither can refuse an oversize video with 413 before reading the rest.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from python_multipart.multipart import FormParserError, MultipartParser, parse_options_header
from starlette.requests import Request

from .schemas import problem

MB = 1 << 20
TRANSCRIPT_LIMIT = 64 * 1024  # bytes: far beyond what the text encoder's 50 tokens can use
FORM_OVERHEAD = 1 * MB  # boundaries, part headers and the transcript, beside the video
UPLOAD_IDLE_SECONDS = 30.0  # a client that sends nothing for this long loses its slot


class Gate:
    """At most `capacity` requests in flight. Used only from the event loop's thread."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inside = 0

    def try_enter(self) -> bool:
        if self.inside >= self.capacity:
            return False
        self.inside += 1
        return True

    def leave(self) -> None:
        self.inside -= 1


class _Form:
    """Callbacks of a streaming multipart parser: the `video` part goes straight to a private
    file under a generated name, `transcript` to memory, any other part nowhere."""

    def __init__(self, directory: Path, max_video: int) -> None:
        self.directory = directory
        self.max_video = max_video
        self.video: Path | None = None
        self.video_bytes = 0
        self.video_complete = False
        self.transcript: bytearray | None = None
        self.ended = False
        self._file: int | None = None  # descriptor of the video while its part streams in
        self._part: str | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""

    def callbacks(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field",
            "on_header_value", "on_header_end", "on_headers_finished", "on_end")}

    def on_part_begin(self) -> None:
        self._part, self._headers = None, {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "video":
            if self.video is not None:
                raise problem(422, "video: the field was sent twice")
            if b"filename" not in options:
                raise problem(422, "video: must be a file upload, not a text field")
            self.video = self.directory / f"{secrets.token_hex(16)}.upload"
            self._file = os.open(self.video, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | getattr(os, "O_NOFOLLOW", 0), 0o600)
        elif name == "transcript":
            if self.transcript is not None:
                raise problem(422, "transcript: the field was sent twice")
            self.transcript = bytearray()
        self._part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "video" and self._file is not None:
            self.video_bytes += end - start
            if self.video_bytes > self.max_video:
                raise problem(413, f"video: the upload is over the limit of "
                                   f"{self.max_video / MB:g} MB")
            # Plain writes: the page cache takes them at once, so the event loop hardly waits.
            chunk = memoryview(data)[start:end]
            while chunk:
                chunk = chunk[os.write(self._file, chunk):]
        elif self._part == "transcript" and self.transcript is not None:
            self.transcript += data[start:end]
            if len(self.transcript) > TRANSCRIPT_LIMIT:
                raise problem(413, f"transcript: over the limit of {TRANSCRIPT_LIMIT} bytes")

    def on_part_end(self) -> None:
        if self._part == "video":
            self.close()
            self.video_complete = True
        self._part = None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def discard(self) -> None:
        self.close()
        if self.video is not None:
            self.video.unlink(missing_ok=True)


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk; a client that stalls gets 408."""
    stream = request.stream().__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(stream.__anext__(), UPLOAD_IDLE_SECONDS)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise problem(408, f"the upload stalled: no data for {UPLOAD_IDLE_SECONDS:g} s") from None


def _checked(form: _Form) -> tuple[Path, str | None]:
    """The video's file and the transcript's text (None when left out or blank: the words are
    then recognised) of a body read to its end, or 422."""
    if not form.ended:
        raise problem(422, "the multipart body ended before its closing boundary")
    if form.video is None:
        raise problem(422, "missing field: video (the video file)")
    if not form.video_complete or form.video_bytes == 0:
        raise problem(422, "video: the file is empty")
    try:
        transcript = (form.transcript or b"").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise problem(422, "transcript: not valid UTF-8 text") from None
    return form.video, transcript or None


async def receive_upload(request: Request, directory: Path, max_video: int) -> tuple[Path, str | None]:
    """Stream a multipart body with `video` and an optional `transcript` to (file, text or
    None). The size limits
    hold while reading, whatever Content-Length says; on any error nothing stays on disk."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise problem(422, "the body must be multipart/form-data with the field video (a file) "
                           "and optionally transcript (text)")
    max_body = max_video + FORM_OVERHEAD
    over = f"the request is over the upload limit of {max_video / MB:g} MB"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise problem(413, over)
    form = _Form(directory, max_video)
    received = 0
    try:
        parser = MultipartParser(params[b"boundary"], form.callbacks())
        async for chunk in _chunks(request):
            received += len(chunk)
            if received > max_body:
                raise problem(413, over)
            parser.write(chunk)
        parser.finalize()
        return _checked(form)
    except FormParserError:
        form.discard()
        raise problem(422, "the body is not valid multipart/form-data") from None
    except OSError as exc:  # the upload directory's disk is full, or gone
        form.discard()
        raise problem(507, f"the server cannot store the upload: {exc.strerror or exc}") from None
    except BaseException:
        form.discard()
        raise
