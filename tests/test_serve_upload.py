"""selfmm.serve.upload alone: the multipart body streamed to a private file, its limits held
while reading (413 without reading the rest, 408 on a stall), nothing left on disk on any
refusal; and the admission gate."""

from __future__ import annotations

import asyncio
import re
import stat

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

from fastapi import HTTPException  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402

from selfmm.serve import upload  # noqa: E402
from selfmm.serve.upload import MB, Gate, receive_upload  # noqa: E402
from serve_fakes import DISCONNECT, STALL, ScriptedRequest, multipart, pieces  # noqa: E402

VIDEO = bytes(range(256)) * 40  # 10 KiB, every byte value, boundary-like bytes included


def receive(scripted: ScriptedRequest, directory, max_video: int = MB):
    return asyncio.run(receive_upload(scripted.request, directory, max_video))


def refused(scripted: ScriptedRequest, directory, max_video: int = MB) -> tuple[int, str]:
    with pytest.raises(HTTPException) as caught:
        receive(scripted, directory, max_video)
    assert "\n" not in caught.value.detail
    return caught.value.status_code, caught.value.detail


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_video_to_a_private_file_and_transcript_to_text(tmp_path, size):
    body = multipart(("other", None, b"ignored"), ("video", "../../etc/passwd", VIDEO),
                     ("transcript", None, b" what a day\n"), ("extra", "x.bin", b"not kept"))
    path, transcript = receive(ScriptedRequest(pieces(body, size)), tmp_path)
    assert transcript == "what a day"
    assert path.read_bytes() == VIDEO
    assert path.parent == tmp_path and re.fullmatch(r"[0-9a-f]{32}\.upload", path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]  # the other parts went nowhere


def test_oversize_video_is_refused_after_the_limit_not_the_rest(tmp_path):
    def endless():
        yield multipart(("video", "a.mp4", b""))[:-len(b"\r\n--B0UNDARY--\r\n")]
        while True:
            yield b"\0" * 4096

    scripted = ScriptedRequest(endless())
    status, detail = refused(scripted, tmp_path, max_video=64 * 1024)
    assert status == 413 and detail == "video: the upload is over the limit of 0.0625 MB"
    assert 64 * 1024 < scripted.read <= 64 * 1024 + 2 * 4096
    assert list(tmp_path.iterdir()) == []


def test_declared_length_over_the_limit_is_refused_before_reading(tmp_path):
    scripted = ScriptedRequest([], headers={"content-length": str(3 * MB)})
    status, detail = refused(scripted, tmp_path, max_video=MB)
    assert (status, scripted.messages) == (413, 0)
    assert "over the upload limit of 1 MB" in detail


def test_body_over_the_limit_outside_the_video_is_refused(tmp_path):
    """Parts the server ignores still count: the whole body is bounded by the video's limit
    plus FORM_OVERHEAD."""
    endless = iter(lambda: b"x" * 65536, None)
    head = multipart(("junk", None, b""))[:-len(b"\r\n--B0UNDARY--\r\n")]
    scripted = ScriptedRequest([head, *[next(endless) for _ in range(40)]])
    status, detail = refused(scripted, tmp_path, max_video=MB)
    assert status == 413 and "over the upload limit of 1 MB" in detail
    assert scripted.read <= MB + upload.FORM_OVERHEAD + 65536


def test_long_transcript_is_refused_while_reading(tmp_path):
    body = multipart(("transcript", None, b"w" * (upload.TRANSCRIPT_LIMIT + 1)), ("video", "a.mp4", VIDEO))
    status, detail = refused(ScriptedRequest(pieces(body, 4096)), tmp_path)
    assert status == 413 and detail == f"transcript: over the limit of {upload.TRANSCRIPT_LIMIT} bytes"


def test_stalled_upload_gets_408_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_IDLE_SECONDS", 0.05)
    head = multipart(("video", "a.mp4", VIDEO))[:2000]
    status, detail = refused(ScriptedRequest([head, STALL]), tmp_path)
    assert status == 408 and detail == "the upload stalled: no data for 0.05 s"
    assert list(tmp_path.iterdir()) == []


def test_a_disconnect_mid_video_leaves_nothing(tmp_path):
    head = multipart(("video", "a.mp4", VIDEO))[:2000]
    with pytest.raises(ClientDisconnect):
        receive(ScriptedRequest([head, DISCONNECT]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_upload_folder_that_is_gone_gives_507(tmp_path):
    body = multipart(("video", "a.mp4", VIDEO), ("transcript", None, b"x"))
    status, detail = refused(ScriptedRequest([body]), tmp_path / "gone")
    assert status == 507 and detail.startswith("the server cannot store the upload: ")


REFUSALS = {
    "not multipart": ({"content-type": "application/json"}, b"{}", "must be multipart/form-data"),
    "no boundary": ({"content-type": "multipart/form-data"}, b"", "must be multipart/form-data"),
    "garbage": ({}, b"hello, world\r\n", "not valid multipart/form-data"),
    "cut short": ({}, multipart(("video", "a.mp4", VIDEO))[:3000], "ended before its closing boundary"),
    "no video": ({}, multipart(("transcript", None, b"x")), "missing field: video"),
    "empty video": ({}, multipart(("video", "a.mp4", b""), ("transcript", None, b"x")), "video: the file is empty"),
    "video as text": ({}, multipart(("video", None, VIDEO)), "video: must be a file upload"),
    "video twice": ({}, multipart(("video", "a", b"1"), ("video", "b", b"2")), "video: the field was sent twice"),
    "transcript twice": ({}, multipart(("transcript", None, b"a"), ("transcript", None, b"b")),
                         "transcript: the field was sent twice"),
    "transcript not UTF-8": ({}, multipart(("video", "a", VIDEO), ("transcript", None, b"\xff\xfe")),
                             "transcript: not valid UTF-8"),
}


@pytest.mark.parametrize("parts", [(), (("transcript", None, b" \t\r\n "),)])
def test_no_transcript_or_a_blank_one_leaves_the_words_to_recognise(tmp_path, parts):
    path, transcript = receive(ScriptedRequest([multipart(("video", "a.mp4", VIDEO), *parts)]), tmp_path)
    assert transcript is None and path.read_bytes() == VIDEO


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_422_and_leave_nothing(tmp_path, case):
    headers, body, expected = REFUSALS[case]
    status, detail = refused(ScriptedRequest(pieces(body, 1000), headers=headers), tmp_path)
    assert status == 422 and expected in detail
    assert list(tmp_path.iterdir()) == []


def test_gate_admits_up_to_its_capacity():
    gate = Gate(2)
    assert [gate.try_enter() for _ in range(3)] == [True, True, False]
    assert gate.inside == 2
    gate.leave()
    assert gate.try_enter() and not gate.try_enter()
