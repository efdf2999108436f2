"""Decoding is bounded by what is decoded, not by what a file states (selfmm.extract.media):
seconds of audio samples and video frames, video frames, pixels per frame, decoding time. A raw
H.264 stream states neither a duration nor timestamps, and a stream may claim any frame rate.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

av = pytest.importorskip("av")
pytest.importorskip("cv2")

from media import make_raw_h264, make_video  # noqa: E402
from selfmm.errors import DataError  # noqa: E402
from selfmm.extract.media import MAX_FPS, Limits, _Decoder, decode  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("limits")
    return {
        "raw": make_raw_h264(root / "long.h264", seconds=20, fps=10),  # 200 frames, ~5 KB
        "fast": make_video(root / "fast.mkv", seconds=2, fps=1000, width=32, height=32, audio=None),
        "audio": make_video(root / "speech.mp4", seconds=12, video=False),
        "small": make_video(root / "small.mp4", seconds=1, width=64, height=48),
    }


def test_a_raw_stream_without_timestamps_is_measured_by_its_frames(files):
    with av.open(str(files["raw"])) as container:  # what a check of the metadata sees
        assert container.duration is None
        assert all(frame.time is None for frame in container.decode(video=0))
    with pytest.raises(DataError, match="over the limit of 5 s \\(video decoded past it\\)"):
        decode(files["raw"], 10, max_seconds=5)
    assert len(decode(files["raw"], 10, max_seconds=60).frames) > 0  # within the limit: decoded
    assert len(decode(files["raw"], 10).frames) > 0  # no limit asked


def test_frames_are_counted_whatever_rate_the_stream_claims(files):
    """2 s at 1000 frames per second: within 5 s, but 2000 frames is over 5 s at MAX_FPS."""
    with pytest.raises(DataError, match=f"over {math.ceil(5 * MAX_FPS)} video frames"):
        decode(files["fast"], 10, max_seconds=5)


def test_audio_is_counted_in_samples(files):
    with pytest.raises(DataError, match="over the limit of 5 s \\(audio decoded past it\\)"):
        decode(files["audio"], 10, max_seconds=5)
    assert decode(files["audio"], 10, max_seconds=20).audio.size == pytest.approx(12 * 16_000, rel=0.05)


def run(path: Path, limits: Limits) -> None:
    with av.open(str(path)) as container:
        decoder = _Decoder(path, container, 10, limits)
        decoder.run()
        decoder.finish()


def test_pixels_per_frame_and_decoding_time_are_bounded(files):
    with pytest.raises(DataError, match="frames of 64x48 pixels, over the limit of 1,000 per frame"):
        run(files["small"], Limits(pixels=1000))
    with pytest.raises(DataError, match="decoding took over 0 s"):
        run(files["small"], Limits(wall_seconds=0))
    run(files["small"], Limits.for_seconds(2))
    assert Limits.for_seconds(2).wall_seconds == 30 and Limits.for_seconds(600).wall_seconds == 600
