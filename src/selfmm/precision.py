"""Mixed precision: which operations may run in bf16, and on which hardware.

Only the text encoder's matrix products run in bf16 (`autocast`). The LSTMs and the four
heads run in float32 with autocast off (`full_precision`), and so do the loss, the ULGM and
the metrics, for two reasons:
- under CUDA autocast, PyTorch's cuDNN RNN wrapper (aten/src/ATen/cudnn/AutocastRNN.cpp)
  casts an LSTM's input, weights and states to float16 whatever dtype autocast was given:
  without loss scaling, inputs above 65504 become inf and the small recurrent-weight
  gradients fall below float16's normal range;
- heads under autocast give bf16-rounded predictions (a step of 0.0156 between 2 and 4),
  which moves Acc-7's rounding and SIMS's class edges, and hands the ULGM rounded
  representations.

bf16 on a CPU is used only where the CPU computes it natively (AMX or AVX512-BF16); elsewhere
oneDNN emulates it, slower than float32, and a run asking for it is refused.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

from .configuration import PRECISIONS
from .errors import SelfMMError

# /proc/cpuinfo flags of a CPU with native bf16 matrix products.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX512-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: torch's own probe of the instruction sets, where it has one
        probe = getattr(getattr(torch._C, "_cpu", None), "_is_avx512_bf16_supported", None)
        return bool(probe()) if probe is not None else False
    for line in text.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split() for flag in BF16_FLAGS)
    return False


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot train in, in one line."""
    if precision not in PRECISIONS:
        raise SelfMMError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16():
        raise SelfMMError("precision bf16: this CPU has no native bf16 (neither AMX nor AVX512-BF16), "
                          "where bf16 is slower than fp32; train with `precision=fp32`")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The context a model's forward runs in: bf16 autocast for `precision` "bf16", else none.

    A run trained in bf16 is evaluated in bf16 on any device, native or not (the emulation
    is slower, not different), so that its metrics compare within its precision."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on `x`'s device: what runs inside stays float32 (see the module's docstring)."""
    if not torch.is_autocast_enabled(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)
