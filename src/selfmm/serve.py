"""`selfmm serve`: a trained run behind an HTTP API and a web page (the `serve` extra).

Scoring runs in a pool of worker processes, each holding its own copy of the run. Threads
would share one model, but feature extraction is not thread-safe: two threads sharing its
OpenCV face cascade got different (wrong) face features on every one of 20 tries, while one
cascade per thread matched the sequential result. A process that crashes on a hostile file
also takes only itself down; the pool is then restarted.

Requests are admitted at arrival, before their upload is read: at most `workers + queue_size`
are in flight (uploading, waiting or scoring), so memory and disk stay bounded, and the rest
get 503 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import av
import fastapi
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from python_multipart.multipart import FormParserError, MultipartParser, parse_options_header
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .configuration import LABEL_RANGE, check_workers
from .errors import SelfMMError
from .pools import ignore_interrupts, stop
from .predict import Predictor

STATIC = Path(__file__).parent / "static"
MB = 1 << 20
DEFAULT_QUEUE = 32
SHUTDOWN_GRACE_S = 2
TRANSCRIPT_LIMIT = 64 * 1024  # bytes: far beyond what the text encoder's 50 tokens can use
FORM_OVERHEAD = 1 * MB  # boundaries, part headers and the transcript, beside the video
UPLOAD_IDLE_SECONDS = 30.0  # a client that sends nothing for this long loses its slot
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost",)
PUBLIC_PATHS = ("/health",)
SECURITY_HEADERS = [
    # Every asset comes from this server; nothing may be framed or fetched from elsewhere.
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
     b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

log = logging.getLogger("selfmm.serve")


class Health(BaseModel):
    status: Literal["ok"]
    workers: int


class Limits(BaseModel):
    max_upload_mb: float
    max_seconds: float
    workers: int
    queue_size: int


class Info(BaseModel):
    dataset: str
    label_range: tuple[float, float]
    neutral_band: float
    feature_widths: dict[str, int]
    feature_sets: dict[str, str]
    text_model: str
    seed: int | None
    versions: dict[str, str]
    limits: Limits


class Score(BaseModel):
    score: float
    sentiment: Literal["negative", "neutral", "positive"]
    text: float
    audio: float
    vision: float
    flags: list[str]
    seconds: float


class Problem(BaseModel):
    detail: str


def _problem(status: int, detail: str, **headers: str) -> HTTPException:
    return HTTPException(status, " ".join(detail.split()), headers=headers or None)


# ---------------------------------------------------------------------------------------------
# The worker processes


_predictor: Predictor | None = None


def _load_worker(seed_dir: str, device: str, text_model: str | None, threads: int) -> None:
    global _predictor
    ignore_interrupts()
    torch.set_num_threads(threads)  # the workers share the cores between them
    _predictor = Predictor(seed_dir, device=device, text_model=text_model)
    _predictor.tokenizer  # noqa: B018 - loaded now rather than during the first request


def _ready() -> int:
    return os.getpid()


def check_duration(path: str, max_seconds: float) -> None:
    """Refuse a video longer than `max_seconds` before anything is decoded. The container's
    stated duration can understate, so the packets' timestamps (demuxed, not decoded) are
    checked too, stopping at the first one past the limit."""
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise SelfMMError(f"video: not a readable video file "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    with container:
        stated = container.duration / av.time_base if container.duration else 0.0
        longest = stated
        try:
            for packet in container.demux():
                if longest > max_seconds:
                    break
                if packet.pts is None or packet.time_base is None:
                    continue
                start = packet.stream.start_time or 0
                longest = max(longest, float((packet.pts - start + (packet.duration or 0))
                                             * packet.time_base))
        except av.FFmpegError:
            pass  # a damaged tail: extraction decodes what it can and flags the clip
    if longest > max_seconds:
        raise SelfMMError(f"video: {longest:.1f} s long, over the limit of {max_seconds:g} s")


def _score(path: str, transcript: str, max_seconds: float) -> dict[str, Any]:
    assert _predictor is not None, "the worker's initializer did not run"
    started = time.perf_counter()
    try:
        check_duration(path, max_seconds)
        clip = _predictor.score_video(path, transcript)[0]
    except SelfMMError as exc:
        # The upload's name on disk means nothing to the client: name the request field.
        raise SelfMMError(" ".join(str(exc).replace(path, "video").split())) from None
    return {"score": clip.score, "sentiment": clip.sentiment, "text": clip.text,
            "audio": clip.audio, "vision": clip.vision, "flags": clip.flags,
            "seconds": time.perf_counter() - started}


def _process_context() -> multiprocessing.context.BaseContext:
    """Not fork: forking a process that runs torch's and uvicorn's threads can deadlock the
    child. A fork server instead: a fresh process that imports the heavy modules once, from
    which each worker forks, so that starting or restarting one costs loading the weights."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["selfmm.serve", "selfmm.train", "selfmm.extract", "transformers"])
    return context


