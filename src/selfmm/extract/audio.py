"""Acoustic frames: one of three feature sets, chosen by name (`--audio-features`).

- `egemaps` (default): openSMILE's eGeMAPSv02 low-level descriptors, 25 values every 10 ms, the
  field's standard set (Eyben et al., 2016), also offered by MMSA-FET.
- `compare`: openSMILE's ComParE_2016 low-level descriptors, 65 values every 10 ms.
- `librosa`: selfmm's own set, 34 values every 20 ms (the only set before egemaps).

A model needs clips extracted with the set it was trained on; the set is recorded in the
feature file and in the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SelfMMError
from .librosa_audio import LIBROSA_FEATURES, LIBROSA_FPS, librosa_features
from .opensmile_audio import COMPARE_COLUMNS, EGEMAPS_COLUMNS, SMILE_FPS, smile_features

DEFAULT_AUDIO_FEATURES = "egemaps"


@dataclass(frozen=True)
class AudioFeatureSet:
    name: str
    columns: tuple[str, ...]
    fps: float  # frames per second
    module: str  # what computes it: the import name and pip package
    package: str

    @property
    def dim(self) -> int:
        return len(self.columns)


AUDIO_SETS: dict[str, AudioFeatureSet] = {
    s.name: s for s in (
        AudioFeatureSet("egemaps", EGEMAPS_COLUMNS, SMILE_FPS, "opensmile", "opensmile"),
        AudioFeatureSet("compare", COMPARE_COLUMNS, SMILE_FPS, "opensmile", "opensmile"),
        AudioFeatureSet("librosa", LIBROSA_FEATURES, LIBROSA_FPS, "librosa", "librosa"),
    )
}


def audio_set(name: str) -> AudioFeatureSet:
    """The feature set called `name`; SelfMMError for any other name."""
    try:
        return AUDIO_SETS[name]
    except KeyError:
        raise SelfMMError(f"unknown audio feature set {name!r}; choose one of "
                          f"{', '.join(AUDIO_SETS)}") from None


def acoustic_frames(samples: np.ndarray, name: str = DEFAULT_AUDIO_FEATURES) -> tuple[np.ndarray, bool]:
    """(T, dim) float32 frames of set `name` for mono 16 kHz `samples`, and whether it is silent.

    A silent clip gives zero frames, so that the model sees "no audio" instead of a noise floor.
    """
    audio_set(name)
    if name == "librosa":
        return librosa_features(samples)
    return smile_features(samples, name)
