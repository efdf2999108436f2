"""The data's types: what a feature file becomes (FeatureData of Splits) and what a model is
told of it (DataSpec). Plain containers; loading and checking them is selfmm.data.mmsa's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import LEGACY_VISUAL_FEATURES, UNKNOWN_FEATURES


@dataclass
class Split:
    name: str
    text_bert: np.ndarray  # (N, 3, Lt): ids, attention mask, token types; dtype as stored
    audio: np.ndarray  # (N, La, Da)
    vision: np.ndarray  # (N, Lv, Dv)
    audio_lengths: np.ndarray  # (N,) int64
    vision_lengths: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) float32, the m-label
    unimodal_labels: dict[str, np.ndarray]  # "t"/"a"/"v" -> (N,) float32, or {} when absent
    ids: list[str]
    raw_text: list[str]
    # Per clip, the comma-joined flags of files made by `selfmm extract` ("" when none or absent).
    flags: list[str] = field(default_factory=list)
    # Per clip, files made by `selfmm extract` record where the text came from and the
    # recognised words (docs/extraction.md); {} when absent.
    speech: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data to be built: widths and lengths. A run records it,
    so the model can be rebuilt without the data (unknown values of imported runs are None)."""

    audio_dim: int
    vision_dim: int
    text_len: int | None = None
    audio_len: int | None = None
    vision_len: int | None = None
    aligned: bool | None = None
    train_size: int | None = None
    audio_features: str = UNKNOWN_FEATURES  # the acoustic feature set (egemaps, ...), if known
    visual_features: str = UNKNOWN_FEATURES  # the visual feature set (mesh, haar, ...), if known

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DataSpec:
        spec = cls(**{f.name: obj[f.name] for f in dataclasses.fields(cls) if obj.get(f.name) is not None})
        if "visual_features" not in obj and spec.audio_features != UNKNOWN_FEATURES:
            # Trained on a selfmm file from before the visual set was recorded: haar faces.
            spec = dataclasses.replace(spec, visual_features=LEGACY_VISUAL_FEATURES)
        return spec


@dataclass
class FeatureData:
    path: str
    splits: dict[str, Split]
    aligned: bool
    audio_dim: int
    vision_dim: int
    text_len: int
    audio_len: int
    vision_len: int
    repairs: list[str] = field(default_factory=list)
    # The files each modality's override came from (text_file/audio_file/vision_file -> path).
    overrides: dict[str, str] = field(default_factory=dict)
    # The acoustic feature set named in the file (egemaps, compare, librosa), or UNKNOWN_FEATURES.
    audio_features: str = UNKNOWN_FEATURES
    # The visual feature set (mesh, mesh-raw, haar; haar for a selfmm file that names none), or
    # UNKNOWN_FEATURES for a file without selfmm's extraction entry (benchmark files).
    visual_features: str = UNKNOWN_FEATURES

    @property
    def spec(self) -> DataSpec:
        return DataSpec(self.audio_dim, self.vision_dim, self.text_len, self.audio_len,
                        self.vision_len, self.aligned, len(self.splits["train"]), self.audio_features,
                        self.visual_features)

