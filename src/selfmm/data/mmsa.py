"""MMSA feature files: validation, light repair and loading with overrides (SPEC section 2).

A feature file is a pickle of `{"train": S, "valid": S, "test": S}` where each split S is a
dict of arrays with one row per clip. The whole file is unpickled once (selfmm.data.unpickle
admits numpy arrays and plain containers only), arrays are kept as they come whenever their
dtype already fits (MOSEI holds several GB), and every problem is reported naming the file,
the split, the key and the offending shape or value. The result is a FeatureData
(selfmm.data.types).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import datasets
from ..checks import Wrong, checked, optional, path
from ..errors import DataError, warn
from ..io import check_file
from .cache import read_cache
from .layout import (
    EXTRACTION_KEY,
    LEGACY_VISUAL_FEATURES,
    LENGTH_KEYS,
    REQUIRED_KEYS,
    SPLITS,
    UNIMODAL_KEYS,
    UNKNOWN_FEATURES,
)
from .types import FeatureData, Split
from .unpickle import safe_load

# --- the layout of a file -------------------------------------------------------------------


def _load_layout(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """One unpickling of a file holding {"train": dict, "valid": dict, "test": dict}."""
    source = os.fspath(path)
    data = safe_load(source)
    if not isinstance(data, dict):
        raise DataError(
            f"{source}: top level is {type(data).__name__}, expected a dict with keys {list(SPLITS)}"
        )
    for split in SPLITS:
        if split not in data:
            raise DataError(f"{source}: missing split {split!r} (found {sorted(map(str, data))})")
        if not isinstance(data[split], dict):
            raise DataError(
                f"{source}: split {split!r} is {type(data[split]).__name__}, expected a dict of arrays"
            )
    return data


# --- validation of one split -------------------------------------------------------------


def _array(value: Any, where: str, key: str, dtype: Any = None) -> np.ndarray:
    """np.asarray, with ragged or unconvertible contents reported as a DataError."""
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DataError(f"{where}: key {key!r} is not an array: {type(exc).__name__}: {exc}") from None


def _as_float_features(value: Any, where: str, key: str) -> np.ndarray:
    arr = _array(value, where, key)
    if arr.ndim != 3:
        raise DataError(f"{where}: key {key!r} must be 3-d (N, L, D), got shape {arr.shape}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"{where}: key {key!r} has shape {arr.shape}: needs at least one frame and one feature")
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{where}: key {key!r} has non-numeric dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    return arr


def _as_labels(value: Any, where: str, key: str, label_range: tuple[float, float] | None) -> np.ndarray:
    arr = _array(value, where, key)
    # MMSA stores (N,), some exported files (N, 1); reshape of a contiguous array is a view.
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(f"{where}: key {key!r} must be 1-d (N,), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{where}: key {key!r} has non-numeric dtype {arr.dtype}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise DataError(f"{where}: key {key!r} row {bad[0]} is {arr[bad[0]]} (non-finite label)")
    if label_range is not None:
        lo, hi = label_range
        bad = np.flatnonzero((arr < lo) | (arr > hi))
        if bad.size:
            raise DataError(
                f"{where}: key {key!r} row {bad[0]} is {arr[bad[0]]:g}, outside the label range [{lo:g}, {hi:g}]"
            )
    return arr


def _as_lengths(value: Any, where: str, key: str, limit: int) -> np.ndarray:
    arr = _array(value, where, key)
    if arr.ndim != 1:
        raise DataError(f"{where}: key {key!r} must be 1-d (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"{where}: key {key!r} has non-numeric dtype {arr.dtype}")
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise DataError(f"{where}: key {key!r} row {bad[0]} is {arr[bad[0]]}, not a whole number")
    elif arr.dtype.kind in "USVMm":
        # An empty array of text, bytes or dates holds no length and cannot be compared with one.
        raise DataError(f"{where}: key {key!r} has non-numeric dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr > limit))
    if bad.size:
        raise DataError(f"{where}: key {key!r} row {bad[0]} is {arr[bad[0]]}, outside [0, {limit}]")
    return arr.astype(np.int64, copy=False)


def _as_strings(value: Any, n: int, fallback: str, where: str = "", key: str = "") -> list[str]:
    if value is None:
        return [fallback.format(i=i) for i in range(n)]
    try:
        return [x.decode(errors="replace") if isinstance(x, bytes) else str(x)
                for x in _array(value, where, key, dtype=object).reshape(-1)]
    except RecursionError:
        raise DataError(f"{where}: key {key!r} holds containers too deeply nested to read as text") from None


def _speech_records(values: list[str], where: str) -> list[dict[str, Any]]:
    """The per-clip speech records: JSON objects as strings ("" when a clip has none)."""
    records = []
    for i, value in enumerate(values):
        try:
            record = json.loads(value) if value else {}
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise DataError(f"{where}: key 'speech' row {i} is not a JSON object: {value[:80]!r}")
        records.append(record)
    return records


def _as_token_ids(value: Any, where: str) -> np.ndarray:
    """text_bert as stored (no copy), once its ids, mask and token types are whole numbers >= 0,
    since the encoder's embedding lookup would crash on anything else mid-training, and its
    attention masks are right-padded."""
    arr = _array(value, where, "text_bert")
    if arr.ndim != 3 or arr.shape[1] != 3 or arr.shape[2] == 0:
        raise DataError(f"{where}: key 'text_bert' must be (N, 3, Lt) with Lt >= 1, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{where}: key 'text_bert' has non-numeric dtype {arr.dtype}")
    if arr.size:
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DataError(f"{where}: key 'text_bert' at {first} is {arr[first]}, not a whole number")
        if arr.min() < 0 or arr.max() >= 2**31:
            value = arr.min() if arr.min() < 0 else arr.max()
            raise DataError(f"{where}: key 'text_bert' holds {value}, not a token id (0 <= id < 2**31)")
        for row, what in ((1, "attention mask"), (2, "token type ids")):
            if arr[:, row].max() > 1:
                raise DataError(f"{where}: key 'text_bert' {what} (row {row}) holds {arr[:, row].max()}; "
                                "must be 0 or 1")
        # Batches are cut to their longest text and the encoder packs each text's first
        # mask-sum tokens: a mask with padding before a real token would lose that token.
        rises = np.diff(arr[:, 1], axis=1) > 0
        if rises.any():
            clip, position = (int(i) for i in np.argwhere(rises)[0])
            raise DataError(f"{where}: key 'text_bert' row {clip}: the attention mask is not right-padded "
                            f"(0 at position {position}, 1 at {position + 1}); real tokens must come first")
    return arr


def _zero_nonfinite(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Set NaN and +-inf (COVAREP writes -inf) to 0 in place; copy only a read-only array.

    float64 values beyond float32's range count as infinite: batches are float32.
    """
    count = 0
    # Row chunks keep the boolean mask small next to a multi-GB MOSEI array.
    step = max(1, (1 << 24) // max(1, arr[0].size)) if arr.shape[0] else 1
    for start in range(0, arr.shape[0], step):
        chunk = arr[start : start + step]
        mask = ~np.isfinite(chunk)
        if chunk.dtype != np.float32:
            mask |= np.abs(chunk) > np.finfo(np.float32).max
        hits = int(mask.sum())
        if not hits:
            continue
        if not arr.flags.writeable:
            # Protocol-5 pickles give read-only arrays over the file's bytes.
            arr = arr.copy()
            chunk = arr[start : start + step]
        chunk[mask] = 0
        count += hits
    return arr, count


# Names a split, or a key of it and the override file the key came from, in a message.
Where = Callable[..., str]


def _where(source: str, name: str, origins: dict[str, str], key: str | None = None) -> str:
    if key in origins:
        return f"{source}: split {name!r} (key {key!r} from {origins[key]})"
    return f"{source}: split {name!r}"


def _check_rows(where: Where, key: str, rows: int, n: int) -> None:
    if rows != n:
        raise DataError(f"{where(key)}: key {key!r} has {rows} rows but 'regression_labels' has {n}")


def _lengths(raw: dict[str, Any], where: Where, n: int, text_bert: np.ndarray, audio: np.ndarray,
             vision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each clip's audio and vision frame counts: stored in an unaligned file; an aligned file
    carries none, since every modality follows the words and the text mask gives all three
    (SPEC 2)."""
    present = [k for k in LENGTH_KEYS if k in raw]
    lt, la, lv = text_bert.shape[2], audio.shape[1], vision.shape[1]
    if len(present) == 1:
        missing = next(k for k in LENGTH_KEYS if k not in raw)
        raise DataError(f"{where(present[0])}: has {present[0]!r} but not {missing!r}; an unaligned file needs both")
    if present:
        audio_lengths = _as_lengths(raw["audio_lengths"], where("audio_lengths"), "audio_lengths", la)
        vision_lengths = _as_lengths(raw["vision_lengths"], where("vision_lengths"), "vision_lengths", lv)
        _check_rows(where, "audio_lengths", audio_lengths.shape[0], n)
        _check_rows(where, "vision_lengths", vision_lengths.shape[0], n)
        return audio_lengths, vision_lengths
    if not la == lv == lt:
        raise DataError(
            f"{where()}: no 'audio_lengths'/'vision_lengths', so the file must be aligned, but "
            f"text_bert has Lt={lt}, audio La={la}, vision Lv={lv}"
        )
    lengths = np.asarray(text_bert[:, 1, :]).sum(axis=1).astype(np.int64)
    return lengths, lengths


def _unimodal_labels(raw: dict[str, Any], where: Where, n: int,
                     label_range: tuple[float, float] | None) -> dict[str, np.ndarray]:
    """The t, a and v labels a file may carry: all three, or none ({})."""
    found = [k for k in UNIMODAL_KEYS.values() if k in raw]
    if found and len(found) != len(UNIMODAL_KEYS):
        missing = [k for k in UNIMODAL_KEYS.values() if k not in raw]
        raise DataError(f"{where()}: has {found} but not {missing}; unimodal labels come as all three")
    unimodal: dict[str, np.ndarray] = {}
    if found:
        for short, key in UNIMODAL_KEYS.items():
            unimodal[short] = _as_labels(raw[key], where(), key, label_range)
            _check_rows(where, key, unimodal[short].shape[0], n)
    return unimodal


def _clip_records(raw: dict[str, Any], name: str, where: Where, n: int
                  ) -> tuple[list[str], list[str], list[str], list[dict[str, Any]]]:
    """Each clip's id ("<split>-<i>" when absent), transcript, extraction flags and speech record."""
    ids = _as_strings(raw.get("id"), n, f"{name}-{{i}}", where("id"), "id")
    raw_text = _as_strings(raw.get("raw_text"), n, "", where("raw_text"), "raw_text")
    _check_rows(where, "id", len(ids), n)
    _check_rows(where, "raw_text", len(raw_text), n)
    flags = _as_strings(raw.get("extraction_flags"), n, "", where(), "extraction_flags")
    _check_rows(where, "extraction_flags", len(flags), n)
    speech = _speech_records(_as_strings(raw.get("speech"), n, "", where(), "speech"), where("speech"))
    _check_rows(where, "speech", len(speech), n)
    return ids, raw_text, flags, speech


def _build_split(
    raw: dict[str, Any],
    name: str,
    source: str,
    *,
    label_range: tuple[float, float] | None = None,
    origins: dict[str, str] | None = None,
    clean: frozenset[str] = frozenset(),
) -> tuple[Split, dict[str, int]]:
    """Validate one split dict and wrap it; returns the split and non-finite counts repaired.

    `origins` maps a key to the override file it came from, so messages point at that file.
    `clean` names keys that come from a cache, repaired when it was written: scanning them
    again would read every page of a memory-mapped array.
    """
    where = functools.partial(_where, source, name, origins or {})
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DataError(f"{where()}: missing key {key!r} (found {sorted(map(str, raw))})")

    text_bert = _as_token_ids(raw["text_bert"], where("text_bert"))
    audio = _as_float_features(raw["audio"], where("audio"), "audio")
    vision = _as_float_features(raw["vision"], where("vision"), "vision")
    labels = _as_labels(raw["regression_labels"], where(), "regression_labels", label_range)
    n = labels.shape[0]
    for key, arr in (("text_bert", text_bert), ("audio", audio), ("vision", vision)):
        _check_rows(where, key, arr.shape[0], n)
    audio_lengths, vision_lengths = _lengths(raw, where, n, text_bert, audio, vision)
    unimodal = _unimodal_labels(raw, where, n, label_range)
    ids, raw_text, flags, speech = _clip_records(raw, name, where, n)

    repaired: dict[str, int] = {}
    if "audio" not in clean:
        audio, repaired["audio"] = _zero_nonfinite(audio)
    if "vision" not in clean:
        vision, repaired["vision"] = _zero_nonfinite(vision)
    split = Split(name=name, text_bert=text_bert, audio=audio, vision=vision, audio_lengths=audio_lengths,
                  vision_lengths=vision_lengths, labels=labels, unimodal_labels=unimodal, ids=ids,
                  raw_text=raw_text, flags=flags, speech=speech)
    return split, repaired


# --- the whole file ----------------------------------------------------------------------

# Which keys each override file brings in, as MMSA's feature_T / feature_A / feature_V do:
# the first must be there; the others replace the main file's when the override has them.
_OVERRIDES = {
    "text_file": ("text_bert", "raw_text"),
    "audio_file": ("audio", "audio_lengths"),
    "vision_file": ("vision", "vision_lengths"),
}
# The feature set an override file brings with its keys.
_OVERRIDE_SETS = {"audio_file": "audio_features", "vision_file": "visual_features"}


def _feature_set(layout: dict[str, Any], source: str, key: str) -> str:
    """The feature set a file records under EXTRACTION_KEY[key] ("audio_features" or
    "visual_features"): UNKNOWN_FEATURES without the entry; a selfmm file from before the
    visual set was recorded names only its audio set, and its faces are haar."""
    meta = layout.get(EXTRACTION_KEY)
    if meta is None:
        return UNKNOWN_FEATURES
    if isinstance(meta, dict) and key not in meta and meta.keys() & {"audio_features", "visual_features"}:
        return LEGACY_VISUAL_FEATURES if key == "visual_features" else UNKNOWN_FEATURES
    name = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise DataError(f"{source}: key {EXTRACTION_KEY!r} must be a dict whose {key!r} names "
                        f"the feature set, got {str(meta)[:100]}")
    return name


def _load_any(path: str) -> tuple[dict[str, dict[str, Any]], list[str] | None]:
    """A pickle's split dicts, or a cache folder's (see data/cache.py) with its recorded repairs."""
    if os.path.isdir(path):
        return read_cache(path)
    check_file(path, "data file", "feature file", DataError)
    return _load_layout(path), None


def _merge_overrides(raws: dict[str, dict[str, Any]], origins: dict[str, dict[str, str]],
                     clean: dict[str, set[str]], overrides: dict[str, str | os.PathLike | None],
                     features: dict[str, str]) -> None:
    """Put each override file's keys into the split dicts, recording the file each came from and
    whether it still needs the non-finite scan (not when it comes from a cache). An audio or
    vision override brings its feature set into `features` too."""
    for arg, override in overrides.items():
        if override is None:
            continue
        over_source = os.fspath(override)
        over, over_repairs = _load_any(over_source)
        required, *optional = _OVERRIDES[arg]
        if arg in _OVERRIDE_SETS:
            features[_OVERRIDE_SETS[arg]] = _feature_set(over, over_source, _OVERRIDE_SETS[arg])
        for split in SPLITS:
            if required not in over[split]:
                raise DataError(f"{over_source}: split {split!r}: missing key {required!r} ({arg} override)")
            for key in (required, *optional):
                if key in over[split]:
                    raws[split][key] = over[split][key]
                    origins[split][key] = over_source
                    if over_repairs is None:
                        clean[split].discard(key)
                    else:
                        clean[split].add(key)


def _build_splits(raws: dict[str, dict[str, Any]], source: str, label_range: tuple[float, float] | None,
                  origins: dict[str, dict[str, str]], clean: dict[str, set[str]],
                  cached_repairs: list[str] | None) -> tuple[dict[str, Split], list[str], int]:
    """Every split validated; the repairs as lines, and the count of values repaired here."""
    splits: dict[str, Split] = {}
    # A cache's repairs still describe the arrays of its keys that no override replaced.
    repairs = [line for line in cached_repairs or []
               if line.split(":")[0].split("/")[1] not in origins[line.split("/")[0]]]
    total = 0
    for split in SPLITS:
        splits[split], repaired = _build_split(
            raws[split], split, source, label_range=label_range, origins=origins[split],
            clean=frozenset(clean[split]),
        )
        for key, count in repaired.items():
            if count:
                repairs.append(f"{split}/{key}: {count} non-finite values set to 0")
                total += count
    return splits, repairs, total


def _check_splits(splits: dict[str, Split], source: str) -> None:
    """A clip somewhere, and every split's audio and vision as wide as train's."""
    # One empty split is legitimate (`selfmm extract` writes its clip as the only row of
    # "test"); a file without any clip is not.
    if not any(len(s) for s in splits.values()):
        raise DataError(f"{source}: has no clips (key 'regression_labels' is empty in every split)")
    first = splits["train"]
    for split in SPLITS[1:]:
        for key in ("audio", "vision"):
            want, got = getattr(first, key).shape[2], getattr(splits[split], key).shape[2]
            if want != got:
                raise DataError(
                    f"{source}: split {split!r}: key {key!r} has width {got} but split 'train' has {want}"
                )


@checked(path=path, dataset=optional(datasets.dataset_name), text_file=optional(path),
         audio_file=optional(path), vision_file=optional(path))
def load_features(
    path: str | os.PathLike,
    dataset: str | None = None,
    *,
    text_file: str | os.PathLike | None = None,
    audio_file: str | os.PathLike | None = None,
    vision_file: str | os.PathLike | None = None,
) -> FeatureData:
    """Load and validate an MMSA feature file (one unpickling per file) or a cache folder.

    With `dataset` (mosi, mosei, sims, simsv2) every label must lie in its range. Override
    files replace one modality's arrays per split (MMSA's feature_T/A/V; an audio override
    brings its audio feature set too). NaN and +-inf inside audio and vision frames are set to
    0, with one warning for the whole file and a line in `repairs`; a cache was repaired when
    written, and lists those repairs without warning again.
    """
    source = os.fspath(path)
    if dataset is not None and dataset not in datasets.names():
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(datasets.names())}")
    label_range = datasets.get(dataset).label_range if dataset else None
    main, cached_repairs = _load_any(source)
    features = {key: _feature_set(main, source, key) for key in ("audio_features", "visual_features")}
    raws = {split: dict(main[split]) for split in SPLITS}
    origins: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    clean = {split: set(raws[split]) if cached_repairs is not None else set() for split in SPLITS}
    overrides = {"text_file": text_file, "audio_file": audio_file, "vision_file": vision_file}
    _merge_overrides(raws, origins, clean, overrides, features)
    del main  # the split dicts above hold the arrays; drop the outer references early

    splits, repairs, total = _build_splits(raws, source, label_range, origins, clean, cached_repairs)
    _check_splits(splits, source)
    if total:
        warn(f"{source}: {total} non-finite audio/vision values (NaN or +-inf) set to 0")
    first = splits["train"]
    aligned = not any(key in raws[split] for split in SPLITS for key in LENGTH_KEYS)
    return FeatureData(
        path=source,
        splits=splits,
        aligned=aligned,
        audio_dim=int(first.audio.shape[2]),
        vision_dim=int(first.vision.shape[2]),
        text_len=max(int(s.text_bert.shape[2]) for s in splits.values()),
        audio_len=max(int(s.audio.shape[1]) for s in splits.values()),
        vision_len=max(int(s.vision.shape[1]) for s in splits.values()),
        repairs=repairs,
        overrides={arg: os.fspath(p) for arg, p in overrides.items() if p is not None},
        audio_features=features["audio_features"],
        visual_features=features["visual_features"],
    )


def check_feature_data(data: FeatureData) -> None:
    """Data built by hand (or changed after loading) must still be what the loader makes: the
    three splits, each with one row per clip in every array, widths as the data says. Shapes
    only: cheap enough to run on every call that takes data."""
    for name in SPLITS:
        split = data.splits.get(name) if isinstance(data.splits, dict) else None
        if split is None:
            raise DataError(f"{data.path}: no split {name!r} (a FeatureData holds train, valid and test)")
        n = len(split)
        expected = {"text_bert": (n, 3, None), "audio": (n, None, data.audio_dim),
                    "vision": (n, None, data.vision_dim), "audio_lengths": (n,), "vision_lengths": (n,),
                    "labels": (n,)}
        for key, shape in expected.items():
            got = tuple(getattr(np.asarray(getattr(split, key)), "shape", ()))
            if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape, strict=True)):
                wanted = ", ".join("L" if w is None else str(w) for w in shape)
                raise DataError(f"{data.path}: split {name!r}: {key} has shape {got}, but the data's "
                                f"widths and {n} clips need ({wanted})")
        if len(split.ids) != n:
            raise DataError(f"{data.path}: split {name!r}: {len(split.ids)} ids for {n} clips")


def feature_data(value: Any) -> FeatureData:
    """A rule of selfmm.checks: loaded data (checked for shapes), or the path of a feature file
    or cache folder, which is loaded."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return load_features(value)
    if not isinstance(value, FeatureData):
        raise Wrong("a selfmm.FeatureData (from selfmm.load_features) or the path of a feature file",
                    kind=True)
    check_feature_data(value)
    return value


def check_label_range(data: FeatureData, dataset: str) -> None:
    """Every label of `data` within `dataset`'s range (a file of another dataset is refused
    before training on it, rather than scored with the wrong metrics after)."""
    low, high = datasets.get(dataset).label_range
    labels = np.concatenate([np.asarray(s.labels, np.float64).reshape(-1) for s in data.splits.values()])
    if labels.size and (labels.min() < low or labels.max() > high):
        raise DataError(f"{data.path}: labels run from {labels.min():g} to {labels.max():g}, outside "
                        f"{dataset}'s range [{low:g}, {high:g}]: not a {dataset} file")


feature_data.loads = True  # type: ignore[attr-defined]  # checked after the cheap rules
