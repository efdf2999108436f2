"""Score clips with a trained run: videos (extracted on the fly), extracted files, MMSA splits.

Only the multimodal head is the model's answer (SPEC 1); the three unimodal heads are shown
beside it because they tell which modality pulled the score which way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets
from .checks import checked, instance, integer, number, one_of, optional, path, text
from .configuration import seed
from .data.layout import LEGACY_VISUAL_FEATURES, SPLITS, UNKNOWN_FEATURES
from .data.mmsa import load_features
from .data.types import Split
from .encoder import load_tokenizer
from .errors import SelfMMError
from .extract import (
    AUDIO_SETS,
    DEFAULT_AUDIO_FEATURES,
    VISUAL_SETS,
    AudioFeatureSet,
    VisualFeatureSet,
    audio_set,
    extract_clip,
    visual_set,
)
from .extract.clip import flag_string
from .extract.speech import SpeechSettings, speech_settings
from .inference import check_text, predict
from .io import check_file
from .model import SelfMM
from .results import format_table
from .runtime import device_name, resolve_device
from .trained import load_run

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
# Neutral band as a share of the label range's upper end: SIMS's 3-class edges are +-0.1 on
# its [-1, 1] scale (SPEC 6); the same share gives +-0.3 on MOSI/MOSEI's [-3, 3]. A divisor,
# not 0.1 *, so that the edge is exactly 0.3 (0.1 * 3.0 is 0.30000000000000004).
NEUTRAL_DIVISOR = 10
WIDTH_HINT = ("a checkpoint trained on benchmark features (COVAREP/Facet/OpenFace) needs "
              "benchmark-style features, and clips from `selfmm extract` need a run trained on a "
              "file made by `selfmm extract-dataset` with the same `audio_features` and `visual_features`")


@dataclass
class ClipScore:
    input: str
    split: str
    id: str
    score: float  # the multimodal head: the prediction
    sentiment: str  # negative / neutral / positive
    text: float
    audio: float
    vision: float
    flags: list[str] = field(default_factory=list)
    transcript: str = ""  # the clip's text: given, or recognised (see speech)
    # Where the text came from ("text_source": "given" or "asr") and, when speech recognition
    # ran, the model, its SHA-256 and the words with their times; {} when a file records none.
    speech: dict[str, Any] = field(default_factory=dict)


def neutral_band(dataset: str) -> float:
    return datasets.get(dataset).label_range[1] / NEUTRAL_DIVISOR


def sentiment_class(score: float, band: float) -> str:
    """Right-closed intervals like SIMS's classes: (-inf, -band], (-band, band], (band, inf)."""
    if score <= -band:
        return "negative"
    return "neutral" if score <= band else "positive"


def _split_of_clip(clip: Any, clip_id: str):
    """A one-row Split holding an extracted clip, without a round trip through a file."""
    return Split(
        name="video", text_bert=clip.text_bert[None], audio=clip.audio[None],
        vision=clip.vision[None], audio_lengths=np.array([clip.audio_length], np.int64),
        vision_lengths=np.array([clip.vision_length], np.int64),
        labels=np.zeros(1, np.float32), unimodal_labels={}, ids=[clip_id],
        raw_text=[clip.raw_text], flags=[flag_string(clip.flags)], speech=[clip.speech],
    )


def _file_kind(path: Path) -> str:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.suffix.lower() in (".pkl", ".pickle"):
        return "features"
    # Sniff: every pickle of protocol 2 or later starts with the PROTO opcode.
    with open(path, "rb") as handle:
        return "features" if handle.read(1) == b"\x80" else "video"


def parse_input(value: str) -> tuple[str, Path, str | None]:
    """(kind, path, split) of one INPUT: "video", or "features" (a pickle or a cache folder)
    with an optional FILE:SPLIT."""
    path = Path(value)
    split = None
    if not path.exists() and ":" in value:
        head, _, tail = value.rpartition(":")
        if tail in (*SPLITS, "all") and Path(head).exists():
            path, split = Path(head), tail
    if path.is_dir():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise SelfMMError(f"input {value} is a folder, not a video file")
        kind = "features"  # a `selfmm cache` folder; load_features says if it is not one
    else:
        check_file(path, "input", "video or feature file")
        kind = _file_kind(path)
    if kind == "video" and split is not None:
        raise SelfMMError(f"input {value}: a split applies to feature files, not to videos")
    return kind, path, split


