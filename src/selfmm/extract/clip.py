"""One clip: text tokens, acoustic frames and visual frames, and its MMSA-style file."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import checked, integer, optional
from ..data.layout import EXTRACTION_KEY
from ..io import atomic_writer
from .audio import DEFAULT_AUDIO_FEATURES, acoustic_frames, audio_set
from .media import check_dependencies, decode
from .visual import VISION_DIM, VISION_FPS, FaceDescriber

FLAGS = ("no_audio", "silent", "no_video", "no_face", "damaged")
# Upper bounds on the padded lengths that no real use reaches, against a slip that pads every
# clip to gigabytes (a 2-second clip with audio_len=100000000 wrote 10 GB). The benchmark files
# hold at most 50 tokens and 500 frames per clip; text encoders take 512 positions.
MAX_TEXT_LEN = 4096  # 8x BERT's positions (the encoder's own limit is checked when training)
MAX_FRAMES = 100_000  # 200x the benchmark's 500: 16 minutes of audio at 100 frames/s
LENGTHS = {"text_len": integer(1, MAX_TEXT_LEN), "audio_len": optional(integer(1, MAX_FRAMES)),
           "vision_len": optional(integer(1, MAX_FRAMES))}


@checked(**LENGTHS)
def check_lengths(text_len: int = 50, audio_len: int | None = None, vision_len: int | None = None) -> None:
    """Refuse padded lengths out of [1, MAX_TEXT_LEN] or [1, MAX_FRAMES] before any work."""


@dataclass
class MediaFeatures:
    """The text-independent part of a clip: unpadded frames and flags."""

    audio: np.ndarray  # (La, Da) float32, Da the width of the audio feature set
    vision: np.ndarray  # (Lv, VISION_DIM) float32
    flags: dict[str, bool]
    audio_features: str = DEFAULT_AUDIO_FEATURES  # the acoustic set's name
    vision_fps: float = VISION_FPS

    @property
    def audio_fps(self) -> float:
        return audio_set(self.audio_features).fps


@dataclass
class ClipFeatures:
    text_bert: np.ndarray  # (3, Lt) float32: input ids, attention mask, token type ids
    audio: np.ndarray  # (La, Da) float32, zero rows past audio_length
    vision: np.ndarray  # (Lv, VISION_DIM) float32, zero rows past vision_length
    audio_length: int
    vision_length: int
    flags: dict[str, bool] = field(default_factory=dict)
    audio_features: str = DEFAULT_AUDIO_FEATURES
    vision_fps: float = VISION_FPS
    raw_text: str = ""

    @property
    def audio_fps(self) -> float:
        return audio_set(self.audio_features).fps


_describer: FaceDescriber | None = None


def _face_describer() -> FaceDescriber:
    global _describer  # the cascades take ~50 ms to load: once per process
    if _describer is None:
        _describer = FaceDescriber()
    return _describer


def extract_media(video_path: str | os.PathLike, audio_features: str = DEFAULT_AUDIO_FEATURES,
                  max_seconds: float | None = None) -> MediaFeatures:
    """Decode `video_path` and compute its acoustic frames (set `audio_features`) and
    visual frames; a clip longer than `max_seconds`, as decoded, raises DataError.

    A file without an audio stream, with silent audio, without a video stream or without a
    detectable face gives zero frames of that modality and sets the matching flag. A file that
    cannot be opened raises DataError.
    """
    acoustic = audio_set(audio_features)
    check_dependencies((acoustic.module, acoustic.package))
    decoded = decode(video_path, VISION_FPS, max_seconds)
    flags = dict.fromkeys(FLAGS, False)
    flags["damaged"] = decoded.damaged
    flags["no_audio"] = decoded.audio is None or decoded.audio.size == 0
    flags["no_video"] = not decoded.has_video or not decoded.frames
    with ThreadPoolExecutor(1) as pool:
        # openSMILE (through ctypes) and OpenCV release the GIL, so the acoustic frames are
        # computed while faces are detected: on a free core they add no time to the clip.
        acoustic_job = (None if flags["no_audio"]
                        else pool.submit(acoustic_frames, decoded.audio, acoustic.name))
        if flags["no_video"]:
            vision = np.zeros((0, VISION_DIM), np.float32)
        else:
            vision = _face_describer().describe(decoded.frames)
        if acoustic_job is None:
            audio = np.zeros((0, acoustic.dim), np.float32)
        else:
            audio, flags["silent"] = acoustic_job.result()
    flags["no_face"] = vision.shape[0] == 0
    return MediaFeatures(audio=audio, vision=vision, flags=flags, audio_features=acoustic.name)


def tokenize(tokenizer, texts: list[str], text_len: int) -> np.ndarray:
    """(N, 3, text_len) float32: input ids, attention mask, token type ids (MMSA's text_bert)."""
    if not texts:
        return np.zeros((0, 3, text_len), np.float32)
    enc = tokenizer(
        list(texts), max_length=text_len, padding="max_length", truncation=True,
        return_token_type_ids=True,
    )
    parts = [enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]]
    return np.stack([np.asarray(p, dtype=np.float32) for p in parts], axis=1)


