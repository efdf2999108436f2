"""Requests for the serve package's handlers and upload parser, without a server: a Starlette
Request over a scripted body, and multipart bodies built by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.requests import Request

BOUNDARY = b"B0UNDARY"
STALL = None  # a chunk that never comes
DISCONNECT = "disconnect"  # the client goes away


def multipart(*parts: tuple[str, str | None, bytes], boundary: bytes = BOUNDARY) -> bytes:
    """A multipart/form-data body of (name, filename or None, content) parts."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--" + boundary + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


class ScriptedRequest:
    """`.request`: a POST whose body is `chunks` (bytes, STALL or DISCONNECT), possibly endless;
    `.read` counts the body bytes taken and `.messages` the receive() calls."""

    def __init__(self, chunks: Iterable[Any], headers: dict[str, str] | None = None,
                 boundary: bytes = BOUNDARY, app: Any = None) -> None:
        self.chunks: Iterator[Any] = iter(chunks)
        self.read = self.messages = 0
        given = {"host": "testserver", "content-type": f"multipart/form-data; boundary={boundary.decode()}",
                 **(headers or {})}
        scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
                 "headers": [(k.encode(), v.encode()) for k, v in given.items() if v is not None]}
        if app is not None:
            scope["app"] = app
        self.request = Request(scope, self.receive)

    async def receive(self) -> dict[str, Any]:
        self.messages += 1
        chunk = next(self.chunks, b"")
        if chunk is STALL:
            await asyncio.sleep(3600)
        if chunk == DISCONNECT:
            return {"type": "http.disconnect"}
        self.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}
