"""MMSA feature files: restricted unpickling, validation and light repair (SPEC section 2).

A feature file is a pickle of `{"train": S, "valid": S, "test": S}` where each split S is a
dict of arrays with one row per clip. The whole file is unpickled once, arrays are kept as
they come whenever their dtype already fits (MOSEI holds several GB), and every problem is
reported naming the file, the split, the key and the offending shape or value.
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

SPLITS = ("train", "valid", "test")
REQUIRED_KEYS = ("text_bert", "audio", "vision", "regression_labels")
UNIMODAL_KEYS = {"t": "regression_labels_T", "a": "regression_labels_A", "v": "regression_labels_V"}
LENGTH_KEYS = ("audio_lengths", "vision_lengths")


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

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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


# --- restricted unpickling ---------------------------------------------------------------

# Everything a numpy array (any dtype, pickle protocols 0-5, numpy 1.x or 2.x) needs to be
# rebuilt, and nothing else: a feature file that names any other global is refused before
# that global is even imported. `_codecs.encode` turns the latin-1 strings that protocols 0-2
# use for raw bytes back into bytes; it calls nothing else.
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = ("multiarray", "_reconstruct")
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = ("multiarray", "scalar")
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = ("numeric", "_frombuffer")


def _numpy_core_attr(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; files written by either must load on both,
    # and importing numpy.core on numpy 2 only emits a deprecation warning.
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"numpy provides no {module}.{name}")  # pragma: no cover - numpy changed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _numpy_core_attr(*_ALLOWED[(module, name)])
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise DataError(
            f"{self._source}: refusing to unpickle global {module}.{name}: a feature file may "
            "only contain numpy arrays and plain containers"
        )


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle `path` admitting only numpy arrays, numbers, strings and containers."""
    source = os.fspath(path)
    try:
        handle = open(source, "rb")
    except OSError as exc:
        raise DataError(f"{source}: cannot open: {exc.strerror or exc}") from exc
    with handle:
        try:
            return _RestrictedUnpickler(handle, source).load()
        except (DataError, MemoryError):
            raise
        except (EOFError, pickle.UnpicklingError) as exc:
            # The C unpickler reports a cut-off file as either, depending on where it stops.
            if isinstance(exc, EOFError) or "truncated" in str(exc):
                raise DataError(f"{source}: truncated pickle (unexpected end of file)") from exc
            raise DataError(f"{source}: not a readable pickle: {exc}") from exc
        except Exception as exc:  # any other failure means the bytes are not a valid pickle
            raise DataError(f"{source}: not a readable pickle: {type(exc).__name__}: {exc}") from exc


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


