"""A synthetic benchmark in the exact MMSA layout, with hidden unimodal ground truth.

Each clip draws a latent sentiment per modality (correlated, each with its own component).
Text is English sentences whose wording follows the text label; audio and vision frames carry
their own modality's label along a fixed direction plus noise. The m-label mixes the three,
so a model that uses all modalities can beat text alone. docs/synthetic.md gives the design.
"""

from __future__ import annotations

import os
import pickle
from functools import lru_cache
from typing import Any

import numpy as np

from .. import datasets
from ..configuration import check_seeds
from ..datasets import Column, SyntheticProfile
from ..encoder import load_tokenizer
from ..errors import ConfigError
from ..io import atomic_writer
from .layout import SPLITS

# The sizes and shapes of each dataset's real file (SPEC section 2), from selfmm.datasets.
PROFILES = Column(lambda dataset: dataset.synthetic)  # profile name -> its shapes

# The m-label mix of the hidden unimodal labels; text heaviest, as in the real data.
MIX = {"t": 0.5, "a": 0.25, "v": 0.25}
# Correlation of each modality's latent with the clip's shared sentiment; the rest is the
# modality's own component, which only that modality reveals.
SHARED = 0.6
ANNOTATOR_NOISE = 0.5  # std of one annotator's score around the true value, in score units
SIGNAL_GAIN = 1.5  # frame signal along the modality direction for a label at the range's edge
SPEAKER_NOISE = 0.3  # per-clip constant offset, a nuisance that no label explains
SIGNAL_CHANNELS = 8  # the label lives in a few channels, like a few facial action units
ZERO_LENGTH_RATE = 0.01  # real unaligned files have a few clips without audio or video frames
NEG_INF_RATE = 0.05  # share of clips with a few -inf audio values, as COVAREP writes
ROWS_PER_CHUNK = 512  # bounds the temporary noise arrays of the big MOSEI profile
# MOSEI at scale 1 is ~4.6 GB in memory and on disk; 10 times that is the most we will build.
MAX_SCALE = 10.0

# Single-token words of graded strength, index 0 = strongly negative ... 6 = strongly positive.
SENTIMENT_WORDS: tuple[tuple[str, ...], ...] = (
    ("terrible", "awful", "horrible", "dreadful", "disgusting", "pathetic"),
    ("bad", "poor", "disappointing", "boring", "annoying"),
    ("weak", "dull", "bland", "uneven", "messy"),
    ("ordinary", "typical", "standard", "plain", "average", "usual"),
    ("decent", "nice", "pleasant", "fine", "solid"),
    ("good", "enjoyable", "fun", "charming", "great"),
    ("excellent", "amazing", "wonderful", "fantastic", "brilliant", "superb", "outstanding"),
)
INTENSIFIERS = {1: ("kind of", "a bit", "somewhat", ""), 2: ("really", "very", "pretty", ""),
                3: ("really", "so", "just", "")}
NOUNS = ("movie", "acting", "plot", "story", "ending", "soundtrack", "characters", "dialogue", "cast", "film",
         "script", "music")
TEMPLATES = (
    "i thought the {noun} was {adj}",
    "the {noun} was {adj}",
    "honestly the {noun} is {adj}",
    "i found the {noun} {adj}",
    "the {noun} felt {adj} to me",
    "and the {noun} was {adj} too",
    "to be honest the {noun} was {adj}",
)
FILLERS = (
    "we watched it last weekend",
    "my friend recommended it",
    "it was about two hours long",
    "i saw it in the theater",
    "um so yeah",
    "you know",
    "i went with my family",
    "it came out a few years ago",
    "i watched it at home",
    "there was a lot going on",
)


