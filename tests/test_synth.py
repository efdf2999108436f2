"""The synthetic benchmark: layout, determinism, label grid, text that follows the label,
frames that carry their own modality's label, and learnability beyond text."""

from __future__ import annotations

import os
import pickle
from functools import cache

import numpy as np
import pytest

from selfmm.data.synth import PROFILES, SENTIMENT_WORDS, SPLITS, make_synthetic, write_synthetic
from selfmm.encoder import load_tokenizer
from selfmm.errors import ConfigError

os.environ["HF_HUB_OFFLINE"] = "1"

POSITIVE = {w for level in SENTIMENT_WORDS[4:] for w in level}
NEGATIVE = {w for level in SENTIMENT_WORDS[:3] for w in level}


@cache
def _data(profile: str, scale: float, seed: int = 0, aligned: bool = False) -> dict:
    return make_synthetic(profile, scale=scale, seed=seed, aligned=aligned)


def _clip_means(frames: np.ndarray, lengths) -> np.ndarray:
    """(N, D): the mean of each clip's valid frames, -inf read as 0 as the loader does."""
    lengths = np.asarray(lengths)
    total = np.nan_to_num(frames, neginf=0.0).sum(axis=1)
    return total / np.maximum(lengths, 1)[:, None]


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    x = np.c_[x, np.ones(len(x))]
    residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return 1.0 - residual.var() / y.var()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = pickle.dumps(make_synthetic("mosi", scale=0.02, seed=3), protocol=4)
    assert a == pickle.dumps(make_synthetic("mosi", scale=0.02, seed=3), protocol=4)
    other = make_synthetic("mosi", scale=0.02, seed=4)["train"]
    mine = pickle.loads(a)["train"]
    for key in ("audio", "vision", "regression_labels", "text_bert"):
        assert not np.array_equal(mine[key], other[key]), key
    write_synthetic(tmp_path / "one.pkl", "mosi", 0.02, 3)
    write_synthetic(tmp_path / "two.pkl", "mosi", 0.02, 3)
    assert (tmp_path / "one.pkl").read_bytes() == (tmp_path / "two.pkl").read_bytes()


def test_aligned_and_unaligned_share_labels_and_text():
    unaligned, aligned = _data("mosi", 0.02), _data("mosi", 0.02, aligned=True)
    for key in ("regression_labels", "regression_labels_A", "text_bert", "raw_text", "id"):
        np.testing.assert_array_equal(unaligned["test"][key], aligned["test"][key])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_layout_sizes_widths_lengths(profile, aligned):
    scale = 0.01 if profile == "mosei" else 0.03
    data = _data(profile, scale, aligned=aligned)
    prof = PROFILES[profile]
    assert list(data) == list(SPLITS)
    la, lv = (prof.text_len, prof.text_len) if aligned else (prof.audio_len, prof.vision_len)
    for name, size in zip(SPLITS, prof.sizes, strict=True):
        split = data[name]
        n = max(8, round(size * scale))
        assert split["text_bert"].shape == (n, 3, prof.text_len) and split["text_bert"].dtype == np.float32
        assert split["audio"].shape == (n, la, prof.audio_dim) and split["audio"].dtype == np.float32
        assert split["vision"].shape == (n, lv, prof.vision_dim) and split["vision"].dtype == np.float32
        for key in ("regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V"):
            assert split[key].shape == (n,) and split[key].dtype == np.float32
        for key in ("id", "raw_text", "annotations", "classification_labels"):
            assert len(split[key]) == n
        assert all("$_$" in i for i in split["id"])
        assert ("audio_lengths" in split) is (not aligned) and ("vision_lengths" in split) is (not aligned)
        mask = split["text_bert"][:, 1]
        ids = split["text_bert"][:, 0]
        assert (ids[:, 0] == 101).all()  # [CLS]
        assert (ids[np.arange(n), mask.sum(axis=1).astype(int) - 1] == 102).all()  # [SEP] ends the mask
        text_len = mask.sum(axis=1).astype(int)
        audio_lengths = text_len if aligned else np.asarray(split["audio_lengths"])
        vision_lengths = text_len if aligned else np.asarray(split["vision_lengths"])
        for frames, lengths, limit in ((split["audio"], audio_lengths, la), (split["vision"], vision_lengths, lv)):
            assert ((lengths >= 0) & (lengths <= limit)).all()
            steps = np.arange(frames.shape[1])
            assert (frames[steps[None, :] >= lengths[:, None]] == 0).all()  # padding is zeros
            assert (np.abs(frames[steps[None, :] < lengths[:, None]]).sum(axis=-1) > 0).all()
        if not aligned:
            assert audio_lengths[audio_lengths > 0].min() >= 0.3 * la
        assert not np.isinf(split["vision"]).any()


