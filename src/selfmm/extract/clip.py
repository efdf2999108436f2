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
from .mesh_faces import FaceTrack
from .visual import DEFAULT_VISUAL_FEATURES, VISION_FPS, VisualExtractor, visual_set

FLAGS = ("no_audio", "silent", "no_video", "no_face", "damaged", "several_faces", "dark")
# A clip is `dark` when its median frame's mean pixel value is below this (of 255).
DARK_LEVEL = 20.0
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
    vision: np.ndarray  # (Lv, Dv) float32, Dv the width of the visual feature set
    flags: dict[str, bool]
    audio_features: str = DEFAULT_AUDIO_FEATURES  # the acoustic set's name
    vision_fps: float = VISION_FPS
    visual_features: str = DEFAULT_VISUAL_FEATURES  # the visual set's name
    faces: FaceTrack | None = None  # the mesh sets' tracked faces per sampled frame (overlay)

    @property
    def audio_fps(self) -> float:
        return audio_set(self.audio_features).fps


@dataclass
class ClipFeatures:
    text_bert: np.ndarray  # (3, Lt) float32: input ids, attention mask, token type ids
    audio: np.ndarray  # (La, Da) float32, zero rows past audio_length
    vision: np.ndarray  # (Lv, Dv) float32, zero rows past vision_length
    audio_length: int
    vision_length: int
    flags: dict[str, bool] = field(default_factory=dict)
    audio_features: str = DEFAULT_AUDIO_FEATURES
    vision_fps: float = VISION_FPS
    raw_text: str = ""
    visual_features: str = DEFAULT_VISUAL_FEATURES
    faces: FaceTrack | None = None

    @property
    def audio_fps(self) -> float:
        return audio_set(self.audio_features).fps


def extract_media(video_path: str | os.PathLike, audio_features: str = DEFAULT_AUDIO_FEATURES,
                  visual_features: str = DEFAULT_VISUAL_FEATURES,
                  max_seconds: float | None = None) -> MediaFeatures:
    """Decode `video_path` and compute its acoustic frames (set `audio_features`) and
    visual frames (set `visual_features`); a clip longer than `max_seconds`, as decoded,
    raises DataError.

    A file without an audio stream, with silent audio, without a video stream or without a
    detectable face gives zero frames of that modality and sets the matching flag. A file that
    cannot be opened raises DataError.
    """
    acoustic = audio_set(audio_features)
    visual = visual_set(visual_features)
    check_dependencies((acoustic.module, acoustic.package), (visual.module, visual.package))
    faces = VisualExtractor(visual.name)  # loads (and checks) the face models before decoding
    # The mesh sets track faces while the file decodes, so their frames are never all in memory.
    decoded = decode(video_path, VISION_FPS, max_seconds, frame_format=visual.frame_format,
                     frame_width=visual.frame_width, on_frame=lambda image, _: faces.add(image))
    flags = dict.fromkeys(FLAGS, False)
    flags["damaged"] = decoded.damaged
    flags["no_audio"] = decoded.audio is None or decoded.audio.size == 0
    flags["no_video"] = not decoded.has_video or not decoded.times
    flags["dark"] = bool(decoded.brightness) and float(np.median(decoded.brightness)) < DARK_LEVEL
    with ThreadPoolExecutor(1) as pool:
        # openSMILE (through ctypes) and OpenCV release the GIL, so the acoustic frames are
        # computed while the haar set's faces are detected: on a free core they add no time.
        acoustic_job = (None if flags["no_audio"]
                        else pool.submit(acoustic_frames, decoded.audio, acoustic.name))
        found = faces.finish()
        vision = found.rows if not flags["no_video"] else np.zeros((0, visual.dim), np.float32)
        if acoustic_job is None:
            audio = np.zeros((0, acoustic.dim), np.float32)
        else:
            audio, flags["silent"] = acoustic_job.result()
    flags["no_face"] = vision.shape[0] == 0
    flags["several_faces"] = found.several_faces
    return MediaFeatures(audio=audio, vision=vision, flags=flags, audio_features=acoustic.name,
                         visual_features=visual.name, faces=found.track)


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
    visual_features: str = DEFAULT_VISUAL_FEATURES,
    max_seconds: float | None = None,
) -> ClipFeatures:
    """All three inputs of one clip, its audio as acoustic set `audio_features` and its faces
    as visual set `visual_features`. Without audio_len/vision_len a modality is padded to its
    own frame count (at least 1 row, so that a flagged clip still has a valid array); audio_len
    counts frames of the chosen acoustic set. A clip longer than `max_seconds` (as decoded,
    whatever the file states) raises DataError."""
    media = extract_media(video_path, audio_features, visual_features, max_seconds)
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
        visual_features=media.visual_features,
        faces=media.faces,
    )


def flag_string(flags: dict[str, bool]) -> str:
    """The set flags as one comma-separated string ("" when none), as stored in feature files."""
    return ",".join(name for name in FLAGS if flags.get(name))


def extraction_metadata(audio_features: str, visual_features: str) -> dict[str, str]:
    """The file's EXTRACTION_KEY entry: the acoustic and visual sets, which our loader reads and
    the run records (MMSA's loader reads only the splits)."""
    return {"audio_features": audio_features, "visual_features": visual_features}


def empty_split(text_len: int, audio_len: int, vision_len: int, audio_dim: int,
                vision_dim: int) -> dict[str, np.ndarray]:
    return {
        "text_bert": np.zeros((0, 3, text_len), np.float32),
        "audio": np.zeros((0, audio_len, audio_dim), np.float32),
        "vision": np.zeros((0, vision_len, vision_dim), np.float32),
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
                        clip.audio.shape[1], clip.vision.shape[1])
    data = {
        "train": empty,
        "valid": {k: v.copy() for k, v in empty.items()},
        "test": clip_split(clip, clip_id),
        EXTRACTION_KEY: extraction_metadata(clip.audio_features, clip.visual_features),
    }
    write_pickle(path, data)
