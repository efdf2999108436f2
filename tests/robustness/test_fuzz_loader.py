"""Loader fuzzing: thousands of corrupted feature files, each a clear DataError or a usable load.

Never a crash (any other exception, or the process dying), never a hang (hypothesis' deadline),
never unbounded memory (the address space is capped at +1 GiB while fuzzing, and running out
of it counts as a failure), never code execution (a canary file that payloads would create).
SELFMM_FUZZ_SCALE=k multiplies every strategy's number of examples (default 1).
"""

from __future__ import annotations

import codecs
import os
import pickle
import pickletools
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from selfmm.data.mmsa import SPLITS, load_features
from selfmm.errors import DataError

from .helpers import assert_usable, memory_cap, tiny_file

SCALE = float(os.environ.get("SELFMM_FUZZ_SCALE", "1"))
WORK = Path(tempfile.mkdtemp(prefix="selfmm-fuzz-"))
TARGET = WORK / "fuzz.pkl"
CANARY = WORK / "executed"
# Cases of every strategy by outcome ("error" or "loaded"), filled as they run; the robustness
# conftest prints them at the end of the session.
FUZZ_CASES: dict[tuple[str, str], int] = {}


def fuzz_settings(examples: int):
    # The deadline catches hangs, not slowness: a loaded CI machine can be 10x slower.
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=10_000, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    database=None)


@pytest.fixture(scope="module", autouse=True)
def capped():
    with memory_cap():
        yield


def load_blob(blob: bytes, strategy: str) -> str:
    """Load `blob` as a feature file; return "error" or "loaded", or fail the test."""
    TARGET.write_bytes(blob)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = load_features(TARGET)
    except DataError as exc:
        message = str(exc)
        assert message.startswith(str(TARGET)), message  # names the file
        assert "not enough memory" not in message, message  # an unbounded allocation was tried
        outcome = "error"
    else:
        assert_usable(data)
        outcome = "loaded"
    finally:
        assert not CANARY.exists(), "a payload ran"
    FUZZ_CASES[(strategy, outcome)] = FUZZ_CASES.get((strategy, outcome), 0) + 1
    return outcome


BASES = {
    (protocol, aligned): pickle.dumps(tiny_file(aligned), protocol=protocol)
    for protocol in (0, 2, 4, 5) for aligned in (False, True)
}


def test_bases_load():
    for blob in BASES.values():
        assert load_blob(blob, "bases") == "loaded"


# --- byte-level corruptions ----------------------------------------------------------------

base_blob = st.sampled_from(sorted(BASES))


@fuzz_settings(500)
@given(base_blob, st.floats(0, 1, exclude_max=True))
def test_truncation(key, where):
    blob = BASES[key]
    assert load_blob(blob[: int(where * len(blob))], "truncation") == "error"


@fuzz_settings(700)
@given(base_blob, st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12))
def test_flipped_bytes(key, flips):
    blob = bytearray(BASES[key])
    for where, value in flips:
        blob[int(where * len(blob))] = value
    load_blob(bytes(blob), "flipped bytes")


@fuzz_settings(400)
@given(base_blob, st.floats(0, 1), st.integers(0, 64), st.binary(max_size=64))
def test_spliced_bytes(key, where, cut, insert):
    blob = BASES[key]
    at = int(where * len(blob))
    load_blob(blob[:at] + insert + blob[at + cut:], "spliced bytes")


# --- structured corruptions: the dict is changed before pickling ----------------------------

DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_,
                          np.complex64, np.dtype("U3"), np.dtype("S2"), np.dtype("M8[s]")])
SPECIAL_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, 1.0, -1.0, 3.5])
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                 st.text(max_size=8), st.binary(max_size=8))
containers = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=12)
arrays = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
numeric_arrays = hnp.arrays(st.sampled_from([np.float32, np.float64]),
                            hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
                            elements=SPECIAL_FLOATS)
lengths = st.lists(st.integers(-(2**62), 2**62), min_size=0, max_size=5).map(np.array)
KEYS = ["text_bert", "audio", "vision", "regression_labels", "audio_lengths", "vision_lengths",
        "regression_labels_T", "regression_labels_A", "regression_labels_V", "id", "raw_text",
        "extraction_flags", "annotations", "unexpected_key"]
