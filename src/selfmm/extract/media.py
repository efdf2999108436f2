"""Decoding one clip with PyAV: mono 16 kHz audio and video frames sampled at a fixed rate."""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SelfMMError
from ..io import check_file

SAMPLE_RATE = 16_000  # Hz, the rate every clip's audio is resampled to
DETECT_WIDTH = 360  # frames are scaled to at most this width unless the caller asks otherwise
# Bounds of one decode (Limits), whatever the file claims: 8K UHD is 7680x4320 (33 M pixels);
# cameras film at up to 120 frames per second, high-speed modes at 240; a clip may take as
# long to decode as it lasts (real time: FFmpeg decodes far faster), at least MIN_DECODE_S.
MAX_PIXELS = 8192 * 8192
MAX_FPS = 240
MIN_DECODE_S = 30.0


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


def decode(path: str | os.PathLike, vision_fps: float, max_seconds: float | None = None, *,
           frame_format: str = "gray", frame_width: int = DETECT_WIDTH,
           on_frame: Callable[[np.ndarray, float], None] | None = None) -> DecodedClip:
    """Decode `path` in one pass: all audio (resampled), and video frames every 1/vision_fps s,
    in PyAV's `frame_format` ("gray" or "rgb24"), at most `frame_width` wide, upright. With
    `on_frame`, each sampled frame goes to it as it is decoded, with its time in seconds,
    instead of into `frames`.

    Raises DataError for a missing file, a file FFmpeg cannot open, or one with neither an
    audio nor a video stream. Packets that fail to decode are skipped and counted.

    Bounded whatever the file states (Limits): frames of at most MAX_PIXELS; with
    `max_seconds`, at most that much audio and video as decoded (samples and frames, not the
    container's timestamps, which a raw stream does not have), at most MAX_FPS frames per
    second of it, and at most as much decoding time as the clip may last (30 s at least).
    """
    check_dependencies()
    import av

    path = Path(path)
    check_file(path, "video", "video file", DataError)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable video file ({_why(exc)})") from exc
    with container:
        decoder = _Decoder(path, container, vision_fps, Limits.for_seconds(max_seconds), frame_format,
                           frame_width, on_frame)
        decoder.run()
        out = decoder.finish()
    if out.audio is not None:
        out.decoded_seconds = max(out.decoded_seconds, out.audio.size / SAMPLE_RATE)
    return out


@dataclass(frozen=True)
class Limits:
    """What one decode may take, counted on what it decodes."""

    seconds: float | None = None  # audio and video as decoded
    frames: int | None = None  # video frames decoded: a stream may understate its frame rate
    pixels: int = MAX_PIXELS  # per frame
    wall_seconds: float | None = None  # time spent decoding

    @classmethod
    def for_seconds(cls, seconds: float | None) -> Limits:
        if seconds is None:
            return cls()
        return cls(seconds, math.ceil(seconds * MAX_FPS), MAX_PIXELS, max(MIN_DECODE_S, seconds))