def pad_frames(frames: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """Zero-pad or truncate (L, D) frames to (length, D); returns the frames and valid count."""
    valid = min(frames.shape[0], length)
    out = np.zeros((length, frames.shape[1]), np.float32)
    out[:valid] = frames[:valid]
    return out, valid


@checked(**LENGTHS)
def extract_clip(
    video_path: str | os.PathLike,
    transcript: str,
    tokenizer,
    *,
    text_len: int = 50,
    audio_len: int | None = None,
    vision_len: int | None = None,
    audio_features: str = DEFAULT_AUDIO_FEATURES,
    max_seconds: float | None = None,
) -> ClipFeatures:
    """All three inputs of one clip, its audio as acoustic set `audio_features`. Without
    audio_len/vision_len a modality is padded to its own frame count (at least 1 row, so that a
    flagged clip still has a valid array); audio_len counts frames of the chosen set. A clip
    longer than `max_seconds` (as decoded, whatever the file states) raises DataError."""
    media = extract_media(video_path, audio_features, max_seconds)
    return _assemble(media, transcript, tokenizer, text_len, audio_len, vision_len)


def _assemble(media, transcript, tokenizer, text_len, audio_len, vision_len) -> ClipFeatures:
    audio, la = pad_frames(media.audio, audio_len or max(1, media.audio.shape[0]))
    vision, lv = pad_frames(media.vision, vision_len or max(1, media.vision.shape[0]))
    return ClipFeatures(
        text_bert=tokenize(tokenizer, [transcript], text_len)[0],
        audio=audio,
        vision=vision,
        audio_length=la,
        vision_length=lv,
        flags=dict(media.flags),
        audio_features=media.audio_features,
        vision_fps=media.vision_fps,
        raw_text=transcript,
    )


def flag_string(flags: dict[str, bool]) -> str:
    """The set flags as one comma-separated string ("" when none), as stored in feature files."""
    return ",".join(name for name in FLAGS if flags.get(name))


def extraction_metadata(audio_features: str) -> dict[str, str]:
    """The file's EXTRACTION_KEY entry: the acoustic set, which our loader reads and the run
    records (MMSA's loader reads only the splits)."""
    return {"audio_features": audio_features}


def empty_split(text_len: int, audio_len: int, vision_len: int, audio_dim: int) -> dict[str, np.ndarray]:
    return {
        "text_bert": np.zeros((0, 3, text_len), np.float32),
        "audio": np.zeros((0, audio_len, audio_dim), np.float32),
        "vision": np.zeros((0, vision_len, VISION_DIM), np.float32),
        "audio_lengths": np.zeros(0, np.int64),
        "vision_lengths": np.zeros(0, np.int64),
        "regression_labels": np.zeros(0, np.float32),
        "id": np.zeros(0, dtype="<U1"),
        "raw_text": np.zeros(0, dtype="<U1"),
        "extraction_flags": np.zeros(0, dtype="<U1"),
    }


def write_pickle(path: str | os.PathLike, data: dict) -> None:
    with atomic_writer(path, "wb") as handle:
        pickle.dump(data, handle, protocol=4)


def clip_split(clip: ClipFeatures, clip_id: str, label: float = 0.0) -> dict[str, np.ndarray]:
    """A one-row MMSA split holding `clip`."""
    return {
        "text_bert": clip.text_bert[None],
        "audio": clip.audio[None],
        "vision": clip.vision[None],
        "audio_lengths": np.array([clip.audio_length], np.int64),
        "vision_lengths": np.array([clip.vision_length], np.int64),
        "regression_labels": np.array([label], np.float32),
        "id": np.array([clip_id]),
        "raw_text": np.array([clip.raw_text]),
        "extraction_flags": np.array([flag_string(clip.flags)]),
    }


def write_clip(path: str | os.PathLike, clip: ClipFeatures, clip_id: str | None = None) -> None:
    """Write one clip as an MMSA feature file: the clip is the only row of "test" (label 0.0);
    "train" and "valid" have 0 rows of the same widths and lengths."""
    clip_id = clip_id or f"{Path(path).stem}$_$0"
    empty = empty_split(clip.text_bert.shape[1], clip.audio.shape[0], clip.vision.shape[0],
                        clip.audio.shape[1])
    data = {
        "train": empty,
        "valid": {k: v.copy() for k, v in empty.items()},
        "test": clip_split(clip, clip_id),
        EXTRACTION_KEY: extraction_metadata(clip.audio_features),
    }
    write_pickle(path, data)