DELETE = object()
values = st.one_of(st.just(DELETE), arrays, numeric_arrays, lengths, containers)


def poke(base: np.ndarray, draw_value) -> np.ndarray:
    """The same array with some of its entries set to NaN, inf or huge values."""
    out = np.array(base, dtype=np.float64)
    flat = out.reshape(-1)
    for index, value in draw_value:
        flat[index % flat.size] = value
    return out


@fuzz_settings(900)
@given(st.booleans(), st.lists(st.tuples(st.sampled_from(SPLITS), st.sampled_from(KEYS), values),
                               min_size=1, max_size=4), st.sampled_from([2, 4, 5]))
def test_structured_corruptions(aligned, changes, protocol):
    data = tiny_file(aligned)
    for split, key, value in changes:
        if value is DELETE:
            data[split].pop(key, None)
        else:
            data[split][key] = value
    load_blob(pickle.dumps(data, protocol=protocol), "structured")


@fuzz_settings(400)
@given(st.sampled_from(SPLITS), st.sampled_from(["text_bert", "audio", "vision", "regression_labels",
                                                  "audio_lengths", "vision_lengths", "regression_labels_T"]),
       st.lists(st.tuples(st.integers(0, 10**6), SPECIAL_FLOATS | st.integers(-(2**40), 2**40).map(float)),
                min_size=1, max_size=6))
def test_nonfinite_and_huge_values(split, key, pokes):
    data = tiny_file()
    data[split][key] = poke(data[split][key], pokes)
    load_blob(pickle.dumps(data, protocol=4), "non-finite and huge values")


SPLIT_DICTS = st.dictionaries(st.sampled_from(KEYS), arrays, max_size=4)


@fuzz_settings(300)
@given(st.one_of(containers, arrays, st.dictionaries(st.sampled_from([*SPLITS, "other"]),
                                                     st.one_of(containers, SPLIT_DICTS), max_size=4)))
def test_wrong_layouts(top):
    load_blob(pickle.dumps(top, protocol=4), "wrong layouts")


# --- crafted pickles: forbidden globals, forged numpy states, declared sizes, nesting ----------


class Forged:
    """Pickles as `func(*args)`, then `__setstate__(state)` when a state is given."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def named_global(module: str, name: str, protocol: int) -> bytes:
    if protocol < 4:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    short = lambda s: b"\x8c" + bytes([len(s)]) + s.encode()  # noqa: E731
    return short(module) + short(name) + b"\x93"


def unframed(blob: bytes) -> bytes:
    """`blob` without protocol 4's FRAME opcodes, so bytes can be replaced inside it."""
    ops = list(pickletools.genops(blob))
    ends = [pos for _, _, pos in ops[1:]] + [len(blob)]
    return b"".join(blob[pos:end] for (op, _, pos), end in zip(ops, ends, strict=True) if op.name != "FRAME")


DANGEROUS = [("os", "system"), ("posix", "system"), ("subprocess", "Popen"), ("builtins", "eval"),
             ("builtins", "exec"), ("builtins", "open"), ("builtins", "getattr"), ("builtins", "__import__"),
             ("numpy", "load"), ("numpy", "fromfile"), ("numpy", "save"), ("pickle", "loads"),
             ("torch", "load"), ("shutil", "rmtree"), ("functools", "partial"), ("operator", "attrgetter"),
             ("io", "open"), ("codecs", "open"), ("numpy.core.multiarray", "nonexistent"),
             ("numpy", "ndarray.__new__"), ("numpy.testing", "assert_equal"), ("webbrowser", "open")]


@fuzz_settings(300)
@given(st.sampled_from(DANGEROUS), st.sampled_from([0, 2, 4]), st.sampled_from(SPLITS),
       st.sampled_from(["id", "audio", "extra"]))
