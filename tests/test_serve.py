"""`selfmm serve`: every endpoint, every bad input, the token, temporary files, the bounded
queue, a worker crash, and the page in headless Chromium against a real listening server."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import re
import signal
import socket
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")  # the TestClient's, and the live server's client

from fastapi.testclient import TestClient  # noqa: E402

import speech_media  # noqa: E402
from media import extracted_run, make_corrupt, make_raw_h264, make_video  # noqa: E402
from selfmm.cli import main  # noqa: E402
from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.predict import Predictor  # noqa: E402
from selfmm.serve import MB, create_app, is_loopback, security, serve, upload  # noqa: E402
from servers import start_serve, stop_serve  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SCORE_KEYS = {"score", "sentiment", "text", "audio", "vision", "flags", "seconds", "transcript", "speech"}
TOKEN = "correct-horse-battery-staple"
MAX_SECONDS = 2.0
SPOKEN = "what a great day"
ASR = importlib.util.find_spec("faster_whisper") is not None  # the `asr` extra


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """A one-seed run trained for one epoch on six extracted 0.5-second clips, and clips to
    send: one of 1 s with a face and a tone, one of 3 s (over the server's 2-s limit)."""
    root = tmp_path_factory.mktemp("serve")
    rows = []
    for i, mode in enumerate(["train"] * 4 + ["valid", "test"]):
        make_video(root / "Raw" / f"vid{i}" / "0.mp4", seconds=0.5, face=i % 2 == 0, freq=240.0 + 40 * i)
        rows.append({"video_id": f"vid{i}", "clip_id": "0", "text": ["a sad film", "a happy film"][i % 2],
                     "label": ["-1.5", "1.5"][i % 2], "mode": mode})
    _, run = extracted_run(root, rows, tiny_bert, seed=3, epochs=1)
    spoken = None
    if ASR and speech_media.ESPEAK is not None:  # words nobody typed, for the page's recognised text
        spoken = speech_media.speech_video(root / "spoken.mp4", speech_media.say(SPOKEN, speed=180))
    return {"run": run, "clip": make_video(root / "clip.mp4", seconds=1.0, face=True, freq=330.0),
            "long": make_video(root / "long.mp4", seconds=3.0), "root": root, "spoken": spoken}


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor(trained["run"], device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    """The app as `selfmm serve` builds it, with one worker, room for two requests in flight,
    1 MB uploads and 2-second videos; its lifespan (worker start) runs for the module."""
    app = create_app(predictor, workers=1, max_upload_mb=1, max_seconds=MAX_SECONDS, queue_size=1)
    with TestClient(app) as test_client:
        yield test_client


def leftovers(client: TestClient) -> list[str]:
    return sorted(p.name for p in client.app.state.upload_dir.iterdir())


def post(client: TestClient, video: Path | bytes | None, transcript: str | None, **kwargs):
    """A multipart POST /predict with the parts given (None: the part is left out)."""
    parts = {}
    if video is not None:
        content = video.read_bytes() if isinstance(video, Path) else video
        parts["video"] = ("../../etc/passwd", content, "video/mp4")  # the client's name is never used
    if transcript is not None:
        parts["transcript"] = (None, transcript)
    return client.post("/predict", files=parts, **kwargs)


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str)
    assert "\n" not in body["detail"] and body["detail"]
    return body["detail"]


def test_health_info_page_docs_and_schema(client, predictor):
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "workers": 1}
    info = client.get("/info").json()
    assert info["dataset"] == "mosi" and info["label_range"] == [-3.0, 3.0] and info["seed"] == 3
    assert info["neutral_band"] == pytest.approx(0.3)
    assert info["feature_widths"] == {"audio": predictor.audio_dim, "vision": predictor.vision_dim}
    assert info["feature_sets"] == {"audio": predictor.audio_features, "vision": predictor.visual_features}
    assert info["text_model"] == predictor.cfg.model.text_model
    assert {"selfmm", "torch", "python", "fastapi"} <= set(info["versions"])
    assert info["limits"] == {"max_upload_mb": 1.0, "max_seconds": MAX_SECONDS, "workers": 1, "queue_size": 1}

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needle in ('id="video"', 'id="transcript"', 'id="score"', 'id="history"', "/static/app.js"):
        assert needle in page.text
    # Nothing comes from elsewhere: every asset the pages name is served here.
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert not any(url in response.text for url in ("http://", "https://", "//cdn")), path

    schema = client.get("/openapi.json").json()
    assert {"/health", "/info", "/predict"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["video"] and body["properties"]["video"]["format"] == "binary"
    assert {"413", "422", "503"} <= set(schema["paths"]["/predict"]["post"]["responses"])
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-based pages are off


def test_predict_scores_like_the_predictor(client, predictor, trained):
    response = post(client, trained["clip"], "what a great and happy day")
    assert response.status_code == 200, response.text
    row = response.json()
    assert set(row) == SCORE_KEYS and row["flags"] == [] and row["seconds"] > 0
    local = predictor.score_video(trained["clip"], "what a great and happy day")[0]
    for key in ("score", "text", "audio", "vision"):
        assert row[key] == pytest.approx(getattr(local, key), abs=1e-5)
    assert row["sentiment"] == local.sentiment
    assert row["transcript"] == "what a great and happy day" and row["speech"] == {"text_source": "given"}
    assert leftovers(client) == []


@pytest.mark.skipif(not ASR, reason="needs the asr extra")
@pytest.mark.parametrize("transcript", [None, " \n\t "])
def test_without_a_transcript_the_words_are_recognised(client, trained, transcript):
    """The clip's sound is a voice-like tone: no word is invented (the voice activity detector
    may take the tone for a voice: then the words are also flagged unsure)."""
    row = post(client, trained["clip"], transcript).json()
    assert set(row) == SCORE_KEYS and row["transcript"] == ""
    assert row["speech"]["text_source"] == "asr" and row["speech"]["model"] == "tiny.en"
    assert row["speech"]["words"] == [] and row["flags"][0] == "no_speech"
    assert set(row["flags"]) <= {"no_speech", "asr_unsure"}
    assert leftovers(client) == []


BAD_INPUTS = {
    "random bytes": (lambda t: make_corrupt(t / "random.mp4"), "x", "not a readable video file"),
    "cut and scrambled": (lambda t: make_corrupt(t / "bad.mp4", source=t / "good.mp4"), "x",
                          "not a readable video file"),
    "not a video": (lambda t: b"video_id,clip_id\nvid0,0\n", "x", "not a readable video file"),
    "empty file": (lambda t: b"", "x", "video: the file is empty"),
    "too long": (lambda t: t / "long.mp4", "x", f"over the limit of {MAX_SECONDS:g} s"),
    # No duration and no timestamps to check before decoding: refused by what is decoded.
    "too long, raw stream": (lambda t: make_raw_h264(t / "long.h264", seconds=10, fps=10), "x",
                             f"over the limit of {MAX_SECONDS:g} s (video decoded past it)"),
    "no video": (lambda t: None, "x", "missing field: video"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_leaves_nothing(client, trained, tmp_path, case):
    (tmp_path / "good.mp4").write_bytes(trained["clip"].read_bytes())
    (tmp_path / "long.mp4").write_bytes(trained["long"].read_bytes())
    make, transcript, expected = BAD_INPUTS[case]
    detail = one_line_error(post(client, make(tmp_path), transcript), 422)
    assert expected in detail
    assert str(tmp_path) not in detail and "upload" not in detail  # names the field, not the server's file
    assert leftovers(client) == []
    assert client.get("/health").status_code == 200


def test_malformed_requests(client, trained):
    detail = one_line_error(client.post("/predict", json={"transcript": "x"}), 422)
    assert "multipart/form-data" in detail
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    cut = client.post("/predict", content=head + trained["clip"].read_bytes()[:2000],
                      headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "ended before its closing boundary" in one_line_error(cut, 422)
    as_text = client.post("/predict", files={"video": (None, "not a file"), "transcript": (None, "x")})
    assert "must be a file upload" in one_line_error(as_text, 422)
    twice = client.post("/predict", files=[("transcript", (None, "x")),
        ("video", ("a.mp4", b"1", "video/mp4")), ("video", ("b.mp4", b"2", "video/mp4"))])
    assert "sent twice" in one_line_error(twice, 422)
    long_text = post(client, trained["clip"], "word " * 20_000)
    assert "transcript: over the limit" in one_line_error(long_text, 413)
    assert leftovers(client) == []


def asgi_post(client: TestClient, headers: list[tuple[bytes, bytes]], chunks) -> tuple[int, int]:
    """POST /predict straight through the ASGI interface with a body of `chunks` (an iterator,
    possibly endless; None stalls); returns the status and how many body bytes the app read."""
    received = 0
    status = 0

    async def run() -> None:
        nonlocal received, status

        async def receive():
            nonlocal received
            chunk = next(chunks)
            if chunk is None:  # a client that stops sending
                await asyncio.sleep(3600)
            received += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"testserver"), *headers],
                 "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": {}}
        await client.app(scope, receive, send)

    client.portal.call(run)
    return status, received


def test_oversize_upload_is_refused_while_reading(client):
    """An endless upload without Content-Length: refused once the video passes 1 MB, having
    read little more than that; a declared length over the limit is refused before reading."""
    boundary = b"xyz"
    multipart = [(b"content-type", b"multipart/form-data; boundary=" + boundary)]

    def endless():
        yield (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"video\"; "
               b"filename=\"big.mp4\"\r\n\r\n")
        while True:
            yield b"\0" * 65536

    status, received = asgi_post(client, multipart, endless())
    assert status == 413
    assert 1 * MB < received <= 1 * MB + 2 * 65536
    assert leftovers(client) == []

    status, received = asgi_post(client, [*multipart, (b"content-length", str(300 * MB).encode())],
                                 endless())
    assert (status, received) == (413, 0)
    big = post(client, b"\0" * (MB + 1), "x")
    assert "over the limit of 1 MB" in one_line_error(big, 413)
    assert leftovers(client) == []


def test_stalled_upload_times_out(client, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_IDLE_SECONDS", 0.2)
    boundary = b"xyz"

    def stalled():
        yield (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"video\"; "
               b"filename=\"a.mp4\"\r\n\r\nsome bytes")
        yield None

    status, _ = asgi_post(client, [(b"content-type", b"multipart/form-data; boundary=" + boundary)],
                          stalled())
    assert status == 408
    assert leftovers(client) == []


def test_full_queue_answers_503_with_retry_after(client):
    gate = client.app.state.gate
    assert gate.capacity == 2  # one worker + a queue of one
    taken = [gate.try_enter(), gate.try_enter()]  # two requests in flight
    try:
        assert taken == [True, True]
        busy = post(client, b"never read", "x")
        assert "busy" in one_line_error(busy, 503)
        assert int(busy.headers["retry-after"]) >= 1
    finally:
        for _ in taken:
            gate.leave()
    assert leftovers(client) == []
    admitted = post(client, None, "x")  # room again: admitted, and refused for what it is
    assert "missing field: video" in one_line_error(admitted, 422)


def test_cross_origin_posts_are_refused(client):
    other = post(client, None, "x", headers={"origin": "http://evil.example"})
    assert "cross-origin" in one_line_error(other, 403)
    same = post(client, None, "x", headers={"origin": "http://testserver"})
    assert "missing field: video" in one_line_error(same, 422)


def children(pid: int) -> dict[int, bytes]:
    """{pid: command line} of the processes whose parent is `pid`."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    return found


def pool_workers() -> list[int]:
    """The scoring processes this test process started: spawned, or forked by its fork server."""
    workers = []
    for pid, cmdline in children(os.getpid()).items():
        if b"multiprocessing.spawn" in cmdline:
            workers.append(pid)
        elif b"multiprocessing.forkserver" in cmdline:
            workers += list(children(pid))
    return workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker through /proc")
def test_a_killed_worker_is_replaced(client, trained):
    workers = pool_workers()
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    # A job may reach the dead pool before it is noticed (500, the pool restarts); the next
    # one is scored by a fresh worker.
    for attempt in range(2):
        response = post(client, trained["clip"], "fine")
        if response.status_code == 200:
            break
        assert attempt == 0 and "restarted" in one_line_error(response, 500)
    assert response.status_code == 200 and set(response.json()) == SCORE_KEYS
    assert client.get("/health").status_code == 200
    assert leftovers(client) == []


def test_token_guards_everything_but_health(predictor, monkeypatch):
    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    app = create_app(predictor, workers=1, max_upload_mb=1, max_seconds=2, token=TOKEN)
    # No lifespan (no workers): /predict is only asked to refuse.
    client = TestClient(app)
    assert client.get("/health").status_code == 200 and compared == []
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    for path in ("/", "/info", "/docs", "/openapi.json", "/static/app.js"):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {TOKEN}x"},
                        {"authorization": "Basic !!"}, {"authorization": TOKEN}):
            refused = client.get(path, headers=headers)
            assert "token" in one_line_error(refused, 401)
            assert refused.headers["www-authenticate"].startswith("Basic")
        assert client.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get(path, headers={"authorization": f"Basic {basic}"}).status_code == 200
    assert one_line_error(post(client, None, "x"), 401)
    assert len(compared) == 5 * 4  # every token given is compared; no header, nothing to compare


def test_host_header_must_name_this_machine(predictor):
    app = create_app(predictor, workers=1, max_upload_mb=1, max_seconds=2,
                     allowed_hosts=["127.0.0.1", "localhost"])
    client = TestClient(app, base_url="http://127.0.0.1")
    assert client.get("/info").status_code == 200
    assert client.get("/info", headers={"host": "rebound.example"}).status_code == 400


def test_serve_refuses_unsafe_settings(tmp_path, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    missing = tmp_path / "no-run"
    with pytest.raises(SelfMMError, match="`host` 0.0.0.0 is not loopback: pass `token`"):
        serve(missing, host="0.0.0.0", port=0)
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err
    with pytest.raises(SelfMMError, match="at least 16 characters"):
        serve(missing, token="short", port=0)
    with pytest.raises(SelfMMError, match=r"`workers` must be in \[1, 64\], got 0"):
        serve(missing, workers=0, port=0)
    with pytest.raises(SelfMMError, match=r"`max_seconds`: expected a finite number in \(0, 3600\], got 0"):
        serve(missing, max_seconds=0, port=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SelfMMError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            serve(missing, port=taken.getsockname()[1])
    with pytest.raises(SelfMMError, match="does not exist"):
        serve(missing, port=0)
    # The command gives the same refusals as one line and exit status 2.
    capsys.readouterr()
    assert main(["serve", "--run", str(missing), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("selfmm: error: --host 0.0.0.0 is not loopback") and len(err) == 2


@pytest.fixture
def live_server(trained, tmp_path):
    """`selfmm serve` in its own process on a free loopback port, stopped (with its workers) after."""
    server, url = start_serve(trained["run"], tmp_path / "server.log", "--workers", "1", "--device", "cpu",
                              "--max-seconds", str(MAX_SECONDS), within=90)
    try:
        yield url
    finally:
        stop_serve(server)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_page_in_chromium(live_server, trained, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")

    transcript = "what a great and happy day"
    with open(trained["clip"], "rb") as handle:
        expected = httpx.post(f"{live_server}/predict", files={"video": handle},
                              data={"transcript": transcript}, timeout=60).json()
    requested: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), timeout=60_000,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.on("request", lambda request: requested.append(request.url))
            page.goto(live_server)
            # Selectors, not predicates: the page's CSP forbids the eval that predicates need.
            page.wait_for_selector("#run-info:has-text('mosi')")
            for round_ in (1, 2):
                page.set_input_files("#video", str(trained["clip"]))
                page.fill("#transcript", transcript)
                page.click("#submit")
                page.wait_for_selector(f"#history tbody tr:nth-child({round_})")
            assert page.is_hidden("#error")
            score = float(page.inner_text("#score"))
            sentiment = page.inner_text("#sentiment")
            bars = {head: page.get_attribute(f"#bar-{head}", "style") for head in ("text", "audio", "vision")}
            rows = page.locator("#history tbody tr").all_inner_texts()
            if trained["spoken"] is not None:  # no transcript typed: the page shows the words heard
                page.set_input_files("#video", str(trained["spoken"]))
                page.fill("#transcript", "")
                page.click("#submit")
                page.wait_for_selector("#history tbody tr:nth-child(3)")
                heard = page.inner_text("#words"), page.inner_text("#words-source")
                recognised_row = page.locator("#history tbody tr").first.inner_text()
            page.set_input_files("#video", str(trained["long"]))
            page.click("#submit")
            page.wait_for_selector("#error", state="visible")
            error = page.inner_text("#error")
            page.goto(f"{live_server}/docs")
            page.wait_for_selector("text=POST /predict")
        finally:
            browser.close()
    assert score == pytest.approx(expected["score"], abs=5e-4) and sentiment == expected["sentiment"]
    widths = {head: re.search(r"width: ([0-9.]+)%", style) for head, style in bars.items()}
    assert all(found and float(found[1]) > 0 for found in widths.values()), bars
    assert len(rows) == 2 and all("clip.mp4" in row and transcript in row for row in rows)
    if trained["spoken"] is not None:
        assert re.sub(r"[^a-z ]", "", heard[0].lower()) == SPOKEN and "recognised by tiny.en" in heard[1]
        assert "spoken.mp4" in recognised_row and "[recognised]" in recognised_row
    assert f"over the limit of {MAX_SECONDS:g} s" in error
    assert requested and all(url.startswith(live_server + "/") for url in requested), requested
