"""One clip: text tokens, acoustic frames and visual frames, and its MMSA-style file."""

from __future__ import annotations

import json
import os
import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import checked, integer, optional
from ..data.layout import EXTRACTION_KEY
from ..errors import ArgumentError
from ..io import atomic_writer
from .align import align_words, frame_means, text_words, tokens_with_spans
from .audio import DEFAULT_AUDIO_FEATURES, acoustic_frames, audio_set
from .media import SAMPLE_RATE, check_dependencies, decode
from .mesh_faces import FaceTrack
from .speech import SpeechSettings, Transcript, speech_settings
from .visual import DEFAULT_VISUAL_FEATURES, VISION_FPS, VisualExtractor, visual_set

FLAGS = ("no_audio", "silent", "no_video", "no_face", "damaged", "no_speech", "asr_unsure", "several_faces",
         "dark")
# A clip is `dark` when its median frame's mean pixel value is below this (of 255).
DARK_LEVEL = 20.0
# Where a clip's text came from, as its speech record says: typed in, or speech recognition.
GIVEN, RECOGNISED = "given", "asr"
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
    vision_times: np.ndarray | None = None  # (Lv,) seconds: the time of each visual frame
    seconds: float = 0.0  # how long the clip is (the longer stream, as decoded)
    speech: Transcript | None = None  # the recognised words, when speech recognition ran
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
    aligned: bool = False  # MMSA's aligned layout: one audio and vision step per text token
    # Where the text came from and the recognised words (see speech_record); stored per clip.
    speech: dict[str, Any] = field(default_factory=lambda: {"text_source": GIVEN})
    visual_features: str = DEFAULT_VISUAL_FEATURES
    faces: FaceTrack | None = None

    @property
    def audio_fps(self) -> float:
        return audio_set(self.audio_features).fps


def extract_media(video_path: str | os.PathLike, audio_features: str = DEFAULT_AUDIO_FEATURES,
                  max_seconds: float | None = None, *,
                  speech: SpeechSettings | None = None,
                  visual_features: str = DEFAULT_VISUAL_FEATURES) -> MediaFeatures:
    """Decode `video_path` and compute its acoustic frames (set `audio_features`) and
    visual frames (set `visual_features`), and with `speech` its recognised words; a clip
    longer than `max_seconds`, as decoded, raises DataError.

    A file without an audio stream, with silent audio, without a video stream or without a
    detectable face gives zero frames of that modality and sets the matching flag. A file that
    cannot be opened raises DataError.
    """
    acoustic = audio_set(audio_features)
    visual = visual_set(visual_features)
    check_dependencies((acoustic.module, acoustic.package), (visual.module, visual.package))
    recogniser = speech.recogniser() if speech is not None else None  # loaded before decoding
    faces = VisualExtractor(visual.name)  # loads (and checks) the face models before decoding
    # The mesh sets track faces while the file decodes, so their frames are never all in memory.
    decoded = decode(video_path, VISION_FPS, max_seconds, frame_format=visual.frame_format,
                     frame_width=visual.frame_width, on_frame=lambda image, _: faces.add(image))
    flags = dict.fromkeys(FLAGS, False)
    flags["damaged"] = decoded.damaged
    flags["no_audio"] = decoded.audio is None or decoded.audio.size == 0
    flags["no_video"] = not decoded.has_video or not decoded.times
    flags["dark"] = bool(decoded.brightness) and float(np.median(decoded.brightness)) < DARK_LEVEL
    samples = decoded.audio if decoded.audio is not None else np.zeros(0, np.float32)
    if recogniser is not None:
        recogniser.check_length(samples, os.fspath(video_path))  # before the long part
    stop_words = threading.Event()
    with ThreadPoolExecutor(2) as pool, _set_on_error(stop_words):
        # openSMILE (through ctypes), OpenCV and CTranslate2 release the GIL, so the acoustic
        # frames and the words are computed while the haar set's faces are detected (the mesh
        # sets tracked theirs while the file decoded).
        acoustic_job = (None if flags["no_audio"]
                        else pool.submit(acoustic_frames, decoded.audio, acoustic.name))
        words_job = (None if recogniser is None
                     else pool.submit(recogniser.transcribe, samples, os.fspath(video_path), stop_words))
        found = faces.finish()
        vision = found.rows if not flags["no_video"] else np.zeros((0, visual.dim), np.float32)
        if acoustic_job is None:
            audio = np.zeros((0, acoustic.dim), np.float32)
        else:
            audio, flags["silent"] = acoustic_job.result()
        transcript = None if words_job is None else words_job.result()
    flags["no_face"] = vision.shape[0] == 0
    flags["several_faces"] = found.several_faces
    if transcript is not None:
        flags["no_speech"], flags["asr_unsure"] = transcript.no_speech, transcript.unsure
    return MediaFeatures(audio=audio, vision=vision, flags=flags, audio_features=acoustic.name,
                         vision_times=np.array([decoded.times[i] for i in found.kept], np.float64),
                         seconds=max(decoded.decoded_seconds, samples.size / SAMPLE_RATE),
                         speech=transcript, visual_features=visual.name, faces=found.track)


