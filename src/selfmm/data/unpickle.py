"""Restricted unpickling: a feature file may hold numpy arrays and plain containers, nothing else.

Pickles come from strangers (docs/security.md). Before anything is built, the opcodes are
walked once to refuse declared lengths beyond the file's end and absurd nesting; then Python's
own unpickler runs with every global, call and state checked against what numpy arrays need.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import pickletools
import struct
from typing import Any

import numpy as np

from ..errors import DataError

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
    while True:
        op, arg, pos = _read_opcode(handle, size, source)
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or stack[-1] is None:
                raise DataError(f"{source}: not a readable pickle: {op.name} at byte {pos} with nothing to store")
            memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, 0))
        elif op.name == "DUP":
            stack.append(stack[-1] if stack else 0)
        elif op.name == "STOP":
            return
        elif op.name == "MARK":
            stack.append(None)
        else:
            _build_depth(op, stack, pos, source)


def _read_opcode(handle: Any, size: int, source: str) -> tuple[pickletools.OpcodeInfo, Any, int]:
    """The next opcode, its argument and its offset. A counted payload (bytes, text, big
    integers) is skipped, its argument None, once its length is known to fit the file."""
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
    return op, arg, pos


def _pop(stack: list[int | None], source: str) -> int | None:
    if not stack:
        raise DataError(f"{source}: not a readable pickle: stack underflow")
    return stack.pop()


def _build_depth(op: pickletools.OpcodeInfo, stack: list[int | None], pos: int, source: str) -> None:
    """Apply the stack effect of an opcode that builds or fills a container: its result nests
    one level deeper than the deepest item it takes."""
    before = op.stack_before
    items: list[int] = []
    if pickletools.markobject in before:
        while (item := _pop(stack, source)) is not None:
            items.append(item)
        count = before.index(pickletools.markobject)
    else:
        count = len(before)
    items.extend(d for d in (_pop(stack, source) for _ in range(count)) if d is not None)
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

