"""Counting, on the CPU, the reads that make the host wait for the device on CUDA.

A CUDA kernel runs after the host has queued it; the host waits (a "sync") when it reads a
value the device computes: a Python scalar (`.item()`, `bool(t)`, `int(t)`, `float(t)`), a
`.tolist()` or `.cpu()` copy, or an operation whose output size depends on the data
(`nonzero`, boolean-mask indexing, `masked_select`, `repeat_interleave` without an output
size, `unique`). `SyncCounter` counts those operations wherever they run, so a CPU test can
bound what a training step would cost on a GPU. Host tensors read through `.numpy()` are not
counted: `.numpy()` refuses a CUDA tensor, so code that uses it reads host memory only.
Blocking host-to-device copies are invisible on the CPU; the GPU check counts them
(benchmarks/gpu.py, with torch.cuda.set_sync_debug_mode).
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_DATA_DEPENDENT = {
    torch.ops.aten._local_scalar_dense.default: "scalar read",
    torch.ops.aten.nonzero.default: "nonzero",
    torch.ops.aten.masked_select.default: "masked_select",
    torch.ops.aten.unique_dim.default: "unique",
    torch.ops.aten._unique2.default: "unique",
}
_BOOL_INDEXED = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
                 torch.ops.aten._index_put_impl_.default}


def _bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _caller() -> str:
    """file:line of the innermost selfmm frame that led here."""
    for frame in reversed(traceback.extract_stack()):
        if "/selfmm/" in frame.filename:
            return f"{frame.filename.rsplit('/selfmm/', 1)[1]}:{frame.lineno}"
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: Counter, where: Counter, paused: list[bool]) -> None:
        super().__init__()
        self.counts, self.where, self.paused = counts, where, paused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _DATA_DEPENDENT.get(func)
        if kind is None and func in _BOOL_INDEXED and _bool_index(args[1]):
            kind = "boolean mask index"
        if kind is None and func is torch.ops.aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            kind = "repeat_interleave"
        if kind is not None and not self.paused[0]:
            self.counts[kind] += 1
            self.where[_caller()] += 1
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, counts: Counter, where: Counter, paused: list[bool]) -> None:
        super().__init__()
        self.counts, self.where, self.paused = counts, where, paused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.tolist, torch.Tensor.cpu) and not self.paused[0]:
            self.counts[func.__name__] += 1
            self.where[_caller()] += 1
        return func(*args, **kwargs)


class SyncCounter:
    """`with SyncCounter() as c: ...`; then `c.total`, `c.counts` (by kind) and `c.where`
    (by the selfmm source line that caused them)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.where: Counter = Counter()
        self._paused = [False]
        self._modes = (_Function(self.counts, self.where, self._paused),
                       _Dispatch(self.counts, self.where, self._paused))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Count nothing inside: for reads the caller knows are of host tensors."""
        self._paused[0] = True
        try:
            yield
        finally:
            self._paused[0] = False

    def __enter__(self) -> SyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