class _Decoder:
    """The state of one pass over a container: the audio resampled so far, the video frames
    kept every `1/vision_fps` s, and what the limits count."""

    def __init__(self, path: Path, container, vision_fps: float, limits: Limits, frame_format: str = "gray",
                 frame_width: int = DETECT_WIDTH, on_frame: Callable[[np.ndarray, float], None] | None = None,
                 ) -> None:
        import av

        self.path, self.container, self.limits = path, container, limits
        self.frame_format, self.frame_width, self.on_frame = frame_format, frame_width, on_frame
        self.astream = container.streams.audio[0] if container.streams.audio else None
        self.vstream = container.streams.video[0] if container.streams.video else None
        if self.astream is None and self.vstream is None:
            raise DataError(f"{path}: the file has neither an audio nor a video stream")
        self.out = DecodedClip(audio=None, has_video=self.vstream is not None)
        if container.duration:
            self.out.declared_seconds = container.duration / 1_000_000  # AV_TIME_BASE units
        self.rate = float(self.vstream.average_rate or 25) if self.vstream is not None else 25.0
        # Seconds of video are counted from the stream's first timestamp (an MP4 edit list may
        # start it later than 0).
        start, base = (self.vstream.start_time, self.vstream.time_base) if self.vstream is not None else (None, None)
        self.video_start = float(start * base) if start is not None and base else 0.0
        if self.vstream is not None:
            self._check_pixels(self.vstream.codec_context.width or 0, self.vstream.codec_context.height or 0)
        self.resampler = (av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                          if self.astream is not None else None)
        self.chunks: list[np.ndarray] = []
        self.audio_in_seconds = 0.0  # of the input, before resampling
        self.step = 1.0 / vision_fps
        self.next_t = 0.0
        self.n_video = 0
        self.started = time.monotonic()

    def run(self) -> None:
        import av

        streams = [s for s in (self.astream, self.vstream) if s is not None]
        try:
            for packet in self.container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.out.decode_errors += 1
                    continue
                for frame in frames:
                    if packet.stream is self.astream:
                        self._audio(frame)
                    else:
                        self._video(frame)
                self._check_time()
        except av.FFmpegError as exc:
            # Demuxing itself failed (a damaged container): keep what was read if anything.
            self.out.decode_errors += 1
            if not self.chunks and not self.out.times:
                raise DataError(f"{self.path}: cannot decode the file ({_why(exc)})") from exc

    def _audio(self, frame) -> None:
        # Counted before resampling: a stream claiming a tiny sample rate would otherwise
        # resample one frame into gigabytes.
        self.audio_in_seconds += frame.samples / max(frame.sample_rate or SAMPLE_RATE, 1)
        self._check_seconds(self.audio_in_seconds, "audio")
        for res in self.resampler.resample(frame):
            self.chunks.append(res.to_ndarray().reshape(-1))

    def _video(self, frame) -> None:
        limits = self.limits
        self._check_pixels(frame.width, frame.height)
        self.n_video += 1
        if limits.frames is not None and self.n_video > limits.frames:
            raise DataError(f"{self.path}: over {limits.frames} video frames, more than the limit "
                            f"of {limits.seconds:g} s at up to {MAX_FPS} frames per second")
        # The frame's own time, or its place in the stream where it has none (a raw stream).
        t = frame.time if frame.time is not None else (self.n_video - 1) / self.rate
        self.out.decoded_seconds = max(self.out.decoded_seconds, t + 1 / self.rate)
        self._check_seconds(max(t - self.video_start, (self.n_video - 1) / self.rate), "video")
        # Keep the first frame at or after each multiple of `step`.
        if t + 1e-6 < self.next_t:
            return
        while self.next_t <= t + 1e-6:
            self.next_t += self.step
        image, self.out.rotation = _upright(frame, self.frame_format, self.frame_width)
        self.out.times.append(float(t))
        self.out.brightness.append(float(image[::4, ::4].mean()))
        if self.on_frame is None:
            self.out.frames.append(image)
        else:
            self.on_frame(image, float(t))

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.limits.pixels:
            raise DataError(f"{self.path}: frames of {width}x{height} pixels, over the limit of "
                            f"{self.limits.pixels:,} per frame")

    def _check_seconds(self, seconds: float, what: str) -> None:
        if self.limits.seconds is not None and seconds > self.limits.seconds:
            raise DataError(f"{self.path}: over the limit of {self.limits.seconds:g} s "
                            f"({what} decoded past it)")

    def _check_time(self) -> None:
        spent = time.monotonic() - self.started
        if self.limits.wall_seconds is not None and spent > self.limits.wall_seconds:
            raise DataError(f"{self.path}: decoding took over {self.limits.wall_seconds:g} s, the "
                            "limit for a clip of this length")

    def finish(self) -> DecodedClip:
        """The resampler's tail, the audio as one array; DataError when nothing was decoded."""
        import av

        if self.resampler is not None:
            try:
                for res in self.resampler.resample(None):
                    self.chunks.append(res.to_ndarray().reshape(-1))
            except av.FFmpegError:
                self.out.decode_errors += 1
            self.out.audio = (np.concatenate(self.chunks).astype(np.float32, copy=False)
                              if self.chunks else np.zeros(0, np.float32))
        if not self.chunks and not self.out.times:
            raise DataError(f"{self.path}: no audio sample or video frame could be decoded")
        return self.out
