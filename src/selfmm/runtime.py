"""The process a run executes in: its device, its random generators, determinism, CPU threads.

Training, evaluation and scoring all start here; nothing in this module knows of models or data.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .checks import Wrong
from .errors import SelfMMError, warn


def device_name(value: Any) -> str | torch.device:
    """A rule of selfmm.checks: a device selfmm runs on; resolve_device says what is wrong."""
    if not isinstance(value, (str, torch.device)):
        raise Wrong("a device: 'cpu', 'cuda', 'cuda:N' or 'auto'", kind=True)
    resolve_device(value)
    return value


def resolve_device(name: str | torch.device | None) -> torch.device:
    name = str(name) if name is not None else "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SelfMMError(f"device {name}: CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    # torch knows many more (meta, xla, mps, ...); a model there fails far from the flag.
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise SelfMMError(f"device {name!r}: not a device selfmm runs on (cpu, cuda, cuda:N or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise SelfMMError(f"device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "cuda":
        # TF32 tensor cores (Ampere and newer) for the float32 matmuls and cuDNN calls (all of
        # an fp32 run's; the LSTMs and heads of a bf16 one): ~1e-3 relative rounding, finer than bf16's.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state: its CPU generators and the CUDA generator of `device`
    alone (the other GPUs are not its own, and may not be visible when the run resumes)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, list):
        # Earlier versions saved the state of every visible GPU.
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def configure_determinism(device: torch.device, enabled: bool) -> None:
    """On CUDA, make every kernel of a run deterministic (`enabled`) or let the fastest run:
    cuBLAS with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when this process makes its
    first cuBLAS handle, so before its first CUDA matrix product), cuDNN's deterministic
    algorithms (its LSTMs) and PyTorch's deterministic kernels (index_add_, the backward of
    index_select, ...); an operation without one warns. The CPU path is deterministic anyway
    and is left alone."""
    if device.type != "cuda":
        return
    if enabled:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.cuda.is_initialized():
            _warn_once("deterministic: CUDA was already used in this process when selfmm set "
                       "CUBLAS_WORKSPACE_CONFIG=:4096:8, and cuBLAS reads it only when it starts: its matrix "
                       "products may not be deterministic. Set CUBLAS_WORKSPACE_CONFIG=:4096:8 before the "
                       "first CUDA operation (or call selfmm first).")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Filling every new tensor with NaN only helps find reads of uninitialised memory, which
        # a correct program does not make; PyTorch's documentation advises turning it off for speed.
        torch.utils.deterministic.fill_uninitialized_memory = False
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """`message` once per process, whatever the warning filters (a notebook's show every one)."""
    if message not in _warned:
        _warned.add(message)
        warn(message)


def global_settings() -> dict[str, Any]:
    """The process-wide torch settings a run changes: TF32, determinism flags, CPU threads."""
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
            "threads": torch.get_num_threads()}


@contextlib.contextmanager
def restored_settings() -> Iterator[None]:
    """Inside, a run may change `global_settings()`; they are as before when it ends, however
    it ends (a notebook goes on with its own). CUBLAS_WORKSPACE_CONFIG stays set: cuBLAS has
    read it already."""
    before = global_settings()
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = before["cudnn_tf32"]
        torch.use_deterministic_algorithms(before["deterministic"], warn_only=before["deterministic_warn_only"])
        torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
        torch.utils.deterministic.fill_uninitialized_memory = before["fill_uninitialized_memory"]
        if torch.get_num_threads() != before["threads"]:
            torch.set_num_threads(before["threads"])


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count lowered to `threads` inside, and restored however it is left."""
    before = torch.get_num_threads()
    if threads is None or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