def test_forbidden_globals(target, protocol, split, key):
    module, name = target
    payload = f"open({str(CANARY)!r}, 'w').close()".encode()
    # The forbidden global called on a canary-creating argument, in place of a string of a
    # valid file (the unpickler accepts any opcode whatever the protocol says).
    call = named_global(module, name, protocol) + b"X" + struct.pack("<I", len(payload)) + payload + b"\x85R"
    marker = "MARKER-0123456789"
    data = tiny_file()
    data[split][key] = marker
    blob = unframed(pickle.dumps(data, protocol=protocol))
    inner = {0: b"V" + marker.encode() + b"\n", 2: b"X" + struct.pack("<I", len(marker)) + marker.encode(),
             4: b"\x8c" + bytes([len(marker)]) + marker.encode()}[protocol]
    assert inner in blob
    blob = blob.replace(inner, call, 1)
    assert load_blob(blob, "forbidden globals") == "error"
    with pytest.raises(DataError, match="refusing"):
        load_features(TARGET)


RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
SCALAR = np.float64(1).__reduce__()[0]
# numpy pickles a contiguous array with protocol 5 through numeric._frombuffer.
FROMBUFFER = np.arange(3).__reduce_ex__(5)[0]
DTYPE_VALUES = st.sampled_from([np.dtype(x) for x in ("f8", "f4", "O", "U3", "S2", "V8", "c8", "?", "M8[s]")]
                               + [np.dtype([("a", "f4"), ("b", "O")]), np.dtype(("f4", (2,)))])
shapes = st.lists(st.integers(0, 2**40) | st.integers(0, 6) | st.integers(-3, -1), max_size=4).map(tuple)
array_data = st.one_of(st.binary(max_size=64), st.lists(leaf, max_size=8), leaf)
states = st.one_of(
    st.tuples(st.just(1), shapes, DTYPE_VALUES, st.booleans(), array_data),
    st.tuples(shapes, DTYPE_VALUES, st.booleans(), array_data),
    containers,
)
forged = st.one_of(
    st.builds(Forged, st.just(RECONSTRUCT), st.tuples(st.just(np.ndarray), shapes | st.just((0,)),
                                                      st.sampled_from([b"b", b"f8", b"O"]) | DTYPE_VALUES), states),
    st.builds(Forged, st.just(np.ndarray), st.tuples(shapes), st.none() | states),
    st.builds(Forged, st.just(np.dtype),
              st.tuples(st.sampled_from(["f8", "O", "V2000000000", "U99999999", ("f8", (2**20, 2**20))]),
                        st.booleans(), st.booleans()), st.none() | containers),
    st.builds(Forged, st.just(SCALAR), st.tuples(DTYPE_VALUES, array_data)),
    st.builds(Forged, st.just(codecs.encode),
              st.tuples(st.text(max_size=8), st.sampled_from(["latin1", "zlib", "utf-8", "rot13", "hex"]))),
    st.builds(Forged, st.just(FROMBUFFER), st.tuples(st.binary(max_size=64), DTYPE_VALUES, shapes,
                                                     st.sampled_from(["C", "F", "X"]))),
)


@fuzz_settings(900)
@given(forged, st.sampled_from(SPLITS), st.sampled_from(["audio", "id", "regression_labels", "extra"]),
       st.sampled_from([2, 4, 5]))
def test_forged_numpy_objects(obj, split, key, protocol):
    data = tiny_file()
    data[split][key] = obj
    try:
        blob = pickle.dumps(data, protocol=protocol)
    except Exception:  # noqa: BLE001 - hypothesis built something even pickle cannot write
        return
    load_blob(blob, "forged numpy objects")


COUNTED_OPS = [b"B", b"C", b"\x8e", b"\x96", b"X", b"\x8c", b"\x8d", b"T", b"U", b"\x8a", b"\x8b"]
LENGTH_FORMAT = {b"B": "<I", b"C": "<B", b"\x8e": "<Q", b"\x96": "<Q", b"X": "<I", b"\x8c": "<B",
                 b"\x8d": "<Q", b"T": "<i", b"U": "<B", b"\x8a": "<B", b"\x8b": "<i"}


@st.composite
def counted(draw) -> bytes:
    op = draw(st.sampled_from(COUNTED_OPS))
    fmt = LENGTH_FORMAT[op]
    bits = struct.calcsize(fmt) * 8 - (1 if fmt[-1].islower() else 0)
    size = draw(st.integers(0, 2**bits - 1) | st.integers(0, 16))
    return op + struct.pack(fmt, size) + draw(st.binary(max_size=16))


