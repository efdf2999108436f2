"""Data-parallel training with torch.distributed, detected from the environment (torchrun).

Each process trains on its shard of every global batch; DistributedDataParallel averages the
gradients. The ULGM needs every sample's representation, so each process all-gathers the
batch's indexes and detached representations and applies the same update: all ranks hold the
same u-labels and centres, as one process with the global batch would.

Global batches are cut from one permutation that every rank draws from the same generator; rank
r takes the r-th of K contiguous pieces, so the all-gathered batch, in rank order, is exactly
the batch a single process with K times the batch size would see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = Context()


def init_from_env(device_type: str) -> Context:
    """Join the process group that torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of row indexes: global batches of `batch_size * world_size` from one random
    permutation, this rank's contiguous piece of each. With world_size 1 it is the usual
    shuffled batching (the same order as a RandomSampler with the same generator).

    A last global batch with fewer rows than ranks is merged into the one before, so that no
    rank ever gets an empty batch."""

    def __init__(self, num_samples: int, batch_size: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def _global_batches(self) -> list[np.ndarray]:
        order = torch.randperm(self.num_samples, generator=self.generator).numpy()
        step = self.batch_size * self.world_size
        batches = [order[i:i + step] for i in range(0, self.num_samples, step)]
        if len(batches) > 1 and len(batches[-1]) < self.world_size:
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield np.array_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples, step)
        if rest and (full == 0 or rest >= self.world_size):
            full += 1
        return full


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate, in rank order, every rank's `x` (whose first dimensions are `sizes`)."""
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def make_gather(ctx: Context):
    """The `gather` hook of `train.train_epoch`: all ranks' indexes and representations."""
    if not ctx.enabled:
        return None

    def gather(index: torch.Tensor, features: dict[str, torch.Tensor]):
        size = torch.tensor([index.shape[0]], device=index.device)
        sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        return (_all_gather_rows(index, counts),
                {k: _all_gather_rows(v.contiguous(), counts) for k, v in features.items()})

    return gather


def wrap(model: torch.nn.Module, ctx: Context, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel around `model`; inputs are already on the right device."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=None, find_unused_parameters=find_unused)