class WorkerDied(Exception):
    """A scoring process died (a crash in a decoder, or a kill) while a job was in it."""


class ScoringPool:
    """`workers` processes, each with its own Predictor; restarted when one dies."""

    def __init__(self, predictor: Predictor, workers: int) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.workers = workers
        self._initargs = (str(predictor.run), str(predictor.device), predictor.text_model,
                          max(1, (cores or 1) // workers))
        self._executor = self._new_executor()
        self.mean_seconds = 1.0  # running mean of a job's time, for Retry-After

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=_process_context(),
                                   initializer=_load_worker, initargs=self._initargs)

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the run."""
        futures = [self._executor.submit(_ready) for _ in range(self.workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        if self._executor is broken:
            log.warning("a scoring worker died; restarting the pool")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()

    def _submit(self, *args: Any) -> tuple[ProcessPoolExecutor, Future]:
        executor = self._executor
        try:
            return executor, executor.submit(_score, *args)
        except BrokenProcessPool:  # it broke while idle: no job was lost
            self._restart(executor)
            return self._executor, self._executor.submit(_score, *args)

    async def score(self, path: Path, transcript: str, max_seconds: float) -> dict[str, Any]:
        executor, future = self._submit(str(path), transcript, max_seconds)
        try:
            result = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._restart(executor)
            raise WorkerDied from None
        self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * result["seconds"]
        return result

    def close(self) -> None:
        """At shutdown (Ctrl-C): queued jobs are cancelled and running ones cut short."""
        stop(self._executor)


# ---------------------------------------------------------------------------------------------
# Admission, uploads and access


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
                raise _problem(422, "video: the field was sent twice")
            if b"filename" not in options:
                raise _problem(422, "video: must be a file upload, not a text field")
            self.video = self.directory / f"{secrets.token_hex(16)}.upload"
            self._file = os.open(self.video, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | getattr(os, "O_NOFOLLOW", 0), 0o600)
        elif name == "transcript":
            if self.transcript is not None:
                raise _problem(422, "transcript: the field was sent twice")
            self.transcript = bytearray()
        self._part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "video" and self._file is not None:
            self.video_bytes += end - start
            if self.video_bytes > self.max_video:
                raise _problem(413, f"video: the upload is over the limit of "
                                    f"{self.max_video / MB:g} MB")
            # Plain writes: the page cache takes them at once, so the event loop hardly waits.
            chunk = memoryview(data)[start:end]
            while chunk:
                chunk = chunk[os.write(self._file, chunk):]
        elif self._part == "transcript" and self.transcript is not None:
            self.transcript += data[start:end]
            if len(self.transcript) > TRANSCRIPT_LIMIT:
                raise _problem(413, f"transcript: over the limit of {TRANSCRIPT_LIMIT} bytes")

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


async def _chunks(request: Request):
    """The request body, chunk by chunk; a client that stalls gets 408."""
    stream = request.stream().__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(stream.__anext__(), UPLOAD_IDLE_SECONDS)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise _problem(408, f"the upload stalled: no data for {UPLOAD_IDLE_SECONDS:g} s") from None


async def receive_upload(request: Request, directory: Path, max_video: int) -> tuple[Path, str]:
    """Stream a multipart body with `video` and `transcript` to (file, text). The size limits
    hold while reading, whatever Content-Length says; on any error nothing stays on disk."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise _problem(422, "the body must be multipart/form-data with the fields video (a file) "
                            "and transcript (text)")
    max_body = max_video + FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise _problem(413, f"the request is over the upload limit of {max_video / MB:g} MB")
    form = _Form(directory, max_video)
    received = 0
    try:
        parser = MultipartParser(params[b"boundary"], form.callbacks())
        async for chunk in _chunks(request):
            received += len(chunk)
            if received > max_body:
                raise _problem(413, f"the request is over the upload limit of {max_video / MB:g} MB")
            parser.write(chunk)
        parser.finalize()
        if not form.ended:
            raise _problem(422, "the multipart body ended before its closing boundary")
        if form.video is None:
            raise _problem(422, "missing field: video (the video file)")
        if form.transcript is None:
            raise _problem(422, "missing field: transcript (what is said in the video)")
        if not form.video_complete or form.video_bytes == 0:
            raise _problem(422, "video: the file is empty")
        try:
            transcript = form.transcript.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _problem(422, "transcript: not valid UTF-8 text") from None
        if not transcript:
            raise _problem(422, "transcript: empty; give what is said in the video")
        return form.video, transcript
    except FormParserError:
        form.discard()
        raise _problem(422, "the body is not valid multipart/form-data") from None
    except OSError as exc:  # the upload directory's disk is full, or gone
        form.discard()
        raise _problem(507, f"the server cannot store the upload: {exc.strerror or exc}") from None
    except BaseException:
        form.discard()
        raise