def make_synthetic(profile: str, *, scale: float = 1.0, seed: int = 0,
                   aligned: bool = False) -> dict[str, dict[str, Any]]:
    """The feature-file dict {"train", "valid", "test"} of a profile; deterministic from `seed`.

    `scale` multiplies the clip counts only (at least 8 per split); shapes stay those of the
    real files. Aligned files have La = Lv = Lt and no length keys.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
    if not 0 < scale <= MAX_SCALE:
        raise ConfigError(f"synthetic scale must be positive and at most {MAX_SCALE:g}, got {scale}")
    check_seeds([seed], "`seed`")
    prof, label_max = PROFILES[profile], datasets.get(profile).label_range[1]
    # Directions are shared by all splits: they are the "physics" a model must learn.
    rng = np.random.Generator(np.random.SFC64([seed, 0]))
    directions = {"a": _direction(rng, prof.audio_dim), "v": _direction(rng, prof.vision_dim)}
    return {
        split: _make_split(prof, label_max, split, index, max(8, round(size * scale)), seed, aligned, directions)
        for index, (split, size) in enumerate(zip(SPLITS, prof.sizes, strict=True), start=1)
    }


def write_synthetic(
    path: str | os.PathLike, profile: str, scale: float = 1.0, seed: int = 0, aligned: bool = False
) -> None:
    """Write `make_synthetic(...)` as a feature file, atomically."""
    data = make_synthetic(profile, scale=scale, seed=seed, aligned=aligned)
    with atomic_writer(path, "wb") as handle:
        # Protocol 4, as the real MMSA files: arrays come back writable on load.
        pickle.dump(data, handle, protocol=4)


def _direction(rng: np.random.Generator, dim: int) -> np.ndarray:
    channels = rng.choice(dim, size=min(dim, SIGNAL_CHANNELS), replace=False)
    out = np.zeros(dim, np.float32)
    out[channels] = rng.choice([-1.0, 1.0], size=channels.size) / np.sqrt(channels.size)
    return out


def _annotate(rng: np.random.Generator, values: np.ndarray, prof: SyntheticProfile, label_max: float) -> np.ndarray:
    """Mean of integer annotator scores around `values`: a multiple of step / annotators."""
    step = label_max / prof.score_max
    scores = np.rint(values[:, None] / step + rng.normal(0.0, ANNOTATOR_NOISE, (values.size, prof.annotators)))
    scores = np.clip(scores, -prof.score_max, prof.score_max)
    # The integer sum times the grid, so labels are exact multiples whatever float rounding does.
    return (scores.sum(axis=1) * (step / prof.annotators)).astype(np.float32)


def _sentences(rng: np.random.Generator, text_labels: np.ndarray) -> list[str]:
    """One utterance per clip: 1-2 sentiment clauses graded by the text label, 0-2 fillers."""
    out = []
    for label in text_labels:
        clauses = []
        for _ in range(rng.integers(1, 3)):
            level = int(np.clip(np.rint(3 * label + rng.normal(0.0, 0.6)), -3, 3))
            adj = str(rng.choice(SENTIMENT_WORDS[level + 3]))
            if level:
                intensifier = str(rng.choice(INTENSIFIERS[abs(level)]))
                adj = f"{intensifier} {adj}".strip()
            clauses.append(str(rng.choice(TEMPLATES)).format(noun=rng.choice(NOUNS), adj=adj))
        clauses += [str(rng.choice(FILLERS)) for _ in range(rng.integers(0, 3))]
        order = rng.permutation(len(clauses))
        out.append(", ".join(clauses[i] for i in order))
    return out


@lru_cache(maxsize=1)
def _tokenizer():
    return load_tokenizer("minilm")


def _frames(
    rng: np.random.Generator, labels: np.ndarray, lengths: np.ndarray, max_len: int, direction: np.ndarray
) -> np.ndarray:
    """(N, L, D) float32: label * direction * a slow temporal envelope + speaker offset + noise."""
    n, dim = labels.size, direction.size
    out = np.zeros((n, max_len, dim), np.float32)
    steps = np.arange(max_len, dtype=np.float32)
    for start in range(0, n, ROWS_PER_CHUNK):
        rows = slice(start, min(n, start + ROWS_PER_CHUNK))
        c = rows.stop - rows.start
        period = rng.uniform(10.0, 60.0, (c, 1)).astype(np.float32)
        phase = rng.uniform(0.0, 2 * np.pi, (c, 1)).astype(np.float32)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * steps / period + phase)  # (c, L)
        valid = steps < lengths[rows, None]  # (c, L); padding frames stay exactly 0
        signal = (SIGNAL_GAIN * labels[rows, None] * envelope)[valid]  # (F,)
        offset = rng.normal(0.0, SPEAKER_NOISE, (c, dim)).astype(np.float32)
        # Work on valid frames only: drawing Gaussians is most of the generation time.
        frames = rng.standard_normal((signal.size, dim), dtype=np.float32)  # (F, D)
        # Valid frames come row by row, so each clip's offset repeats over its frames.
        frames += np.repeat(offset, lengths[rows], axis=0)
        frames += signal[:, None] * direction
        out[rows][valid] = frames
    return out


def _labels(rng: np.random.Generator, n: int, prof: SyntheticProfile, label_max: float
            ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(latent unimodal labels in [-1, 1], annotated m-labels, annotated t/a/v labels): the
    latent labels are a shared sentiment plus each modality's own part."""
    shared = rng.standard_normal(n)
    latent = {
        m: np.tanh(SHARED * shared + np.sqrt(1 - SHARED**2) * rng.standard_normal(n)) for m in MIX
    }
    mixed = sum(MIX[m] * latent[m] for m in MIX)
    m_label = _annotate(rng, label_max * mixed, prof, label_max)
    unimodal = {m: _annotate(rng, label_max * latent[m], prof, label_max) for m in MIX}
    return latent, m_label, unimodal


