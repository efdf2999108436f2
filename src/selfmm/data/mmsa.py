"""MMSA feature files: restricted unpickling, validation and light repair (SPEC section 2).

A feature file is a pickle of `{"train": S, "valid": S, "test": S}` where each split S is a
dict of arrays with one row per clip. The whole file is unpickled once, arrays are kept as
they come whenever their dtype already fits (MOSEI holds several GB), and every problem is
reported naming the file, the split, the key and the offending shape or value.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pickle
import pickletools
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..configuration import LABEL_RANGE
from ..errors import DataError
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


# Legitimate feature files nest a few levels (dict > dict > array > state tuple > dtype).
# Far deeper nesting is an attack: hashing a tuple nested ~10^5 deep overflows the C stack
# inside the unpickler itself, which no exception handler can catch.
MAX_DEPTH = 200
# Opcodes whose argument is a byte count followed by that many bytes, by the count's format.
_COUNTED = {-2: "<B", -3: "<i", -4: "<I", -5: "<Q"}
_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def _check_structure(handle: Any, size: int, source: str) -> None:
    """Walk the pickle's opcodes without building anything; refuse what would hurt to build.

    Every declared length must fit in what is left of the file (the C unpickler allocates a
    declared length before reading it), and the nesting depth stays below MAX_DEPTH. Payloads
    are skipped with seek, so a multi-GB file costs one pass over its few opcodes.
    """
    stack: list[int | None] = []  # nesting depth of each stack item; None is a MARK
    memo: dict[Any, int] = {}

    def pop() -> int | None:
        if not stack:
            raise DataError(f"{source}: not a readable pickle: stack underflow")
        return stack.pop()

    while True:
        pos = handle.tell()
        code = handle.read(1)
        op = _OPCODES.get(code)
        if op is None:
            if not code:
                raise DataError(f"{source}: truncated pickle (unexpected end of file)")
            raise DataError(f"{source}: not a readable pickle: unknown opcode {code!r} at byte {pos}")
        arg = None
        if op.arg is not None and op.arg.n in _COUNTED:
            fmt = _COUNTED[op.arg.n]
            head = handle.read(struct.calcsize(fmt))
            if len(head) != struct.calcsize(fmt):
                raise DataError(f"{source}: truncated pickle (unexpected end of file)")
            (length,) = struct.unpack(fmt, head)
            if length < 0 or length > size - handle.tell():
                raise DataError(f"{source}: truncated pickle: {op.name} at byte {pos} declares {length} "
                                f"bytes, but only {size - handle.tell()} remain in the file")
            handle.seek(length, os.SEEK_CUR)
        elif op.arg is not None:
            try:
                arg = op.arg.reader(handle)
            except ValueError as exc:
                raise DataError(f"{source}: not a readable pickle: {op.name} at byte {pos}: {exc}") from None
        if op.name == "FRAME" and arg > size - handle.tell():
            raise DataError(f"{source}: truncated pickle: FRAME at byte {pos} declares {arg} bytes, but only "
                            f"{size - handle.tell()} remain in the file")
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or stack[-1] is None:
                raise DataError(f"{source}: not a readable pickle: {op.name} at byte {pos} with nothing to store")
            memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
            continue
        if op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, 0))
            continue
        if op.name == "DUP":
            stack.append(stack[-1] if stack else 0)
            continue
        if op.name == "STOP":
            return
        if op.name == "MARK":
            stack.append(None)
            continue
        before = op.stack_before
        items: list[int] = []
        if pickletools.markobject in before:
            while (item := pop()) is not None:
                items.append(item)
            items.extend(d for d in (pop() for _ in range(before.index(pickletools.markobject))) if d is not None)
        else:
            items.extend(d for d in (pop() for _ in before) if d is not None)
        if op.name in _MUTATORS and items:
            # The container, popped last, keeps its identity: it grows around the new items
            # instead of gaining a level per APPEND (protocol 0 appends one item at a time).
            depth = max(items[-1], 1 + max(items[:-1], default=0))
        else:
            depth = 1 + max(items) if items else 0
        if depth > MAX_DEPTH:
            raise DataError(f"{source}: containers nested more than {MAX_DEPTH} deep (at byte {pos})")
        stack.extend(depth for _ in op.stack_after)


def _check_dtype_state(dtype: np.dtype, state: Any, source: str) -> None:
    """numpy applies a dtype's pickled state without checking it against the dtype (a forged
    item size or subarray later crashes the process); admit only the state numpy itself
    writes for that dtype, in either byte order."""
    canonical = dtype.__reduce__()[2]
    if (isinstance(state, tuple) and len(state) == len(canonical) and len(state) > 1
            and state[1] in ("<", ">", "=", "|") and (state[1] == "|") == (canonical[1] == "|")
            and state[:1] + state[2:] == canonical[:1] + canonical[2:]):
        return
    raise DataError(f"{source}: refusing a forged state for dtype {dtype}")


def _check_array_state(state: Any, limit: int, source: str) -> None:
    """numpy rebuilds an object array from a list without comparing their lengths (a shorter
    list reads past its end and crashes the process); check that, and the size, first."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise DataError(f"{source}: refusing an array state of type {type(state).__name__}")
    shape, dtype, data = state[-4], state[-3], state[-1]
    if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple) or not all(
        isinstance(d, int) and d >= 0 for d in shape
    ):
        raise DataError(f"{source}: refusing an array state with shape {shape!r} and dtype {dtype!r}")
    count = math.prod(shape)
    if count * max(dtype.itemsize, 1) > limit:
        raise DataError(f"{source}: an array declares shape {shape} of {dtype}, larger than the file allows")
    if dtype.hasobject and not (isinstance(data, list) and len(data) == count):
        raise DataError(f"{source}: an object array of shape {shape} holds "
                        f"{len(data) if isinstance(data, list) else type(data).__name__} items")


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler, restricted to what numpy arrays need, every call checked.

    The pure-Python implementation is used so REDUCE and BUILD can be checked before numpy
    sees their arguments; a feature file has few opcodes (arrays are single byte strings), so
    its speed does not matter.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, source: str, size: int) -> None:
        super().__init__(file)
        self._source = source
        # An object array may reference one memoised item per 2-byte opcode, 8 bytes each.
        self._limit = 8 * size + (1 << 20)
        self._multiarray_reconstruct = _numpy_core_attr("multiarray", "_reconstruct")
        self._scalar = _numpy_core_attr("multiarray", "scalar")
        self._frombuffer = _numpy_core_attr("numeric", "_frombuffer")
        self._callables = {
            "_reconstruct": self._reconstruct, "scalar": self._make_scalar, "_frombuffer": self._make_frombuffer,
            "dtype": self._make_dtype, "encode": self._encode,
        }

    def _refuse(self, what: str) -> DataError:
        return DataError(f"{self._source}: refusing {what}: a feature file may only contain numpy "
                         "arrays and plain containers")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return self._callables[name]
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray  # only as _reconstruct's first argument: REDUCE refuses to call it
        if (module, name) in (("numpy", "dtype"), ("_codecs", "encode")):
            return self._callables[name]
        raise self._refuse(f"to unpickle global {module}.{name}")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # numpy pickles an empty placeholder here, then BUILD gives it its real state.
        if subtype is not np.ndarray or shape != (0,):
            raise self._refuse(f"array reconstruction {subtype!r}, {shape!r}")
        return self._multiarray_reconstruct(np.ndarray, (0,), dtype)

    def _make_dtype(self, *args: Any) -> np.dtype:
        dtype = np.dtype(*args)
        if dtype.fields is not None or dtype.subdtype is not None:
            raise self._refuse(f"structured or subarray dtype {dtype}")
        return dtype

    def _make_scalar(self, dtype: Any, data: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not (
            isinstance(data, bytes) and len(data) == dtype.itemsize
        ):
            raise self._refuse(f"a scalar of {dtype!r} from {type(data).__name__}")
        return self._scalar(dtype, data)

    def _make_frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise self._refuse(f"a buffer array of {dtype!r}")
        return self._frombuffer(buffer, dtype, shape, order)

    def _encode(self, text: Any, encoding: str = "utf-8") -> bytes:
        # Protocols 0-2 store raw bytes as latin-1 text; any other codec name is refused, since
        # a codec lookup imports modules by name.
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise self._refuse(f"_codecs.encode with encoding {encoding!r}")
        return text.encode("latin-1")

    def load_reduce(self) -> None:
        func = self.stack[-2]
        if not any(func is f for f in self._callables.values()):
            raise self._refuse(f"a call of {func!r}")
        super().load_reduce()

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, state, self._source)
        elif type(inst) is np.ndarray:
            _check_array_state(state, self._limit, self._source)
        else:
            raise self._refuse(f"setting the state of a {type(inst).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def _no_instances(self) -> None:
        raise self._refuse("to create an instance of a class")

    for _opcode in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST):
        dispatch[_opcode[0]] = _no_instances
    del _opcode


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle `path` admitting only numpy arrays, numbers, strings and containers."""
    source = os.fspath(path)
    try:
        handle = open(source, "rb")
    except OSError as exc:
        raise DataError(f"{source}: cannot open: {exc.strerror or exc}") from exc
    with handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            _check_structure(handle, size, source)
            handle.seek(0)
            return _RestrictedUnpickler(handle, source, size).load()
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"{source}: not enough memory to unpickle the file") from None
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
    origins = origins or {}

    def where(key: str | None = None) -> str:
        if key in origins:
            return f"{source}: split {name!r} (key {key!r} from {origins[key]})"
        return f"{source}: split {name!r}"

    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DataError(f"{where()}: missing key {key!r} (found {sorted(map(str, raw))})")

    text_bert = _as_token_ids(raw["text_bert"], where("text_bert"))
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

    ids = _as_strings(raw.get("id"), n, f"{name}-{{i}}", where("id"), "id")
    raw_text = _as_strings(raw.get("raw_text"), n, "", where("raw_text"), "raw_text")
    check_rows("id", len(ids))
    check_rows("raw_text", len(raw_text))
    flags = _as_strings(raw.get("extraction_flags"), n, "", where(), "extraction_flags")
    check_rows("extraction_flags", len(flags))

    repaired: dict[str, int] = {}
    if "audio" not in clean:
        audio, repaired["audio"] = _zero_nonfinite(audio)
    if "vision" not in clean:
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
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    if os.path.isdir(path):
        return read_cache(path)
    return _load_layout(path), None


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
    if dataset is not None and dataset not in LABEL_RANGE:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(LABEL_RANGE)}")
    label_range = LABEL_RANGE.get(dataset) if dataset else None
    main, cached_repairs = _load_any(source)
    audio_features = _feature_set(main, source, "audio_features")
    visual_features = _feature_set(main, source, "visual_features")
    raws = {split: dict(main[split]) for split in SPLITS}
    origins: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    clean = {split: set(raws[split]) if cached_repairs is not None else set() for split in SPLITS}
    overrides = {"text_file": text_file, "audio_file": audio_file, "vision_file": vision_file}
    for arg, override in overrides.items():
        if override is None:
            continue
        over_source = os.fspath(override)
        over, over_repairs = _load_any(over_source)
        required, *optional = _OVERRIDES[arg]
        if arg == "audio_file":
            audio_features = _feature_set(over, over_source, "audio_features")
        if arg == "vision_file":
            visual_features = _feature_set(over, over_source, "visual_features")
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
    del main  # the split dicts above hold the arrays; drop the outer references early

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
        overrides={arg: os.fspath(p) for arg, p in overrides.items() if p is not None},
        audio_features=audio_features,
        visual_features=visual_features,
    )
