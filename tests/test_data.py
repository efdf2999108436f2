"""The MMSA loader: every profile, overrides, each validation error, repair, no copies, safety."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from selfmm.data.mmsa import SPLITS, _build_split, load_features
from selfmm.data.summary import summarize
from selfmm.data.synth import PROFILES
from selfmm.data.unpickle import safe_load
from selfmm.errors import DataError

os.environ["HF_HUB_OFFLINE"] = "1"


def _tiny(n: int = 6, *, aligned: bool = False, lt: int = 12, la: int = 20, lv: int = 15) -> dict:
    """A hand-built split dict, small enough to corrupt key by key."""
    rng = np.random.default_rng(n)
    la, lv = (lt, lt) if aligned else (la, lv)
    text = np.zeros((n, 3, lt))
    text[:, 0, :5] = 101
    text[:, 1, :5] = 1
    split = {
        "text_bert": text,
        "audio": rng.standard_normal((n, la, 5)).astype(np.float32),
        "vision": rng.standard_normal((n, lv, 7)).astype(np.float32),
        "regression_labels": np.linspace(-3, 3, n).astype(np.float32),
    }
    if not aligned:
        split["audio_lengths"] = [la] * n
        split["vision_lengths"] = np.full(n, lv)
    return split


def _left_padded_text() -> np.ndarray:
    text = _tiny()["text_bert"].copy()
    text[4, :2] = np.roll(text[4, :2], 7, axis=1)  # clip 4's ids and mask moved to the end
    return text


def _write(path: Path, data: object) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=4)
    return path


def _file(tmp_path: Path, name: str = "mosi.pkl", **changes) -> Path:
    """A tiny file whose split `valid` gets `changes` (a value of None deletes the key)."""
    data = {split: _tiny() for split in SPLITS}
    for key, value in changes.items():
        if value is None:
            del data["valid"][key]
        else:
            data["valid"][key] = value
    return _write(tmp_path / name, data)


def _load_quiet(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_features(path, **kwargs)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_loads_every_profile(synth_path, profile, aligned):
    scale = 0.01 if profile == "mosei" else 0.03
    data = _load_quiet(synth_path(profile, scale=scale, aligned=aligned))
    prof = PROFILES[profile]
    assert data.aligned is aligned
    assert (data.audio_dim, data.vision_dim, data.text_len) == (prof.audio_dim, prof.vision_dim, prof.text_len)
    expected = (prof.text_len, prof.text_len) if aligned else (prof.audio_len, prof.vision_len)
    assert (data.audio_len, data.vision_len) == expected
    for name, size in zip(SPLITS, prof.sizes, strict=True):
        split = data.splits[name]
        assert split.name == name and len(split) == max(8, round(size * scale))
        assert split.text_bert.shape == (len(split), 3, prof.text_len)
        assert split.audio_lengths.dtype == np.int64 and split.vision_lengths.dtype == np.int64
        assert split.labels.dtype == np.float32
        assert set(split.unimodal_labels) == {"t", "a", "v"}
        assert all("$_$" in i for i in split.ids) and all(split.raw_text)
        assert np.isfinite(split.audio).all()
        if aligned:
            np.testing.assert_array_equal(split.audio_lengths, split.text_bert[:, 1].sum(axis=1))
    assert any("non-finite" in line for line in data.repairs)
    report = summarize(data)
    assert "train:" in report and "non-finite values set to 0" in report


def test_minimal_file_defaults(tmp_path):
    data = load_features(_file(tmp_path))
    split = data.splits["valid"]
    assert split.ids[:2] == ["valid-0", "valid-1"] and split.raw_text == [""] * 6
    assert split.unimodal_labels == {} and data.repairs == []
    assert "no repairs" in summarize(data) and "absent" in summarize(data)


def test_labels_shaped_n_by_1_are_squeezed(tmp_path):
    labels = np.zeros((6, 1), np.float32)
    assert load_features(_file(tmp_path, regression_labels=labels)).splits["valid"].labels.shape == (6,)


def test_override_files_replace_their_modality(tmp_path):
    main = _file(tmp_path)
    rng = np.random.default_rng(1)
    audio = {s: {"audio": rng.standard_normal((6, 30, 9)).astype(np.float32), "audio_lengths": [3] * 6} for s in SPLITS}
    vision = {s: {"vision": np.ones((6, 15, 4), np.float32)} for s in SPLITS}
    text = {s: {"text_bert": np.ones((6, 3, 8)), "raw_text": np.array(["hello"] * 6, dtype=object)} for s in SPLITS}
    data = load_features(
        main,
        audio_file=_write(tmp_path / "a.pkl", audio),
        vision_file=_write(tmp_path / "v.pkl", vision),
        text_file=_write(tmp_path / "t.pkl", text),
    )
    assert (data.audio_dim, data.audio_len, data.vision_dim, data.text_len) == (9, 30, 4, 8)
    split = data.splits["test"]
    np.testing.assert_array_equal(split.audio, audio["test"]["audio"])
    assert split.audio_lengths.tolist() == [3] * 6
    assert split.vision_lengths.tolist() == [15] * 6  # kept from the main file
    assert split.raw_text == ["hello"] * 6


def test_audio_feature_set_is_read_and_follows_the_audio(tmp_path):
    from selfmm.data.cache import write_cache

    assert load_features(_file(tmp_path)).audio_features == "unknown"  # benchmark files
    layout = {split: _tiny() for split in SPLITS} | {"extraction": {"audio_features": "egemaps"}}
    tagged = _write(tmp_path / "tagged.pkl", layout)
    data = load_features(tagged)
    assert data.audio_features == "egemaps" and data.audio_dim == 5
    assert "audio 20 x 5 (egemaps)," in summarize(data)
    # An audio override brings its own set (or none); other overrides keep the main file's.
    assert load_features(tagged, audio_file=_file(tmp_path, "a.pkl")).audio_features == "unknown"
    assert load_features(_file(tmp_path), audio_file=tagged).audio_features == "egemaps"
    assert load_features(tagged, vision_file=_file(tmp_path, "v.pkl")).audio_features == "egemaps"
    cache = write_cache(data, tmp_path / "tagged.cache")
    assert load_features(cache).audio_features == "egemaps"
    plain = load_features(_file(tmp_path))
    assert load_features(write_cache(plain, tmp_path / "plain.cache")).audio_features == "unknown"


def test_visual_feature_set_is_read_and_follows_the_vision(tmp_path):
    """Recorded beside the audio set; a selfmm file that records only its audio set predates
    the visual sets and is haar; a file without the entry (benchmark files) is unknown."""
    from selfmm.data.cache import write_cache

    assert load_features(_file(tmp_path)).visual_features == "unknown"
    meta = {"audio_features": "egemaps", "visual_features": "mesh"}
    tagged = _write(tmp_path / "tagged.pkl", {split: _tiny() for split in SPLITS} | {"extraction": meta})
    data = load_features(tagged)
    assert (data.audio_features, data.visual_features) == ("egemaps", "mesh")
    assert "vision 15 x 7 (mesh)" in summarize(data) and data.spec.visual_features == "mesh"
    old = _write(tmp_path / "old.pkl", {split: _tiny() for split in SPLITS}
                 | {"extraction": {"audio_features": "egemaps"}})
    assert load_features(old).visual_features == "haar"
    only = _write(tmp_path / "only.pkl", {split: _tiny() for split in SPLITS}
                  | {"extraction": {"visual_features": "mesh-raw"}})
    assert (load_features(only).audio_features, load_features(only).visual_features) == ("unknown", "mesh-raw")
    # A vision override brings its own set (or none); other overrides keep the main file's.
    assert load_features(tagged, vision_file=_file(tmp_path, "v.pkl")).visual_features == "unknown"
    assert load_features(_file(tmp_path), vision_file=tagged).visual_features == "mesh"
    assert load_features(tagged, audio_file=_file(tmp_path, "a.pkl")).visual_features == "mesh"
    for name, source in (("tagged", tagged), ("only", only), ("old", old)):
        cached = load_features(write_cache(load_features(source), tmp_path / f"{name}.cache"))
        assert (cached.audio_features, cached.visual_features) == (load_features(source).audio_features,
                                                                   load_features(source).visual_features)


@pytest.mark.parametrize("meta", ["egemaps", {"audio_features": 3}, {"audio_features": " "}, {}])
def test_malformed_audio_feature_set(tmp_path, meta):
    path = _write(tmp_path / "bad.pkl", {split: _tiny() for split in SPLITS} | {"extraction": meta})
    with pytest.raises(DataError, match=r"bad\.pkl: key 'extraction' must be a dict whose 'audio_features'"):
        load_features(path)


def test_override_missing_its_key(tmp_path):
    bad = _write(tmp_path / "a.pkl", {s: {"vision": np.ones((6, 15, 4))} for s in SPLITS})
    with pytest.raises(DataError, match=r"a\.pkl: split 'train': missing key 'audio'"):
        load_features(_file(tmp_path), audio_file=bad)


def test_override_lengths_checked_against_override_frames(tmp_path):
    audio = {s: {"audio": np.ones((6, 4, 5), np.float32)} for s in SPLITS}
    with pytest.raises(DataError) as err:
        load_features(_file(tmp_path), audio_file=_write(tmp_path / "a.pkl", audio))
    msg = str(err.value)
    assert "mosi.pkl" in msg and "'train'" in msg and "'audio_lengths'" in msg and "20" in msg and "[0, 4]" in msg


# --- validation errors: each names file, split, key and the offending value ---------------

BAD_CASES = {
    "missing key": ({"audio": None}, ["missing key 'audio'"]),
    "rows disagree": (
        {"audio": np.zeros((5, 20, 5), np.float32)},
        ["key 'audio' has 5 rows but 'regression_labels' has 6"],
    ),
    "text rank": ({"text_bert": np.zeros((6, 12))}, ["'text_bert'", "(6, 12)"]),
    "text not 3 rows": ({"text_bert": np.zeros((6, 2, 12))}, ["'text_bert'", "(6, 2, 12)"]),
    "audio rank": ({"audio": np.zeros((6, 20), np.float32)}, ["'audio'", "(6, 20)"]),
    "vision rank": ({"vision": np.zeros((6, 15, 7, 1), np.float32)}, ["'vision'", "(6, 15, 7, 1)"]),
    "labels rank": ({"regression_labels": np.zeros((6, 2), np.float32)}, ["'regression_labels'", "(6, 2)"]),
    "width across splits": ({"vision": np.zeros((6, 15, 8), np.float32)}, ["'vision'", "width 8", "7"]),
    "length too long": ({"audio_lengths": [20, 20, 21, 20, 20, 20]}, ["'audio_lengths'", "row 2", "21", "[0, 20]"]),
    "length negative": ({"vision_lengths": np.array([1, -1, 1, 1, 1, 1])}, ["'vision_lengths'", "row 1", "-1"]),
    "length fractional": ({"audio_lengths": [1.0, 2.5, 3, 3, 3, 3]}, ["'audio_lengths'", "row 1", "2.5"]),
    "length rows": ({"audio_lengths": [1, 2]}, ["'audio_lengths' has 2 rows"]),
    "only one length key": ({"vision_lengths": None}, ["'audio_lengths'", "'vision_lengths'"]),
    "nan label": (
        {"regression_labels": np.array([0, 0, 0, np.nan, 0, 0], np.float32)},
        ["'regression_labels'", "row 3", "nan"],
    ),
    "inf unimodal label": (
        {
            "regression_labels_T": np.zeros(6),
            "regression_labels_A": np.array([0, np.inf, 0, 0, 0, 0]),
            "regression_labels_V": np.zeros(6),
        },
        ["'regression_labels_A'", "row 1", "inf"],
    ),
    "partial unimodal": ({"regression_labels_T": np.zeros(6)}, ["regression_labels_A"]),
    "id rows": ({"id": np.array(["a", "b"])}, ["key 'id' has 2 rows"]),
    # Padding first would drop real tokens: batches keep each text's first mask-sum positions.
    "left-padded text mask": ({"text_bert": _left_padded_text()},
                              ["key 'text_bert' row 4", "not right-padded", "0 at position 6, 1 at 7"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validation_errors_name_file_split_key_value(tmp_path, case):
    changes, fragments = BAD_CASES[case]
    with pytest.raises(DataError) as err:
        load_features(_file(tmp_path, **changes))
    msg = str(err.value)
    assert "mosi.pkl" in msg and "split 'valid'" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_unaligned_without_lengths(tmp_path):
    with pytest.raises(DataError, match=r"split 'valid'.*Lt=12, audio La=20, vision Lv=15"):
        load_features(_file(tmp_path, audio_lengths=None, vision_lengths=None))


def test_label_range(tmp_path):
    path = _file(tmp_path, regression_labels=np.array([0, 0.5, -3.5, 0, 0, 0], np.float32))
    with pytest.raises(DataError) as err:
        load_features(path, "mosi")
    msg = str(err.value)
    assert all(s in msg for s in ("mosi.pkl", "split 'valid'", "'regression_labels'", "row 2", "-3.5", "[-3, 3]"))
    assert len(load_features(path).splits["valid"]) == 6  # no dataset, no range


def test_missing_split(tmp_path):
    path = _write(tmp_path / "x.pkl", {"train": _tiny(), "test": _tiny()})
    with pytest.raises(DataError, match=r"x\.pkl: missing split 'valid'"):
        load_features(path)


def test_split_not_a_dict(tmp_path):
    path = _write(tmp_path / "x.pkl", {"train": _tiny(), "valid": [1, 2], "test": _tiny()})
    with pytest.raises(DataError, match=r"x\.pkl: split 'valid' is list"):
        load_features(path)


def test_non_dict_top_level(tmp_path):
    path = _write(tmp_path / "x.pkl", [np.zeros(3)])
    with pytest.raises(DataError, match=r"x\.pkl: top level is list"):
        load_features(path)


def test_truncated_and_garbage_files(tmp_path):
    whole = pickle.dumps({s: _tiny() for s in SPLITS}, protocol=4)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.pkl: truncated"):
        load_features(cut)
    for end in (1, 7, len(whole) // 3, len(whole) - 1):  # wherever the file stops
        cut.write_bytes(whole[:end])
        with pytest.raises(DataError, match=r"cut\.pkl: "):
            load_features(cut)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match=r"garbage\.pkl: not a readable pickle"):
        load_features(garbage)
    with pytest.raises(DataError, match=r"absent\.pkl does not exist"):
        load_features(tmp_path / "absent.pkl")


# --- repair, copies, safety --------------------------------------------------------------


def test_nonfinite_frames_set_to_zero_with_one_warning(tmp_path):
    data = {split: _tiny() for split in SPLITS}
    data["train"]["audio"][0, 0, :3] = [-np.inf, np.nan, np.inf]
    data["test"]["vision"][1, 2, 0] = np.nan
    path = _write(tmp_path / "f.pkl", data)
    with pytest.warns(UserWarning) as record:
        loaded = load_features(path)
    assert len(record) == 1 and "f.pkl: 4 non-finite" in str(record[0].message)
    assert loaded.repairs == ["train/audio: 3 non-finite values set to 0", "test/vision: 1 non-finite values set to 0"]
    assert (loaded.splits["train"].audio[0, 0, :3] == 0).all() and loaded.splits["test"].vision[1, 2, 0] == 0


def test_build_split_copies_nothing_already_in_the_right_dtype(tmp_path):
    raw = _tiny()
    raw["audio"][0, 0, 0] = -np.inf  # repaired in place, still no copy
    raw["regression_labels_T"] = raw["regression_labels_A"] = raw["regression_labels_V"] = np.zeros(6, np.float32)
    split, repaired = _build_split(raw, "train", "f.pkl")
    assert repaired == {"audio": 1, "vision": 0}
    for ours, theirs in [
        (split.text_bert, raw["text_bert"]),
        (split.audio, raw["audio"]),
        (split.vision, raw["vision"]),
        (split.labels, raw["regression_labels"]),
        (split.unimodal_labels["t"], raw["regression_labels_T"]),
    ]:
        assert np.shares_memory(ours, theirs)
    assert raw["audio"][0, 0, 0] == 0
    column = np.zeros((6, 1), np.float32)
    assert np.shares_memory(_build_split({**raw, "regression_labels": column}, "t", "f")[0].labels, column)


def test_loaded_arrays_are_the_unpickled_ones(tmp_path, synth_path):
    """Through load_features: float32 arrays from a protocol-4 file are kept, not cast."""
    path = synth_path("mosi", scale=0.03)
    raw = safe_load(path)["train"]
    split, _ = _build_split(raw, "train", str(path))
    assert np.shares_memory(split.audio, raw["audio"]) and np.shares_memory(split.labels, raw["regression_labels"])


def test_read_only_arrays_are_copied_before_repair():
    raw = _tiny()
    raw["vision"][0, 0, 0] = np.nan
    raw["vision"].flags.writeable = False
    split, repaired = _build_split(raw, "train", "f.pkl")
    assert repaired["vision"] == 1 and split.vision[0, 0, 0] == 0 and np.isnan(raw["vision"][0, 0, 0])


def test_other_dtypes_are_converted():
    raw = _tiny()
    raw["audio"] = raw["audio"].astype(np.float16)
    raw["regression_labels"] = np.arange(6)
    split, _ = _build_split(raw, "train", "f.pkl")
    assert split.audio.dtype == np.float32 and split.labels.dtype == np.float32


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_load_reads_every_numpy_array_kind(tmp_path, protocol):
    arrays = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.linspace(0, 1, 4),
        "i64": np.arange(5),
        "obj": np.array(["a$_$1", "b$_$2"], dtype=object),
        "uni": np.array(["hello", "hi"]),
        "scalar": np.float32(2.5),
        "plain": [1, 2.0, "x", b"y", (3,), {"k": None, "t": True}],
        "strided": np.arange(10)[::2],
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    loaded = safe_load(path)
    for key, value in arrays.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == value.dtype
        else:
            assert loaded[key] == value


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.open", "builtins.eval"])
def test_safe_load_refuses_code_before_it_runs(tmp_path, kind):
    target = tmp_path / "pwned"
    payload = {
        "os.system": _Payload(os.system, (f"touch {target}",)),
        "builtins.open": _Payload(open, (str(target), "w")),
        "builtins.eval": _Payload(eval, (f"open({str(target)!r}, 'w')",)),
    }[kind]
    data = {split: _tiny() for split in SPLITS}
    data["train"]["id"] = payload
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(DataError) as err:
        load_features(path)
    msg = str(err.value)
    assert "evil.pkl" in msg and "refusing" in msg
    assert kind.split(".")[1] in msg  # names the refused global (os.system may pickle as posix.system)
    assert not target.exists()
