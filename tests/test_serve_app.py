"""selfmm.serve.app alone: each route's handler called with a request whose app carries a state
of fakes (no worker process, no model), the lifespan with a fake pool, and create_app around
a fake predictor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")

from fastapi import HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.serve import app as app_module  # noqa: E402
from selfmm.serve.app import create_app, health, lifespan, predict, run_info  # noqa: E402
from selfmm.serve.pool import WorkerDied  # noqa: E402
from selfmm.serve.schemas import Limits, Score  # noqa: E402
from selfmm.serve.upload import Gate  # noqa: E402
from serve_fakes import DISCONNECT, ScriptedRequest, multipart  # noqa: E402

ROW = {"score": 1.25, "sentiment": "positive", "text": 1.0, "audio": 0.5, "vision": -0.5, "flags": ["no_face"],
       "seconds": 0.1, "transcript": "a fine film", "speech": {"text_source": "given"}}
LIMITS = Limits(max_upload_mb=1, max_seconds=2.0, workers=2, queue_size=1)
BODY = multipart(("video", "clip.mp4", b"\0video bytes"), ("transcript", None, b"a fine film"))


class FakePool:
    """Answers `outcome` (a row, or an exception to raise) and records what it was given,
    including whether the uploaded file was there while it was being scored."""

    def __init__(self, outcome=ROW, workers: int = 2, mean_seconds: float = 1.0) -> None:
        self.outcome, self.workers, self.mean_seconds = outcome, workers, mean_seconds
        self.calls: list[tuple] = []
        self.started = self.closed = False

    async def score(self, path: Path, transcript: str, max_seconds: float):
        self.calls.append((path.read_bytes(), transcript, max_seconds))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


def fake_app(tmp_path: Path, pool: FakePool | None = None, capacity: int = 3) -> SimpleNamespace:
    state = SimpleNamespace(limits=LIMITS, info=object(), upload_dir=tmp_path, gate=Gate(capacity),
                            pool=pool or FakePool())
    return SimpleNamespace(state=state)


def call_predict(app: SimpleNamespace, chunks=(BODY,), headers: dict | None = None):
    return asyncio.run(predict(ScriptedRequest(chunks, headers=headers, app=app).request))


def refusal(app: SimpleNamespace, **kwargs) -> HTTPException:
    with pytest.raises(HTTPException) as caught:
        call_predict(app, **kwargs)
    assert "\n" not in caught.value.detail
    return caught.value


def test_health_and_info_read_the_state():
    app = SimpleNamespace(state=SimpleNamespace(limits=LIMITS, info="the info"))
    request = ScriptedRequest([], app=app).request
    assert asyncio.run(health(request)).model_dump() == {"status": "ok", "workers": 2}
    assert asyncio.run(run_info(request)) == "the info"


def test_predict_scores_the_upload_and_removes_it(tmp_path):
    app = fake_app(tmp_path)
    assert call_predict(app) == Score(**ROW)
    assert app.state.pool.calls == [(b"\0video bytes", "a fine film", 2.0)]
    assert list(tmp_path.iterdir()) == [] and app.state.gate.inside == 0


@pytest.mark.parametrize("outcome,status,detail", [
    (SelfMMError("video: not a readable video file (Invalid data)"), 422,
     "video: not a readable video file (Invalid data)"),
    (WorkerDied(), 500, "the scoring process died while reading this video; the server restarted it"),
    (asyncio.CancelledError(), 503, "the server is shutting down; send the video again later"),
])
def test_predict_answers_for_what_scoring_raised(tmp_path, outcome, status, detail):
    app = fake_app(tmp_path, FakePool(outcome))
    caught = refusal(app)
    assert (caught.status_code, caught.detail) == (status, detail)
    assert len(app.state.pool.calls) == 1
    assert list(tmp_path.iterdir()) == [] and app.state.gate.inside == 0


def test_predict_when_full_answers_503_at_once(tmp_path):
    app = fake_app(tmp_path, FakePool(mean_seconds=7.0, workers=2), capacity=3)
    for _ in range(3):
        app.state.gate.try_enter()
    scripted = ScriptedRequest([BODY], app=app)
    with pytest.raises(HTTPException) as caught:
        asyncio.run(predict(scripted.request))
    # Three in flight, two workers, 7 s a job: about 11 s.
    assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "11"}
    assert caught.value.detail == "busy: 3 requests in flight; retry later"
    assert scripted.messages == 0 and app.state.pool.calls == [] and app.state.gate.inside == 3
    app.state.pool.mean_seconds = 1e6
    assert refusal(app).headers == {"Retry-After": "60"}
    app.state.pool.mean_seconds = 0
    assert refusal(app).headers == {"Retry-After": "1"}


def test_predict_refuses_before_admission_and_after(tmp_path):
    app = fake_app(tmp_path)
    caught = refusal(app, headers={"origin": "http://evil.example"})
    assert caught.status_code == 403 and app.state.gate.inside == 0
    caught = refusal(app, chunks=[BODY[:40], DISCONNECT])
    assert (caught.status_code, caught.detail) == (400, "the client disconnected during the upload")
    caught = refusal(app, chunks=[multipart(("transcript", None, b"x"))])
    assert caught.status_code == 422 and caught.detail.startswith("missing field: video")
    assert app.state.pool.calls == [] and app.state.gate.inside == 0 and list(tmp_path.iterdir()) == []


def test_lifespan_starts_and_ends_the_pool_and_the_upload_folder(monkeypatch):
    pools: list[FakePool] = []
    monkeypatch.setattr(app_module, "ScoringPool", lambda predictor, workers: pools.append(FakePool(workers=workers))
                        or pools[-1])
    app = SimpleNamespace(state=SimpleNamespace(limits=LIMITS, predictor="a predictor"))

    async def run() -> Path:
        async with lifespan(app):
            folder = app.state.upload_dir
            assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
            assert app.state.gate.capacity == 3 and pools[0].started and not pools[0].closed
        return folder

    folder = asyncio.run(run())
    assert pools[0].workers == 2 and pools[0].closed and not folder.exists()


def fake_predictor(tmp_path: Path) -> SimpleNamespace:
    (tmp_path / "config.json").write_text(json.dumps({"seed": 5}))
    return SimpleNamespace(run=tmp_path, cfg=SimpleNamespace(dataset="sims", model=SimpleNamespace(text_model="bert")),
                           band=0.1, audio_dim=25, vision_dim=20, audio_features="egemaps",
                           visual_features="mesh", text_model=None, speech=None)


def test_create_app_puts_the_settings_in_the_state(tmp_path):
    app = create_app(fake_predictor(tmp_path), workers=3, max_upload_mb=5, max_seconds=9, queue_size=4)
    assert app.state.limits == Limits(max_upload_mb=5, max_seconds=9, workers=3, queue_size=4)
    client = TestClient(app)  # no lifespan: no pool, and none needed for these routes
    assert client.get("/health").json() == {"status": "ok", "workers": 3}
    info = client.get("/info").json()
    assert info["dataset"] == "sims" and info["label_range"] == [-1.0, 1.0] and info["seed"] == 5
    assert info["feature_widths"] == {"audio": 25, "vision": 20} and info["text_model"] == "bert"
    assert info["feature_sets"] == {"audio": "egemaps", "vision": "mesh"}
    assert info["limits"] == {"max_upload_mb": 5.0, "max_seconds": 9.0, "workers": 3, "queue_size": 4}
    assert info["speech_recognition"] is None
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