def _as_float_features(value: Any, where: str, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 3:
        raise DataError(f"{where}: key {key!r} must be 3-d (N, L, D), got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{where}: key {key!r} has non-numeric dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    return arr


def _as_labels(value: Any, where: str, key: str, label_range: tuple[float, float] | None) -> np.ndarray:
    arr = np.asarray(value)
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
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise DataError(f"{where}: key {key!r} must be 1-d (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"{where}: key {key!r} has non-numeric dtype {arr.dtype}")
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise DataError(f"{where}: key {key!r} row {bad[0]} is {arr[bad[0]]}, not a whole number")
    bad = np.flatnonzero((arr < 0) | (arr > limit))
    if bad.size:
        raise DataError(f"{where}: key {key!r} row {bad[0]} is {arr[bad[0]]}, outside [0, {limit}]")
    return arr.astype(np.int64, copy=False)


def _as_strings(value: Any, n: int, fallback: str) -> list[str]:
    if value is None:
        return [fallback.format(i=i) for i in range(n)]
    return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in np.asarray(value, dtype=object).reshape(-1)]


def _zero_nonfinite(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Set NaN and +-inf (COVAREP writes -inf) to 0 in place; copy only a read-only array."""
    count = 0
    # Row chunks keep the boolean mask small next to a multi-GB MOSEI array.
    step = max(1, (1 << 24) // max(1, arr[0].size)) if arr.shape[0] else 1
    for start in range(0, arr.shape[0], step):
        chunk = arr[start : start + step]
        mask = ~np.isfinite(chunk)
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


def _build_split(
    raw: dict[str, Any],
    name: str,
    source: str,
    *,
    label_range: tuple[float, float] | None = None,
    origins: dict[str, str] | None = None,
) -> tuple[Split, dict[str, int]]:
    """Validate one split dict and wrap it; returns the split and non-finite counts repaired.

    `origins` maps a key to the override file it came from, so messages point at that file.
    """
    origins = origins or {}

    def where(key: str | None = None) -> str:
        if key in origins:
            return f"{source}: split {name!r} (key {key!r} from {origins[key]})"
        return f"{source}: split {name!r}"

    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DataError(f"{where()}: missing key {key!r} (found {sorted(map(str, raw))})")

    text_bert = np.asarray(raw["text_bert"])
    if text_bert.ndim != 3 or text_bert.shape[1] != 3:
        raise DataError(
            f"{where('text_bert')}: key 'text_bert' must be (N, 3, Lt), got shape {text_bert.shape}"
        )
    audio = _as_float_features(raw["audio"], where("audio"), "audio")
    vision = _as_float_features(raw["vision"], where("vision"), "vision")
    labels = _as_labels(raw["regression_labels"], where(), "regression_labels", label_range)
    n = labels.shape[0]

    def check_rows(key: str, rows: int) -> None:
        if rows != n:
            raise DataError(f"{where(key)}: key {key!r} has {rows} rows but 'regression_labels' has {n}")

    check_rows("text_bert", text_bert.shape[0])
    check_rows("audio", audio.shape[0])
    check_rows("vision", vision.shape[0])

    present = [k for k in LENGTH_KEYS if k in raw]
    lt, la, lv = text_bert.shape[2], audio.shape[1], vision.shape[1]
    if len(present) == 1:
        missing = next(k for k in LENGTH_KEYS if k not in raw)
        raise DataError(f"{where(present[0])}: has {present[0]!r} but not {missing!r}; an unaligned file needs both")
    if present:
        audio_lengths = _as_lengths(raw["audio_lengths"], where("audio_lengths"), "audio_lengths", la)
        vision_lengths = _as_lengths(raw["vision_lengths"], where("vision_lengths"), "vision_lengths", lv)
        check_rows("audio_lengths", audio_lengths.shape[0])
        check_rows("vision_lengths", vision_lengths.shape[0])
    else:
        # Aligned files carry no lengths: every modality follows the words, so the text
        # mask gives all three (SPEC 2).
        if not la == lv == lt:
            raise DataError(
                f"{where()}: no 'audio_lengths'/'vision_lengths', so the file must be aligned, but "
                f"text_bert has Lt={lt}, audio La={la}, vision Lv={lv}"
            )
        audio_lengths = np.asarray(text_bert[:, 1, :]).sum(axis=1).astype(np.int64)
        vision_lengths = audio_lengths

    unimodal: dict[str, np.ndarray] = {}
    found = [k for k in UNIMODAL_KEYS.values() if k in raw]
    if found and len(found) != len(UNIMODAL_KEYS):
        missing = [k for k in UNIMODAL_KEYS.values() if k not in raw]
        raise DataError(f"{where()}: has {found} but not {missing}; unimodal labels come as all three")
    if found:
        for short, key in UNIMODAL_KEYS.items():
            unimodal[short] = _as_labels(raw[key], where(), key, label_range)
            check_rows(key, unimodal[short].shape[0])

    ids = _as_strings(raw.get("id"), n, f"{name}-{{i}}")
    raw_text = _as_strings(raw.get("raw_text"), n, "")
    check_rows("id", len(ids))
    check_rows("raw_text", len(raw_text))
    flags = _as_strings(raw.get("extraction_flags"), n, "")
    check_rows("extraction_flags", len(flags))

    repaired: dict[str, int] = {}
    audio, repaired["audio"] = _zero_nonfinite(audio)
    vision, repaired["vision"] = _zero_nonfinite(vision)

    split = Split(
        name=name,
        text_bert=text_bert,
        audio=audio,
        vision=vision,
        audio_lengths=audio_lengths,
        vision_lengths=vision_lengths,
        labels=labels,
        unimodal_labels=unimodal,
        ids=ids,
        raw_text=raw_text,
        flags=flags,
    )
    return split, repaired


# --- the whole file ----------------------------------------------------------------------

# Which keys each override file brings in, as MMSA's feature_T / feature_A / feature_V do:
# the first must be there; the others replace the main file's when the override has them.
_OVERRIDES = {
    "text_file": ("text_bert", "raw_text"),
    "audio_file": ("audio", "audio_lengths"),
    "vision_file": ("vision", "vision_lengths"),
}


def load_features(
    path: str | os.PathLike,
    *,
    label_range: tuple[float, float] | None = None,
    text_file: str | os.PathLike | None = None,
    audio_file: str | os.PathLike | None = None,
    vision_file: str | os.PathLike | None = None,
) -> FeatureData:
    """Load and validate an MMSA feature file (one unpickling per file).

    Override files replace one modality's arrays per split. NaN and +-inf inside audio and
    vision frames are set to 0, with one warning for the whole file and a line in `repairs`.
    """
    source = os.fspath(path)
    main = _load_layout(source)
    raws = {split: dict(main[split]) for split in SPLITS}
    origins: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    overrides = {"text_file": text_file, "audio_file": audio_file, "vision_file": vision_file}
    for arg, override in overrides.items():
        if override is None:
            continue
        over_source = os.fspath(override)
        over = _load_layout(over_source)
        required, *optional = _OVERRIDES[arg]
        for split in SPLITS:
            if required not in over[split]:
                raise DataError(f"{over_source}: split {split!r}: missing key {required!r} ({arg} override)")
            for key in (required, *optional):
                if key in over[split]:
                    raws[split][key] = over[split][key]
                    origins[split][key] = over_source
    del main  # the split dicts above hold the arrays; drop the outer references early

    splits: dict[str, Split] = {}
    repairs: list[str] = []
    total = 0
    for split in SPLITS:
        splits[split], repaired = _build_split(
            raws[split], split, source, label_range=label_range, origins=origins[split]
        )
        for key, count in repaired.items():
            if count:
                repairs.append(f"{split}/{key}: {count} non-finite values set to 0")
                total += count

    first = splits["train"]
    for split in SPLITS[1:]:
        for key in ("audio", "vision"):
            want, got = getattr(first, key).shape[2], getattr(splits[split], key).shape[2]
            if want != got:
                raise DataError(
                    f"{source}: split {split!r}: key {key!r} has width {got} but split 'train' has {want}"
                )
    if total:
        warnings.warn(
            f"{source}: {total} non-finite audio/vision values (NaN or +-inf) set to 0", stacklevel=2
        )

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
    )