class Predictor:
    """A trained run, loaded once, that scores splits, feature files and videos.

    Videos are extracted with the run's audio and visual feature sets (recorded at training).
    For a run that records no audio set (trained on benchmark files, or before selfmm recorded
    the set), `audio_features` names the set its training file was extracted with; for any other
    run it may only repeat the run's own set. Likewise `visual_features`; a run that records no
    visual set has its videos extracted with haar, the only set before the set was recorded.
    """

    @checked(run=path, seed=optional(seed), device=device_name, text_model=optional(text),
             audio_features=optional(one_of(*AUDIO_SETS)), visual_features=optional(one_of(*VISUAL_SETS)))
    def __init__(self, run: str | os.PathLike, *, seed: int | None = None, device: str = "auto",
                 text_model: str | None = None, audio_features: str | None = None,
                 visual_features: str | None = None) -> None:
        seed_run = load_run(run).select(seed)
        self.run = seed_run.path
        self.device = resolve_device(device)
        self.cfg = seed_run.config
        self.model = seed_run.model(self.device)
        spec = seed_run.spec
        self.audio_dim, self.vision_dim = spec.audio_dim, spec.vision_dim
        self.audio_features, self.visual_features = spec.audio_features, spec.visual_features
        for modality, asked, recorded in (("audio", audio_features, self.audio_features),
                                          ("visual", visual_features, self.visual_features)):
            if asked is None:
                continue
            (audio_set if modality == "audio" else visual_set)(asked)  # an unknown name: its own error
            if recorded not in (UNKNOWN_FEATURES, asked):
                raise SelfMMError(
                    f"{modality} features {asked} asked for, but the run {self.run} was trained "
                    f"on {recorded} {modality} features; its videos are extracted with "
                    f"{recorded} (leave `{modality}_features` out)")
        self.video_audio_features = audio_features or self.audio_features
        self.video_visual_features = visual_features or (
            LEGACY_VISUAL_FEATURES if self.visual_features == UNKNOWN_FEATURES else self.visual_features)
        self.band = neutral_band(self.cfg.dataset)
        self.text_model = text_model
        self._tokenizer = None
        # A run trained on aligned files scores videos extracted aligned, as its training data was.
        self.aligned = bool(spec.aligned)
        self.text_len = spec.text_len or 50
        # Speech recognition for videos without a transcript (and aligned runs): the packaged
        # tiny.en unless set, resolved on first use.
        self.speech: SpeechSettings | None = None

    @property
    def tokenizer(self):
        """The run's own tokenizer (saved in encoder/), or --text-model's when given."""
        if self._tokenizer is None:
            if self.text_model is not None:
                self._tokenizer = load_tokenizer(self.text_model)
            else:
                from transformers import AutoTokenizer  # heavy; only to tokenize transcripts

                folder = self.run / "encoder"
                # Checked first: given a model config alone, transformers builds an empty
                # tokenizer that maps every word to [UNK] instead of failing.
                saved = any((folder / name).exists() for name in TOKENIZER_FILES)
                try:
                    if not saved:
                        raise OSError
                    self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
                except (OSError, ValueError, TypeError):
                    raise SelfMMError(
                        f"the run {self.run} saved no tokenizer, so a transcript cannot be "
                        "tokenized; pass `text_model=NAME_OR_PATH` (the text model it was trained "
                        "with)") from None
        return self._tokenizer

    @checked(name=text, audio_dim=integer(0), vision_dim=integer(0))
    def check_widths(self, name: str, audio_dim: int, vision_dim: int) -> None:
        for modality, got, want in (("audio", audio_dim, self.audio_dim),
                                    ("vision", vision_dim, self.vision_dim)):
            if got != want:
                raise SelfMMError(f"{name}: {modality} features are {got} wide, but the run "
                                  f"{self.run} was trained on {want}-wide {modality} features; "
                                  + WIDTH_HINT)

    @checked(name=text, audio_features=text, audio_dim=integer(0), vision_dim=integer(0),
             visual_features=text)
    def check_features(self, name: str, audio_features: str, audio_dim: int, vision_dim: int,
                       visual_features: str = UNKNOWN_FEATURES) -> None:
        """Refuse features of another audio or visual set than the run's (when both sides
        record it) or of other widths."""
        for modality, got, want in (("audio", audio_features, self.audio_features),
                                    ("visual", visual_features, self.visual_features)):
            if UNKNOWN_FEATURES not in (got, want) and got != want:
                raise SelfMMError(f"{name}: {modality} features are {got}, but the run {self.run} "
                                  f"was trained on {want} {modality} features; extract the "
                                  f"clips again with `{modality}_features={want}`")
        self.check_widths(name, audio_dim, vision_dim)

    def _video_audio_set(self, name: str) -> AudioFeatureSet:
        """The acoustic set to extract a video with, once it is known to fit the run."""
        chosen = self.video_audio_features
        if chosen == UNKNOWN_FEATURES:
            fits = [s.name for s in AUDIO_SETS.values() if s.dim == self.audio_dim]
            # A run on benchmark widths: the width message says what is wrong.
            self.check_widths(name, AUDIO_SETS[fits[0] if fits else DEFAULT_AUDIO_FEATURES].dim,
                              self._video_visual_set(name).dim)
            choices = " or ".join(f"`audio_features={fit}`" for fit in fits)
            raise SelfMMError(
                f"{name}: the run {self.run} records no audio feature set (its training file "
                f"records none); its {self.audio_dim}-wide audio fits {choices}: pass it if "
                "that is how its training file was extracted "
                "(files from `selfmm extract-dataset` before it recorded the set are librosa)")
        if chosen not in AUDIO_SETS:
            raise SelfMMError(f"{name}: the run {self.run} was trained on {chosen} audio features, "
                              f"which this selfmm cannot extract (it knows {', '.join(AUDIO_SETS)})")
        acoustic = AUDIO_SETS[chosen]
        self.check_widths(name, acoustic.dim, self._video_visual_set(name).dim)
        return acoustic

    def _video_visual_set(self, name: str) -> VisualFeatureSet:
        chosen = self.video_visual_features
        if chosen not in VISUAL_SETS:
            raise SelfMMError(f"{name}: the run {self.run} was trained on {chosen} visual features, "
                              f"which this selfmm cannot extract (it knows {', '.join(VISUAL_SETS)})")
        return VISUAL_SETS[chosen]

    @checked(split=instance(Split, "a selfmm Split (one of FeatureData.splits)"), name=text)
    def score_split(self, split: Split, name: str) -> list[ClipScore]:
        if isinstance(self.model, SelfMM):
            check_text(split.text_bert, self.model.text_encoder.config, name)
        heads = predict(self.model, split, self.device, precision=self.cfg.train.precision).heads
        flags = split.flags or [""] * len(split)
        speech = split.speech or [{}] * len(split)
        return [
            ClipScore(input=name, split=split.name, id=clip, score=float(heads["m"][j]),
                      sentiment=sentiment_class(float(heads["m"][j]), self.band),
                      text=float(heads["t"][j]), audio=float(heads["a"][j]),
                      vision=float(heads["v"][j]), flags=[f for f in flags[j].split(",") if f],
                      transcript=split.raw_text[j], speech=speech[j])
            for j, clip in enumerate(split.ids)
        ]

    @checked(path=path, split=one_of(*SPLITS, "all"))
    def score_features(self, path: str | os.PathLike, split: str = "all") -> list[ClipScore]:
        """Every clip of `split` ("all": every non-empty split) of an MMSA feature file."""
        name = os.fspath(path)
        data = load_features(path)
        self.check_features(name, data.audio_features, data.audio_dim, data.vision_dim, data.visual_features)
        names = [s for s, part in data.splits.items() if len(part)] if split == "all" else [split]
        return [score for s in names for score in self.score_split(data.splits[s], name)]

    @checked(path=path, transcript=optional(text), max_seconds=optional(number(above=0)))
    def score_video(self, path: str | os.PathLike, transcript: str | None = None,
                    max_seconds: float | None = None) -> list[ClipScore]:
        """Extract one video's features (the `video` extra) with the run's audio and visual
        feature sets and score it; a video longer than `max_seconds`, as decoded, raises
        DataError. Without a transcript its words are recognised (the `asr` extra, with
        `self.speech`); a run trained on aligned files gets the video aligned."""
        name = os.fspath(path)
        # Before the costly extraction: a run on benchmark features cannot take these.
        acoustic = self._video_audio_set(name)
        visual = self._video_visual_set(name)
        if (transcript is None or self.aligned) and self.speech is None:
            self.speech = speech_settings()
        clip = extract_clip(path, transcript, self.tokenizer, audio_features=acoustic.name,
                            max_seconds=max_seconds, speech=self.speech, aligned=self.aligned,
                            text_len=self.text_len, visual_features=visual.name)
        return self.score_split(_split_of_clip(clip, f"{Path(path).stem}$_$0"), name)


def scores_table(scores: list[ClipScore], band: float) -> str:
    rows = [(s.id, f"{s.score:+.3f}", s.sentiment, f"{s.text:+.3f}", f"{s.audio:+.3f}",
             f"{s.vision:+.3f}", ",".join(s.flags)) for s in scores]
    table = format_table(("id", "score", "class", "text", "audio", "vision", "flags"), rows,
                         left=7, rule=False)
    return table + f"\n(class: neutral when -{band:g} < score <= {band:g})"