@contextmanager
def _set_on_error(event: threading.Event) -> Iterator[None]:
    """Set `event` when the block fails (Ctrl-C included), before the pool waits for its jobs:
    speech recognition then stops after the window it is in instead of finishing the clip."""
    try:
        yield
    except BaseException:
        event.set()
        raise


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
    transcript: str | None,
    tokenizer,
    *,
    text_len: int = 50,
    audio_len: int | None = None,
    vision_len: int | None = None,
    audio_features: str = DEFAULT_AUDIO_FEATURES,
    max_seconds: float | None = None,
    speech: SpeechSettings | None = None,
    aligned: bool = False,
    visual_features: str = DEFAULT_VISUAL_FEATURES,
) -> ClipFeatures:
    """All three inputs of one clip, its audio as acoustic set `audio_features` and its faces
    as visual set `visual_features`. Without
    audio_len/vision_len a modality is padded to its own frame count (at least 1 row, so that a
    flagged clip still has a valid array); audio_len counts frames of the chosen set. A clip
    longer than `max_seconds` (as decoded, whatever the file states) raises DataError.

    `transcript` None: the words are recognised (the `asr` extra) with `speech` (default: the
    packaged tiny.en). `aligned`: MMSA's aligned layout, each token's audio and vision the
    mean of its word's frames (align.py); the words are timed by speech recognition, so it
    runs on a clip with a transcript too (audio_len and vision_len do not apply).
    """
    check_not_aligned(aligned, audio_len=audio_len, vision_len=vision_len)
    if transcript is None or aligned:
        speech = speech or speech_settings()
    else:
        speech = None  # the words are given and need no times
    media = extract_media(video_path, audio_features, max_seconds, speech=speech, visual_features=visual_features)
    if aligned:
        return assemble_aligned(media, transcript, tokenizer, text_len)
    return _assemble(media, transcript, tokenizer, text_len, audio_len, vision_len)


def check_not_aligned(aligned: bool, **lengths: int | None) -> None:
    """Refuse frame counts given for aligned output, whose every modality has text_len steps."""
    given = [name for name, value in lengths.items() if value is not None]
    if aligned and given:
        raise ArgumentError(f"`{given[0]}`: frame counts do not apply to `aligned=True` output (one step "
                            "per text token for every modality)")


def speech_record(transcript: str | None, recognised: Transcript | None) -> dict[str, Any]:
    """A clip's speech record: where its text came from (GIVEN or RECOGNISED) and, when speech
    recognition ran, the model, its SHA-256 and the recognised words (Transcript.record)."""
    record: dict[str, Any] = {"text_source": GIVEN if transcript is not None else RECOGNISED}
    if recognised is not None:
        record.update(recognised.record())
    return record


def _text(media: MediaFeatures, transcript: str | None) -> str:
    if transcript is not None:
        return transcript
    if media.speech is None:
        raise ValueError("no transcript and no recognised words")
    return media.speech.text


def _assemble(media, transcript, tokenizer, text_len, audio_len, vision_len) -> ClipFeatures:
    text = _text(media, transcript)
    audio, la = pad_frames(media.audio, audio_len or max(1, media.audio.shape[0]))
    vision, lv = pad_frames(media.vision, vision_len or max(1, media.vision.shape[0]))
    return ClipFeatures(
        text_bert=tokenize(tokenizer, [text], text_len)[0],
        audio=audio,
        vision=vision,
        audio_length=la,
        vision_length=lv,
        flags=dict(media.flags),
        audio_features=media.audio_features,
        vision_fps=media.vision_fps,
        raw_text=text,
        speech=speech_record(transcript, media.speech),
        visual_features=media.visual_features,
        faces=media.faces,
    )