def _credential(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or the password of a Basic one
    (what a browser sends after its login prompt; the user name is ignored)."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return rest.strip()
            if scheme.lower() == "basic":
                try:
                    return base64.b64decode(rest.strip(), validate=True).decode().partition(":")[2]
                except (ValueError, UnicodeDecodeError):
                    return None
    return None


class TokenAuth:
    """Every path but /health needs the token. Both sides are hashed first, so that the
    constant-time comparison runs over equal lengths and leaks not even the token's length."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.digest = hashlib.sha256(token.encode()).digest()

    def allowed(self, scope: Scope) -> bool:
        given = _credential(scope)
        return given is not None and hmac.compare_digest(
            hashlib.sha256(given.encode()).digest(), self.digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "missing or wrong token: send Authorization: Bearer TOKEN"}, 401,
            headers={"WWW-Authenticate": 'Basic realm="selfmm", charset="UTF-8"'})
        await response(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


# ---------------------------------------------------------------------------------------------
# The application


def _info(predictor: Predictor, limits: Limits) -> Info:
    dataset = predictor.cfg.dataset
    return Info(
        dataset=dataset, label_range=LABEL_RANGE[dataset], neutral_band=predictor.band,
        feature_widths={"audio": predictor.audio_dim, "vision": predictor.vision_dim},
        # The acoustic and visual sets the run was trained on (egemaps, compare, librosa; mesh,
        # mesh-raw, haar; unknown for files that record none).
        feature_sets={"audio": predictor.audio_features, "vision": predictor.visual_features},
        text_model=predictor.text_model or predictor.cfg.model.text_model,
        seed=json.loads((predictor.run / "config.json").read_text()).get("seed"),
        versions={"selfmm": __version__, "python": platform.python_version(),
                  "torch": torch.__version__, "fastapi": fastapi.__version__},
        limits=limits,
    )


PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video", "transcript"],
    "properties": {
        "video": {"type": "string", "format": "binary",
                  "description": "the clip: any container and codecs FFmpeg reads"},
        "transcript": {"type": "string", "description": "what is said in the clip (UTF-8)"},
    }}}}}}


def create_app(predictor: Predictor, *, workers: int, max_upload_mb: float, max_seconds: float,
               token: str | None = None, queue_size: int = DEFAULT_QUEUE,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The API and the page around a loaded `predictor`. Scoring runs in `workers` processes,
    started (each loading the run) when the app starts; at most `workers + queue_size` requests
    to /predict are in flight. With `token`, every path but /health requires it; with
    `allowed_hosts`, requests naming another Host are refused (against DNS rebinding)."""
    max_video = int(max_upload_mb * MB)
    info = _info(predictor, Limits(max_upload_mb=max_upload_mb, max_seconds=max_seconds,
                                   workers=workers, queue_size=queue_size))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.upload_dir = Path(tempfile.mkdtemp(prefix="selfmm-serve-"))  # mode 0700
        app.state.gate = Gate(workers + queue_size)
        app.state.pool = ScoringPool(predictor, workers)
        try:
            await app.state.pool.start()
            yield
        finally:
            app.state.pool.close()
            shutil.rmtree(app.state.upload_dir, ignore_errors=True)

    app = FastAPI(
        title="selfmm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Multimodal sentiment scores of video clips from a trained Self-MM run.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        # FastAPI's own docs page loads Swagger UI from a CDN; this one is served from here.
        return FileResponse(STATIC / "docs.html")

    @app.get("/health", response_model=Health, summary="Liveness: 200 once the run is loaded")
    async def health() -> Health:
        return Health(status="ok", workers=workers)

    @app.get("/info", response_model=Info, summary="The run being served, and the limits")
    async def run_info() -> Info:
        return info

    @app.post(
        "/predict", response_model=Score, openapi_extra=PREDICT_BODY,
        summary="Score one video clip with its transcript",
        description="`score` is the multimodal head's prediction on the label scale and "
        "`sentiment` its class; `text`, `audio` and `vision` are the unimodal heads; `flags` "
        "name what extraction found missing; `seconds` is the worker's time for extraction "
        "and scoring.",
        responses={
            401: {"model": Problem, "description": "missing or wrong token"},
            403: {"model": Problem, "description": "a cross-origin form submission"},
            408: {"model": Problem, "description": "the upload stalled"},
            413: {"model": Problem, "description": "the upload is over --max-upload-mb"},
            422: {"model": Problem, "description": "a missing field, an empty transcript, a "
                  "file that is not a readable video, or a video over --max-seconds"},
            503: {"model": Problem, "description": "busy: retry after Retry-After seconds; or "
                  "the server is shutting down"},
            507: {"model": Problem, "description": "the server's disk cannot take the upload"},
        })
    async def predict(request: Request) -> Score:
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            # Browsers let any web page post a form cross-origin; only ours may.
            raise _problem(403, f"cross-origin request from {origin} refused")
        gate: Gate = request.app.state.gate
        if not gate.try_enter():
            pool: ScoringPool = request.app.state.pool
            wait = math.ceil(pool.mean_seconds * gate.inside / pool.workers)
            raise _problem(503, f"busy: {gate.inside} requests in flight; retry later",
                           **{"Retry-After": str(min(max(wait, 1), 60))})
        try:
            path, transcript = await receive_upload(request, request.app.state.upload_dir,
                                                    max_video)
            try:
                return Score(**await request.app.state.pool.score(path, transcript, max_seconds))
            except SelfMMError as exc:
                raise _problem(422, str(exc)) from None
            except WorkerDied:
                raise _problem(500, "the scoring process died while reading this video; the "
                                    "server restarted it") from None
            except asyncio.CancelledError:
                # Ctrl-C, and the grace for requests in flight (SHUTDOWN_GRACE_S) is over: an
                # answer rather than uvicorn's traceback for a cancelled task.
                raise _problem(503, "the server is shutting down; send the video again later") from None
            finally:
                path.unlink(missing_ok=True)
        except ClientDisconnect:
            raise _problem(400, "the client disconnected during the upload") from None
        finally:
            gate.leave()

    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    return app


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise SelfMMError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(run: str | os.PathLike, *, seed: int | None = None, host: str = "127.0.0.1",
          port: int = 8000, workers: int | None = None, max_upload_mb: float = 200,
          max_seconds: float = 120, token: str | None = None, device: str = "auto",
          text_model: str | None = None, queue_size: int = DEFAULT_QUEUE) -> None:
    """Load `run` once and serve it until interrupted (`selfmm serve`). `token` defaults to
    $SELFMM_TOKEN; a host other than loopback needs one."""
    import uvicorn

    token = token or os.environ.get("SELFMM_TOKEN") or None
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    check_workers(workers)
    for name, value in (("--max-upload-mb", max_upload_mb), ("--max-seconds", max_seconds)):
        if not value > 0:
            raise SelfMMError(f"{name} must be positive, not {value}")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise SelfMMError(f"the token must be at least {MIN_TOKEN_LENGTH} characters; make one "
                          "with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    loopback = is_loopback(host)
    if not loopback:
        print(f"selfmm: warning: serving on {host}, reachable from other machines, over plain "
              "HTTP (put a TLS proxy in front of it); every request but /health needs the token",
              file=sys.stderr)
        if token is None:
            raise SelfMMError(f"--host {host} is not loopback: pass --token TOKEN or set "
                              "SELFMM_TOKEN")
    sock = _listen(host, port)
    try:
        predictor = Predictor(run, seed=seed, device=device, text_model=text_model)
        predictor.tokenizer  # noqa: B018 - a run without a tokenizer fails here, not per request
        # On loopback, only names of this machine may appear in Host (DNS rebinding).
        hosts = ["127.0.0.1", "localhost", "::1", "[::1]", host] if loopback else None
        app = create_app(predictor, workers=workers, max_upload_mb=max_upload_mb,
                         max_seconds=max_seconds, token=token, queue_size=queue_size,
                         allowed_hosts=hosts)
        bound = sock.getsockname()[1]
        print(f"selfmm: serving {predictor.run} ({predictor.cfg.dataset}) at "
              f"http://{host}:{bound}/ with {workers} worker(s)", file=sys.stderr)
        # On Ctrl-C, requests still in flight get SHUTDOWN_GRACE_S to finish; then their
        # jobs are cut short with the workers (ScoringPool.close).
        config = uvicorn.Config(app, host=host, port=bound, timeout_keep_alive=5,
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
