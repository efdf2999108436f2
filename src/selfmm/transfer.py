"""Host-to-device copies that never make the host wait for the device.

A CUDA copy from ordinary (pageable) host memory blocks the host until the copy is done, and
so until the device has finished everything queued before it; from pinned memory it is queued
like a kernel and the host runs on. PyTorch's caching host allocator keeps a pinned staging
buffer alive until the copy that reads it has run, so a temporary one is safe.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the host) on `device`, copied without blocking the host on CUDA."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    pinned = tensor if tensor.is_pinned() else tensor.pin_memory()
    return pinned.to(device, non_blocking=True)