def _add_negative_infinities(rng: np.random.Generator, audio: np.ndarray, lengths: np.ndarray) -> None:
    """A few -inf values inside valid audio frames of a few clips, as COVAREP writes, which the
    loader must repair."""
    n, _, dim = audio.shape
    for row in np.flatnonzero((rng.random(n) < NEG_INF_RATE) & (lengths > 0)):
        hits = rng.integers(1, 4)
        frames, columns = rng.integers(0, lengths[row], hits), rng.integers(0, dim, hits)
        audio[row, frames, columns] = -np.inf


def _make_split(
    prof: SyntheticProfile,
    label_max: float,  # labels lie in [-label_max, label_max]
    split: str,
    index: int,
    n: int,
    seed: int,
    aligned: bool,
    directions: dict[str, np.ndarray],
) -> dict[str, Any]:
    # One stream per part, so aligned and unaligned files share labels and text.
    # SFC64 draws Gaussians about twice as fast as the default PCG64, which matters for MOSEI.
    labels_rng, text_rng, lengths_rng, audio_rng, vision_rng = (
        np.random.Generator(np.random.SFC64([seed, index, part])) for part in range(5)
    )

    latent, m_label, unimodal = _labels(labels_rng, n, prof, label_max)
    sentences = _sentences(text_rng, latent["t"])
    enc = _tokenizer()(
        sentences, padding="max_length", truncation=True, max_length=prof.text_len, return_tensors="np"
    )
    text_bert = np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], axis=1).astype(np.float32)

    if aligned:
        # Aligned frames follow the words: every modality is as long as the token sequence.
        audio_len = vision_len = prof.text_len
        audio_lengths = vision_lengths = enc["attention_mask"].sum(axis=1)
    else:
        audio_len, vision_len = prof.audio_len, prof.vision_len
        audio_lengths = _lengths(lengths_rng, n, audio_len)
        vision_lengths = _lengths(lengths_rng, n, vision_len)

    audio = _frames(audio_rng, latent["a"].astype(np.float32), audio_lengths, audio_len, directions["a"])
    vision = _frames(vision_rng, latent["v"].astype(np.float32), vision_lengths, vision_len, directions["v"])
    _add_negative_infinities(audio_rng, audio, audio_lengths)

    sign = np.sign(m_label).astype(np.int64)
    data: dict[str, Any] = {
        "raw_text": np.array(sentences, dtype=object),
        "id": np.array([f"{split}{i // 6:05d}$_${i % 6}" for i in range(n)], dtype=object),
        "text_bert": text_bert,
        "audio": audio,
        "vision": vision,
        "annotations": np.array(["Negative", "Neutral", "Positive"], dtype=object)[sign + 1],
        "classification_labels": (sign + 1).astype(np.float32),
        "regression_labels": m_label,
        "regression_labels_T": unimodal["t"],
        "regression_labels_A": unimodal["a"],
        "regression_labels_V": unimodal["v"],
    }
    if not aligned:
        # Real unaligned files store plain lists of ints here.
        data["audio_lengths"] = audio_lengths.tolist()
        data["vision_lengths"] = vision_lengths.tolist()
    return data


def _lengths(rng: np.random.Generator, n: int, max_len: int) -> np.ndarray:
    lengths = rng.integers(int(np.ceil(0.3 * max_len)), max_len + 1, n)
    lengths[rng.random(n) < ZERO_LENGTH_RATE] = 0
    return lengths