fragments = st.one_of(
    st.sampled_from([b"N", b"]", b")", b"}", b"(", b"t", b"\x85", b"\x86", b"\x87", b"l", b"d", b"s", b"u",
                     b"a", b"e", b"\x8f", b"\x90", b"\x91", b"0", b"2", b"1", b"\x94", b"R", b"b", b"\x81",
                     b"\x92", b"\x88", b"\x89", b"K\x05", b"q\x00", b"h\x00", b"h\x01", b"\x97", b"\x98",
                     b"\x8c\x05train", b"\x8c\x05audio", b"G\x7f\xf8\x00\x00\x00\x00\x00\x00"]),
    counted(),
    st.builds(named_global, st.sampled_from(["numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                                             "numpy._core.numeric", "_codecs", "os", "builtins"]),
              st.sampled_from(["ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer", "encode", "system",
                               "eval"]), st.sampled_from([2, 4])),
    st.builds(lambda n, op: op * n, st.integers(1, 30_000), st.sampled_from([b"(", b"]", b"\x85", b"h\x00"])),
    st.builds(lambda size: b"\x95" + struct.pack("<Q", size), st.integers(0, 2**64 - 1)),
)


@fuzz_settings(900)
@given(st.lists(fragments, max_size=24), st.booleans())
def test_opcode_soup(parts, stop):
    load_blob(b"\x80\x04" + b"".join(parts) + (b"." if stop else b""), "opcode soup")


@pytest.mark.parametrize("depth", [250, 10_000, 300_000])
@pytest.mark.parametrize("kind", ["tuple key", "list", "dict", "marks"])
def test_deep_nesting_is_refused(depth, kind):
    """A tuple nested 10^5 deep used as a dict key overflows the C stack inside pickle's own
    hashing: the process dies, so it must be refused before unpickling starts."""
    nest = {"tuple key": b")" + b"\x85" * depth, "list": b"]" * depth + b"a" * (depth - 1),
            "dict": b"}" + b"\x8c\x01k}" * depth + b"s" * depth, "marks": b"(" * depth + b"N" + b"1" * depth}[kind]
    if kind == "tuple key":
        blob = b"\x80\x04}\x8c\x05train}" + nest + b"K\x01su."
    else:
        blob = b"\x80\x04" + nest + b"."
    assert load_blob(blob, "deep nesting") == "error"


def test_short_object_array_state_is_refused():
    """numpy rebuilds an object array of 5 items from a list of 3 by reading past the list
    (a segfault); the loader checks the state first."""
    state = (1, (5,), np.dtype("O"), False, [1, 2, 3])
    data = tiny_file()
    data["train"]["id"] = Forged(RECONSTRUCT, (np.ndarray, (0,), b"b"), state)
    assert load_blob(pickle.dumps(data, protocol=2), "forged numpy objects") == "error"
    with pytest.raises(DataError, match="object array of shape"):
        load_features(TARGET)


def test_forged_dtype_state_is_refused():
    """numpy applies a dtype's pickled state unchecked: a plain V8 given a subarray state makes
    a dtype whose scalars crash np.asarray (found by test_forged_numpy_objects)."""
    dtype = Forged(np.dtype, ("V8", False, True), (3, "|", (np.dtype("f8"), (2,)), None, None, 8, 4, 0))
    data = tiny_file()
    data["train"]["regression_labels"] = Forged(SCALAR, (dtype, b"\0" * 8))
    assert load_blob(pickle.dumps(data, protocol=2), "forged numpy objects") == "error"
    with pytest.raises(DataError, match="forged state for dtype"):
        load_features(TARGET)


@pytest.mark.parametrize("op", COUNTED_OPS + [b"\x95"])
def test_huge_declared_sizes_are_refused_before_allocation(op):
    fmt = LENGTH_FORMAT.get(op, "<Q")
    size = 2 ** (struct.calcsize(fmt) * 8 - 1) - 1
    blob = b"\x80\x04" + op + struct.pack(fmt, size) + b"abc."
    assert load_blob(blob, "declared sizes") == "error"
    with pytest.raises(DataError, match="declares"):
        load_features(TARGET)
