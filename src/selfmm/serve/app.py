"""The application: the routes as handlers that read what they need from `app.state`.

`create_app` puts there what the server was started with (`predictor`, `limits`, `info`);
`lifespan` adds what lives while it runs (`upload_dir`, `gate`, `pool`). A handler can thus be
called alone with a request whose app carries a state of fakes (tests/test_serve_app.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi
import torch
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from .. import __version__, datasets
from ..checks import attributes, checked, integer, number, optional, sequence, text
from ..configuration import MAX_WORKERS
from ..errors import SelfMMError
from ..predict import Predictor
from .pool import ScoringPool, WorkerDied
from .schemas import PREDICT_BODY, PREDICT_RESPONSES, Health, Info, Limits, Score, problem
from .security import SecurityHeaders, TokenAuth, check_origin
from .upload import MB, Gate, receive_upload

STATIC = Path(__file__).resolve().parent.parent / "static"
DEFAULT_QUEUE = 32
RETRY_AFTER_MAX_S = 60
# Upper bounds of the server's limits, far beyond any real use (a 2-minute 4K video is about
# 1 GB); they catch a mistyped number, and `inf`, which no byte count compares with usefully.
MAX_UPLOAD_MB = 10_000
MAX_SECONDS = 3600
MAX_QUEUE = 10_000
LIMITS = {"workers": integer(1, MAX_WORKERS), "max_upload_mb": number(above=0, high=MAX_UPLOAD_MB),
          "max_seconds": number(above=0, high=MAX_SECONDS), "queue_size": integer(0, MAX_QUEUE)}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/docs", include_in_schema=False)
async def docs() -> FileResponse:
    # FastAPI's own docs page loads Swagger UI from a CDN; this one is served from here.
    return FileResponse(STATIC / "docs.html")


@router.get("/health", response_model=Health, summary="Liveness: 200 once the run is loaded")
async def health(request: Request) -> Health:
    return Health(status="ok", workers=request.app.state.limits.workers)


@router.get("/info", response_model=Info, summary="The run being served, and the limits")
async def run_info(request: Request) -> Info:
    return request.app.state.info


def busy(gate: Gate, pool: ScoringPool) -> HTTPException:
    """503, with a Retry-After of the queue's expected wait (1 s to RETRY_AFTER_MAX_S)."""
    wait = math.ceil(pool.mean_seconds * gate.inside / pool.workers)
    return problem(503, f"busy: {gate.inside} requests in flight; retry later",
                   **{"Retry-After": str(min(max(wait, 1), RETRY_AFTER_MAX_S))})


@router.post(
    "/predict", response_model=Score, openapi_extra=PREDICT_BODY, responses=PREDICT_RESPONSES,
    summary="Score one video clip, with its transcript or with its words recognised",
    description="`score` is the multimodal head's prediction on the label scale and "
    "`sentiment` its class; `text`, `audio` and `vision` are the unimodal heads; `flags` "
    "name what extraction found missing or doubtful; `seconds` is the worker's time for "
    "extraction and scoring; `transcript` is the text scored and `speech` where it came from "
    "(the recognised words with their times when speech recognition ran).")
async def predict(request: Request) -> Score:
    """Admit (or 503 at once), stream the upload to a private file, score it in a worker; the
    file is removed on every path."""
    check_origin(request)
    state = request.app.state
    if not state.gate.try_enter():
        raise busy(state.gate, state.pool)
    try:
        path, transcript = await receive_upload(request, state.upload_dir,
                                                int(state.limits.max_upload_mb * MB))
        try:
            return Score(**await state.pool.score(path, transcript, state.limits.max_seconds))
        except SelfMMError as exc:
            raise problem(422, str(exc)) from None
        except WorkerDied:
            raise problem(500, "the scoring process died while reading this video; the "
                               "server restarted it") from None
        except asyncio.CancelledError:
            # Ctrl-C, and the grace for requests in flight (server.SHUTDOWN_GRACE_S) is over:
            # an answer rather than uvicorn's traceback for a cancelled task.
            raise problem(503, "the server is shutting down; send the video again later") from None
        finally:
            path.unlink(missing_ok=True)
    except ClientDisconnect:
        raise problem(400, "the client disconnected during the upload") from None
    finally:
        state.gate.leave()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the workers (each loading the run), unless `app.state.pool` holds them already,
    and a private upload folder; at shutdown end both. At most `workers + queue_size` requests
    to /predict are in flight."""
    state = app.state
    state.upload_dir = Path(tempfile.mkdtemp(prefix="selfmm-serve-"))  # mode 0700
    state.gate = Gate(state.limits.workers + state.limits.queue_size)
    try:
        if getattr(state, "pool", None) is None:  # `serve` starts its pool before the app
            state.pool = ScoringPool(state.predictor, state.limits.workers)
            await state.pool.start()
        yield
    finally:
        state.pool.close()
        shutil.rmtree(state.upload_dir, ignore_errors=True)


def describe(predictor: Predictor, limits: Limits) -> Info:
    """The body of /info."""
    dataset = predictor.cfg.dataset
    return Info(
        dataset=dataset, label_range=datasets.get(dataset).label_range, neutral_band=predictor.band,
        feature_widths={"audio": predictor.audio_dim, "vision": predictor.vision_dim},
        # The acoustic and visual sets the run was trained on (egemaps, compare, librosa; mesh,
        # mesh-raw, haar; unknown for files that record none).
        feature_sets={"audio": predictor.audio_features, "vision": predictor.visual_features},
        text_model=predictor.text_model or predictor.cfg.model.text_model,
        seed=json.loads((predictor.run / "config.json").read_text()).get("seed"),
        versions={"selfmm": __version__, "python": platform.python_version(),
                  "torch": torch.__version__, "fastapi": fastapi.__version__},
        limits=limits,
        speech_recognition=None if predictor.speech is None else {
            "model": predictor.speech.model.name, "sha256": predictor.speech.model.sha256,
            "language": predictor.speech.language},
    )


@checked(predictor=attributes("run", "cfg", "band", "audio_dim", "vision_dim", "audio_features",
                              "text_model", what="a selfmm.Predictor"), token=optional(text),
         allowed_hosts=optional(sequence(text, "a list of host names")), **LIMITS)
def create_app(predictor: Predictor, *, workers: int, max_upload_mb: float, max_seconds: float,
               token: str | None = None, queue_size: int = DEFAULT_QUEUE,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The API and the page around a loaded `predictor`. Scoring runs in `workers` processes,
    started (each loading the run) when the app starts; at most `workers + queue_size` requests
    to /predict are in flight. With `token`, every path but /health requires it; with
    `allowed_hosts`, requests naming another Host are refused (against DNS rebinding)."""
    app = FastAPI(
        title="selfmm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Multimodal sentiment scores of video clips from a trained Self-MM run.")
    app.state.predictor = predictor
    app.state.limits = Limits(max_upload_mb=max_upload_mb, max_seconds=max_seconds,
                              workers=workers, queue_size=queue_size)
    app.state.info = describe(predictor, app.state.limits)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    return app
