"""The librosa acoustic set (`--audio-features librosa`): 34 values every 20 ms (50 frames per second)."""

from __future__ import annotations

import numpy as np

from .media import SAMPLE_RATE

HOP = 320  # samples at 16 kHz = 20 ms, so LIBROSA_FPS = 50
WIN = 400  # 25 ms analysis window
N_FFT = 512
N_MFCC = 13
N_MELS = 40
F0_MIN, F0_MAX = 65.0, 500.0  # Hz, the search range of yin (speech)
SILENCE_DB = -60.0  # a clip whose loudest frame is below this (dBFS) counts as silent
VOICED_DB = -50.0  # f0 is reported as 0 in frames quieter than this
LIBROSA_FPS = SAMPLE_RATE / HOP

LIBROSA_FEATURES: tuple[str, ...] = (
    *(f"mfcc_{i}" for i in range(N_MFCC)),
    *(f"mfcc_delta_{i}" for i in range(N_MFCC)),
    "f0_khz",
    "rms",
    "loudness_db",
    "zcr",
    "spectral_centroid_khz",
    "spectral_bandwidth_khz",
    "spectral_rolloff_khz",
    "spectral_flatness",
)
LIBROSA_DIM = len(LIBROSA_FEATURES)  # 34


def loudness_db(rms: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def librosa_features(samples: np.ndarray) -> tuple[np.ndarray, bool]:
    """(T, LIBROSA_DIM) float32 frames of mono 16 kHz `samples`, and whether the clip is silent.

    A silent clip (every frame below SILENCE_DB) gives zero frames, so that the model sees
    "no audio" instead of 50 frames per second of noise floor.
    """
    import librosa

    y = np.asarray(samples, dtype=np.float32)
    if y.size < WIN:
        return np.zeros((0, LIBROSA_DIM), np.float32), True
    spec = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, win_length=WIN, center=True))
    rms = librosa.feature.rms(S=spec, frame_length=N_FFT, hop_length=HOP)[0]
    db = loudness_db(rms)
    if db.max() < SILENCE_DB:
        return np.zeros((0, LIBROSA_DIM), np.float32), True
    mel = librosa.feature.melspectrogram(S=spec**2, sr=SAMPLE_RATE, n_mels=N_MELS)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    t = mfcc.shape[1]
    width = min(9, t if t % 2 else t - 1)
    delta = (
        librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
    )
    f0 = librosa.yin(
        y, fmin=F0_MIN, fmax=F0_MAX, sr=SAMPLE_RATE, frame_length=1024, hop_length=HOP,
        center=True,
    )
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=WIN, hop_length=HOP, center=True)[0]
    centroid = librosa.feature.spectral_centroid(S=spec, sr=SAMPLE_RATE)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=spec, sr=SAMPLE_RATE)[0]
    rolloff = librosa.feature.spectral_rolloff(S=spec, sr=SAMPLE_RATE)[0]
    flatness = librosa.feature.spectral_flatness(S=spec)[0]
    n = min(t, f0.shape[0], zcr.shape[0])
    f0 = np.where(db[:n] < VOICED_DB, 0.0, f0[:n])
    rows = [
        mfcc[:, :n],
        delta[:, :n],
        f0[None] / 1000.0,
        rms[None, :n],
        db[None, :n],
        zcr[None, :n],
        centroid[None, :n] / 1000.0,
        bandwidth[None, :n] / 1000.0,
        rolloff[None, :n] / 1000.0,
        flatness[None, :n],
    ]
    feats = np.concatenate(rows, axis=0).T.astype(np.float32)  # (T, LIBROSA_DIM)
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0), False
