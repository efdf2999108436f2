"""openSMILE's low-level descriptors: eGeMAPSv02 (25 values) or ComParE_2016 (65), every 10 ms.

The `opensmile` wheel bundles the openSMILE library and its configuration files, so nothing is
downloaded. It is imported on first use: the rest of selfmm works without it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import SelfMMError
from .librosa_audio import SILENCE_DB
from .media import SAMPLE_RATE

SMILE_FPS = 100.0  # openSMILE's low-level descriptors come every 10 ms
# The longest analysis window of both sets (pitch, 60 ms): shorter audio gives no frame, and
# openSMILE then returns one row of NaN.
MIN_SAMPLES = int(0.060 * SAMPLE_RATE)
GATE_WIN, GATE_HOP = 400, 160  # 25 ms windows every 10 ms for the silence gate
# openSMILE takes 16-bit samples and converts by truncation: 1.0 would wrap to -32768.
INT16_TOP = 32767 / 32768

# openSMILE's own names and order (Eyben et al., 2016, Table 1 for eGeMAPS).
EGEMAPS_COLUMNS: tuple[str, ...] = (
    "Loudness_sma3", "alphaRatio_sma3", "hammarbergIndex_sma3", "slope0-500_sma3",
    "slope500-1500_sma3", "spectralFlux_sma3",
    *(f"mfcc{i}_sma3" for i in range(1, 5)),
    "F0semitoneFrom27.5Hz_sma3nz", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz",
    "HNRdBACF_sma3nz", "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz",
    *(f"F{k}{what}_sma3nz" for k in (1, 2, 3)
      for what in ("frequency", "bandwidth", "amplitudeLogRelF0")),
)
COMPARE_COLUMNS: tuple[str, ...] = (
    "F0final_sma", "voicingFinalUnclipped_sma", "jitterLocal_sma", "jitterDDP_sma",
    "shimmerLocal_sma", "logHNR_sma", "audspec_lengthL1norm_sma", "audspecRasta_lengthL1norm_sma",
    "pcm_RMSenergy_sma", "pcm_zcr_sma",
    *(f"audSpec_Rfilt_sma[{i}]" for i in range(26)),
    "pcm_fftMag_fband250-650_sma", "pcm_fftMag_fband1000-4000_sma",
    *(f"pcm_fftMag_spectralRollOff{p}_sma" for p in ("25.0", "50.0", "75.0", "90.0")),
    *(f"pcm_fftMag_{name}_sma" for name in (
        "spectralFlux", "spectralCentroid", "spectralEntropy", "spectralVariance",
        "spectralSkewness", "spectralKurtosis", "spectralSlope", "psySharpness",
        "spectralHarmonicity")),
    *(f"mfcc_sma[{i}]" for i in range(1, 15)),
)
# selfmm's set name -> (openSMILE's FeatureSet member, its columns)
SMILE_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "egemaps": ("eGeMAPSv02", EGEMAPS_COLUMNS),
    "compare": ("ComParE_2016", COMPARE_COLUMNS),
}

_smiles: dict[str, Any] = {}
_lock = threading.Lock()


def smile(name: str) -> Any:
    """The process's `opensmile.Smile` for set `name`, made on first use (about 1 s with the import)."""
    with _lock:
        if name not in _smiles:
            import opensmile

            member, columns = SMILE_SETS[name]
            made = opensmile.Smile(feature_set=opensmile.FeatureSet[member],
                                   feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
            if tuple(made.feature_names) != columns:
                raise SelfMMError(
                    f"opensmile {opensmile.__version__} gives other {member} columns than selfmm "
                    f"expects ({len(made.feature_names)} instead of {len(columns)}, or renamed); "
                    "install the opensmile version of the `video` extra")
            _smiles[name] = made
        return _smiles[name]


def peak_db(samples: np.ndarray) -> float:
    """The loudest 25 ms window's RMS in dBFS (windows every 10 ms)."""
    power = np.lib.stride_tricks.sliding_window_view(samples.astype(np.float64) ** 2, GATE_WIN)
    rms = np.sqrt(power[::GATE_HOP].mean(axis=1).max())
    return float(20.0 * np.log10(max(rms, 1e-5)))


def smile_features(samples: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """(T, D) float32 low-level descriptors of mono 16 kHz `samples`, and whether it is silent.

    The frames are openSMILE's `Smile.process_signal` values, in its column order. Silent audio
    (every window below SILENCE_DB) and audio under MIN_SAMPLES give zero frames.
    """
    columns = SMILE_SETS[name][1]
    y = np.asarray(samples, dtype=np.float32)
    if y.size < MIN_SAMPLES or peak_db(y) < SILENCE_DB:
        return np.zeros((0, len(columns)), np.float32), True
    y = np.clip(y, -1.0, INT16_TOP)
    frames = smile(name)(y, SAMPLE_RATE)[0].T  # Smile gives (channels, features, frames)
    # openSMILE's log-domain values were finite on every signal we tried; `predict` hands the
    # frames to the model without the loader's repair, so a NaN must not get through.
    return np.nan_to_num(np.ascontiguousarray(frames, np.float32), nan=0.0, posinf=0.0, neginf=0.0), False
