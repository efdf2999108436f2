"""What runs inside a scoring process: load the run once, then check and score one video per job.

These functions are the pool's initializer and jobs; they run in the worker processes, never
in the server's, and hold the process's one Predictor in a module global."""

from __future__ import annotations

import os
import time
from typing import Any

import av
import torch

from ..errors import SelfMMError
from ..extract.speech import SpeechSettings
from ..pools import ignore_interrupts
from ..predict import Predictor

_predictor: Predictor | None = None


def load(seed_dir: str, device: str, text_model: str | None, threads: int,
         speech: SpeechSettings | None = None) -> None:
    """The initializer: load the run (and the speech model) in this process."""
    global _predictor
    ignore_interrupts()
    torch.set_num_threads(threads)  # the workers share the cores between them
    _predictor = Predictor(seed_dir, device=device, text_model=text_model)
    _predictor.tokenizer  # noqa: B018 - loaded now rather than during the first request
    _predictor.speech = speech
    if speech is not None:
        speech.recogniser()  # likewise


def ready() -> int:
    """A job that returns once the initializer has run: the pool waits for one per worker."""
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


def score(path: str, transcript: str | None, max_seconds: float) -> dict[str, Any]:
    """The job: one video and its transcript (None: recognised), scored; the fields of
    schemas.Score."""
    assert _predictor is not None, "the worker's initializer did not run"
    started = time.perf_counter()
    try:
        check_duration(path, max_seconds)  # what the file states: cheap, before decoding
        clip = _predictor.score_video(path, transcript, max_seconds)[0]  # what it holds
    except SelfMMError as exc:
        # The upload's name on disk means nothing to the client: name the request field.
        raise SelfMMError(" ".join(str(exc).replace(path, "video").split())) from None
    return {"score": clip.score, "sentiment": clip.sentiment, "text": clip.text,
            "audio": clip.audio, "vision": clip.vision, "flags": clip.flags,
            "seconds": time.perf_counter() - started, "transcript": clip.transcript,
            "speech": clip.speech}