def aligned_arrays(media: MediaFeatures, text: str, tokenizer,
                   text_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """text_bert (3, Lt), audio (Lt, Da), vision (Lt, Dv) with one step per token, and the
    words' spans as stored (align.py)."""
    words = media.speech.words if media.speech is not None else []
    spans = align_words([w for w, _, _ in text_words(text)], words, media.seconds)
    text_bert, token_spans = tokens_with_spans(tokenizer, text, spans, text_len)
    audio_times = np.arange(media.audio.shape[0]) / media.audio_fps
    vision_times = (media.vision_times if media.vision_times is not None
                    else np.arange(media.vision.shape[0]) / media.vision_fps)
    return (text_bert, frame_means(media.audio, audio_times, token_spans),
            frame_means(media.vision, vision_times, token_spans), [s.record() for s in spans])


def assemble_aligned(media: MediaFeatures, transcript: str | None, tokenizer, text_len: int) -> ClipFeatures:
    text = _text(media, transcript)
    text_bert, audio, vision, spans = aligned_arrays(media, text, tokenizer, text_len)
    length = int(text_bert[1].sum())
    return ClipFeatures(
        text_bert=text_bert, audio=audio, vision=vision, audio_length=length, vision_length=length,
        flags=dict(media.flags), audio_features=media.audio_features, vision_fps=media.vision_fps,
        raw_text=text, aligned=True,
        speech={**speech_record(transcript, media.speech), "aligned": spans},
        visual_features=media.visual_features, faces=media.faces,
    )


def speech_json(record: dict[str, Any]) -> str:
    """The speech record as stored in a file's per-clip `speech` strings."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def flag_string(flags: dict[str, bool]) -> str:
    """The set flags as one comma-separated string ("" when none), as stored in feature files."""
    return ",".join(name for name in FLAGS if flags.get(name))


def extraction_metadata(audio_features: str, visual_features: str) -> dict[str, str]:
    """The file's EXTRACTION_KEY entry: the acoustic and visual sets, which our loader reads and
    the run records (MMSA's loader reads only the splits)."""
    return {"audio_features": audio_features, "visual_features": visual_features}


def empty_split(text_len: int, audio_len: int, vision_len: int, audio_dim: int, vision_dim: int,
                aligned: bool = False) -> dict[str, np.ndarray]:
    """A 0-row split; aligned: no length keys (MMSA's aligned files have none)."""
    split = {
        "text_bert": np.zeros((0, 3, text_len), np.float32),
        "audio": np.zeros((0, audio_len, audio_dim), np.float32),
        "vision": np.zeros((0, vision_len, vision_dim), np.float32),
        "audio_lengths": np.zeros(0, np.int64),
        "vision_lengths": np.zeros(0, np.int64),
        "regression_labels": np.zeros(0, np.float32),
        "id": np.zeros(0, dtype="<U1"),
        "raw_text": np.zeros(0, dtype="<U1"),
        "extraction_flags": np.zeros(0, dtype="<U1"),
        "speech": np.zeros(0, dtype="<U1"),
    }
    if aligned:
        del split["audio_lengths"], split["vision_lengths"]
    return split


def write_pickle(path: str | os.PathLike, data: dict) -> None:
    with atomic_writer(path, "wb") as handle:
        pickle.dump(data, handle, protocol=4)


def clip_split(clip: ClipFeatures, clip_id: str, label: float = 0.0) -> dict[str, np.ndarray]:
    """A one-row MMSA split holding `clip`."""
    split = {
        "text_bert": clip.text_bert[None],
        "audio": clip.audio[None],
        "vision": clip.vision[None],
        "audio_lengths": np.array([clip.audio_length], np.int64),
        "vision_lengths": np.array([clip.vision_length], np.int64),
        "regression_labels": np.array([label], np.float32),
        "id": np.array([clip_id]),
        "raw_text": np.array([clip.raw_text]),
        "extraction_flags": np.array([flag_string(clip.flags)]),
        "speech": np.array([speech_json(clip.speech)]),
    }
    if clip.aligned:  # the text mask gives every modality's length
        del split["audio_lengths"], split["vision_lengths"]
    return split


def write_clip(path: str | os.PathLike, clip: ClipFeatures, clip_id: str | None = None) -> None:
    """Write one clip as an MMSA feature file: the clip is the only row of "test" (label 0.0);
    "train" and "valid" have 0 rows of the same widths and lengths."""
    clip_id = clip_id or f"{Path(path).stem}$_$0"
    empty = empty_split(clip.text_bert.shape[1], clip.audio.shape[0], clip.vision.shape[0],
                        clip.audio.shape[1], clip.vision.shape[1], clip.aligned)
    data = {
        "train": empty,
        "valid": {k: v.copy() for k, v in empty.items()},
        "test": clip_split(clip, clip_id),
        EXTRACTION_KEY: extraction_metadata(clip.audio_features, clip.visual_features),
    }
    write_pickle(path, data)