def test_few_zero_length_clips_and_neg_inf_audio():
    train = _data("mosei", 0.05)["train"]
    zero_audio = np.mean(np.asarray(train["audio_lengths"]) == 0)
    zero_vision = np.mean(np.asarray(train["vision_lengths"]) == 0)
    assert 0 < zero_audio < 0.03 and 0 < zero_vision < 0.03
    audio = train["audio"]
    assert np.isneginf(audio).any() and not np.isnan(audio).any() and not np.isposinf(audio).any()
    assert np.isneginf(audio).any(axis=(1, 2)).mean() < 0.1  # a handful of clips, as COVAREP


@pytest.mark.parametrize("profile,grid,top", [("mosi", 1 / 3, 3.0), ("sims", 0.2, 1.0)])
def test_labels_on_the_annotator_grid(profile, grid, top):
    split = _data(profile, 0.3)["train"]
    for key in ("regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V"):
        labels = split[key].astype(np.float64)
        assert labels.min() >= -top and labels.max() <= top
        np.testing.assert_allclose(labels / grid, np.round(labels / grid), atol=1e-5)
        assert len(np.unique(labels)) > 2 * top / grid * 0.6  # the grid is used, not just a few values
    zero = np.mean(split["regression_labels"] == 0)
    assert 0.02 < zero < 0.25
    np.testing.assert_array_equal(split["classification_labels"], np.sign(split["regression_labels"]) + 1)


def test_scale_changes_counts_only():
    data = make_synthetic("sims", scale=0.0001)
    assert [len(data[s]["regression_labels"]) for s in SPLITS] == [8, 8, 8]
    assert data["train"]["vision"].shape[1:] == (55, 709)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown synthetic profile 'iemocap'"):
        make_synthetic("iemocap")
    with pytest.raises(ConfigError, match="scale must be positive"):
        make_synthetic("mosi", scale=0)


def test_text_is_english_that_follows_the_text_label():
    split = _data("mosi", 0.3)["train"]
    tokenizer = load_tokenizer("minilm")
    texts = tokenizer.batch_decode(split["text_bert"][:, 0].astype(np.int64), skip_special_tokens=True)
    for raw, decoded in zip(split["raw_text"][:20], texts, strict=False):
        assert decoded == raw or raw.startswith(decoded)  # lower-case single-token words round-trip
    words = [set(t.replace(",", " ").split()) for t in texts]
    score = np.array([len(w & POSITIVE) - len(w & NEGATIVE) for w in words])
    text_label = split["regression_labels_T"]
    assert score[text_label >= 2].mean() > 1 and score[text_label <= -2].mean() < -1
    assert np.corrcoef(score, text_label)[0, 1] > 0.7
    vocabulary = set(tokenizer.get_vocab())
    assert all(w in vocabulary for w in POSITIVE | NEGATIVE)  # every graded word is one token


@pytest.mark.parametrize("modality,key", [("a", "audio"), ("v", "vision")])
def test_frames_carry_their_own_label(modality, key):
    split = _data("mosi", 0.3)["train"]
    means = _clip_means(split[key], split[f"{key}_lengths"])
    fit = {m: _r2(means, split[f"regression_labels_{m.upper()}"]) for m in "tav"}
    others = [fit[m] for m in "tav" if m != modality]
    assert fit[modality] > 0.5 and fit[modality] > max(others) + 0.2, fit


def test_all_modalities_beat_text_alone():
    """A linear model on word counts plus mean frames predicts the m-label better than words alone."""
    data = _data("mosi", 0.5)
    tokenizer = load_tokenizer("minilm")
    level_ids = [tokenizer.convert_tokens_to_ids(list(words)) for words in SENTIMENT_WORDS]

    def features(split):
        ids = split["text_bert"][:, 0]
        text = np.stack([np.isin(ids, level).sum(axis=1) for level in level_ids], axis=1)
        audio = _clip_means(split["audio"], split["audio_lengths"])
        vision = _clip_means(split["vision"], split["vision_lengths"])
        return np.c_[text, np.ones(len(ids))], np.c_[text, audio, vision, np.ones(len(ids))]

    train, test = features(data["train"]), features(data["test"])
    y, y_test = data["train"]["regression_labels"], data["test"]["regression_labels"]
    mae = [np.abs(test[i] @ np.linalg.lstsq(train[i], y, rcond=None)[0] - y_test).mean() for i in (0, 1)]
    assert mae[1] < 0.85 * mae[0], mae
