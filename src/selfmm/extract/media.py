"""Decoding one clip with PyAV: mono 16 kHz audio and video frames sampled at a fixed rate."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SelfMMError

SAMPLE_RATE = 16_000  # Hz, the rate every clip's audio is resampled to
DETECT_WIDTH = 360  # frames are scaled to at most this width unless the caller asks otherwise


@dataclass
class DecodedClip:
    """What `decode` returns. `audio` is None when the file has no audio stream."""

    audio: np.ndarray | None  # (S,) float32 in [-1, 1], mono, SAMPLE_RATE
    # (H, W) grey or (H, W, 3) RGB uint8; empty when decode passed them to on_frame instead
    frames: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds, one per sampled frame
    brightness: list[float] = field(default_factory=list)  # mean pixel value (0-255) per frame
    has_video: bool = False
    decode_errors: int = 0  # packets FFmpeg could not decode (truncated or damaged file)
    declared_seconds: float | None = None  # the container's duration, when it states one
    decoded_seconds: float = 0.0  # how far decoding got, in either stream
    rotation: int = 0  # degrees counter-clockwise the frames were turned, as the file asks

    @property
    def damaged(self) -> bool:
        """Undecodable packets, or decoding ended well before the stated duration (cut file)."""
        if self.decode_errors:
            return True
        if self.declared_seconds is None:
            return False
        return self.declared_seconds - self.decoded_seconds > max(0.5, 0.1 * self.declared_seconds)


def check_dependencies(*extra: tuple[str, str]) -> None:
    """Raise SelfMMError naming the extra to install when PyAV, OpenCV or one of `extra`
    ((import name, pip package) pairs: what the chosen acoustic set needs) is missing."""
    missing = []
    for module, package in (("av", "av"), ("cv2", "opencv-python-headless"), *extra):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise SelfMMError(
            f"feature extraction needs {', '.join(missing)}: pip install 'selfmm[video]'"
        )


def _why(exc: Exception) -> str:
    # FFmpeg errors repeat the errno and the path; the reason alone reads better.
    return getattr(exc, "strerror", None) or str(exc)


def _upright(frame, frame_format: str, max_width: int) -> tuple[np.ndarray, int]:
    """A decoded frame as an array, turned as its display matrix asks (a phone held upright or
    upside down records its frames turned and says so in the file), at most max_width wide."""
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    scale = min(1.0, max_width / (frame.height if turns % 2 else frame.width))
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    image = frame.reformat(width=size[0], height=size[1], format=frame_format).to_ndarray()
    return np.ascontiguousarray(np.rot90(image, turns) if turns else image), 90 * turns


def decode(path: str | os.PathLike, vision_fps: float, frame_format: str = "gray",
           frame_width: int = DETECT_WIDTH, on_frame: Callable[[np.ndarray, float], None] | None = None,
           ) -> DecodedClip:
    """Decode `path` in one pass: all audio (resampled), and video frames every 1/vision_fps s,
    in PyAV's `frame_format` ("gray" or "rgb24"), at most `frame_width` wide, upright. With
    `on_frame`, each sampled frame goes to it as it is decoded, with its time in seconds,
    instead of into `frames`.

    Raises DataError for a missing file, a file FFmpeg cannot open, or one with neither an
    audio nor a video stream. Packets that fail to decode are skipped and counted.
    """
    check_dependencies()
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable video file ({_why(exc)})") from exc
    with container:
        astream = container.streams.audio[0] if container.streams.audio else None
        vstream = container.streams.video[0] if container.streams.video else None
        if astream is None and vstream is None:
            raise DataError(f"{path}: the file has neither an audio nor a video stream")
        out = DecodedClip(audio=None, has_video=vstream is not None)
        if container.duration:
            out.declared_seconds = container.duration / 1_000_000  # AV_TIME_BASE units
        rate = float(vstream.average_rate or 25) if vstream is not None else 25.0
        chunks: list[np.ndarray] = []
        resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if astream else None
        )
        step = 1.0 / vision_fps
        next_t = 0.0
        n_video = 0
        streams = [s for s in (astream, vstream) if s is not None]
        try:
            for packet in container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    out.decode_errors += 1
                    continue
                for frame in frames:
                    if packet.stream is astream:
                        for res in resampler.resample(frame):
                            chunks.append(res.to_ndarray().reshape(-1))
                        continue
                    # Video: keep the first frame at or after each multiple of `step`.
                    t = frame.time
                    if t is None:
                        t = n_video / rate
                    n_video += 1
                    out.decoded_seconds = max(out.decoded_seconds, t + 1 / rate)
                    if t + 1e-6 < next_t:
                        continue
                    while next_t <= t + 1e-6:
                        next_t += step
                    image, out.rotation = _upright(frame, frame_format, frame_width)
                    out.times.append(float(t))
                    out.brightness.append(float(image[::4, ::4].mean()))
                    if on_frame is None:
                        out.frames.append(image)
                    else:
                        on_frame(image, float(t))
        except av.FFmpegError as exc:
            # Demuxing itself failed (a damaged container): keep what was read if anything.
            out.decode_errors += 1
            if not chunks and not out.times:
                raise DataError(f"{path}: cannot decode the file ({_why(exc)})") from exc
        if resampler is not None:
            try:
                for res in resampler.resample(None):
                    chunks.append(res.to_ndarray().reshape(-1))
            except av.FFmpegError:
                out.decode_errors += 1
            out.audio = (
                np.concatenate(chunks).astype(np.float32, copy=False)
                if chunks
                else np.zeros(0, np.float32)
            )
    if not chunks and not out.times:
        raise DataError(f"{path}: no audio sample or video frame could be decoded")
    if out.audio is not None:
        out.decoded_seconds = max(out.decoded_seconds, out.audio.size / SAMPLE_RATE)
    return out
