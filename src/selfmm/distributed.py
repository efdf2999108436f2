"""Data-parallel training with torch.distributed, detected from the environment (torchrun).

Each process trains on its shard of every global batch; DistributedDataParallel averages the
gradients. The ULGM needs every sample's representation, so each process all-gathers the
batch's detached representations and applies the same update: all ranks hold the same
u-labels and centres, as one process with the global batch would.

Global batches are cut from one permutation that every rank draws from the same generator; rank
r takes the r-th of K contiguous pieces, so the all-gathered batch, in rank order, is exactly
the batch a single process with K times the batch size would see. Every rank knows every
global batch, so the gathered rows and their indexes need no exchange of sizes.

Only rank 0 validates: the validation loss, and so early stopping, is broadcast from it, and
the ranks can never stop at different epochs. Each rank draws its own random numbers (dropout
masks), from a seed derived from the run's seed and its rank.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from .errors import SelfMMError
from .ulgm import MODALITIES


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


def processes_from_env() -> int:
    """How many processes torchrun started for this run (WORLD_SIZE); 1 outside torchrun."""
    return max(int(os.environ.get("WORLD_SIZE", "1")), 1)


def init_from_env(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group that torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK, if any;
    returns it with this process's device (cuda:LOCAL_RANK under torchrun on CUDA)."""
    world_size = processes_from_env()
    if world_size <= 1:
        return Context(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise SelfMMError(f"process with LOCAL_RANK {local_rank} has no GPU: this machine has {count} "
                              f"CUDA device(s); start at most {count} processes per node")
        device = torch.device("cuda", local_rank)
        # Before the process group: NCCL binds its communicator to the current device.
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank), device


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's seed for its own random streams; rank 0 keeps the run's seed, so a run in one
    process draws exactly what it always did."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_objects(ctx: Context, obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (collective: every rank must call it)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(ctx: Context, value: float, device: torch.device) -> float:
    """Rank 0's `value` on every rank (collective)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def any_rank(ctx: Context, flag: torch.Tensor) -> torch.Tensor:
    """The maximum of an integer tensor over ranks, on the device (collective, no host wait)."""
    if not ctx.enabled:
        return flag
    flag = flag.clone()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


@dataclass(frozen=True)
class Step:
    """One global batch: its rows in rank order and how many of them each rank holds."""

    rows: np.ndarray  # (n,) int64
    sizes: tuple[int, ...]  # per rank, summing to n; 0 for a rank that only stands in
    rank: int

    @property
    def share(self) -> float:
        """This rank's weight on its loss: DDP averages gradients over the K ranks, and a rank
        holding b of the n rows must count b/n of the batch's mean, so K * b / n."""
        return self.sizes[self.rank] * len(self.sizes) / len(self.rows)


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of row indexes: global batches of `batch_size * world_size` from one random
    permutation, this rank's contiguous piece of each. With world_size 1 it is the usual
    shuffled batching (the same order as a RandomSampler with the same generator).

    A last global batch with fewer rows than ranks stays a batch of its own, as in one process.
    A rank without a row in it still runs the step (DDP's gradient all-reduce and the gather
    need every rank): it computes the batch's first row as a stand-in, and `step(i).share` is
    0 for it, so it adds nothing to the gradients, the u-labels or the loss."""

    def __init__(self, num_samples: int, batch_size: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.generator, self.rank, self.world_size = generator, rank, world_size
        self.batches: list[np.ndarray] = []  # the global batches of the current pass

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_samples, generator=self.generator).numpy()
        size = self.batch_size * self.world_size
        self.batches = [order[i:i + size] for i in range(0, self.num_samples, size)]
        for batch in self.batches:
            rows = np.array_split(batch, self.world_size)[self.rank]
            yield (rows if len(rows) else batch[:1]).tolist()

    def __len__(self) -> int:
        return -(-self.num_samples // (self.batch_size * self.world_size))

    def step(self, i: int) -> Step:
        """The i-th global batch of the pass under way."""
        batch = self.batches[i]
        return Step(batch, tuple(len(p) for p in np.array_split(batch, self.world_size)), self.rank)


def _all_gather_rows(x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
    """Concatenate, in rank order, the first sizes[r] rows of every rank r's `x`."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: sizes[rank]] = x[: sizes[rank]]
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


Gather = Callable[[Step, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def make_gather(ctx: Context) -> Gather | None:
    """The `gather` hook of `train.train_epoch`: the global batch's indexes (on the host) and
    every rank's representations, in one all-gather."""
    if not ctx.enabled:
        return None

    def gather(step: Step, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        widths = [features[s].shape[1] for s in MODALITIES]
        rows = _all_gather_rows(torch.cat([features[s] for s in MODALITIES], dim=1), step.sizes, ctx.rank)
        return torch.from_numpy(step.rows), dict(zip(MODALITIES, rows.split(widths, dim=1), strict=True))

    return gather


def wrap(model: torch.nn.Module, ctx: Context, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel around `model`; inputs are already on the right device.

    Buffers are not broadcast before every forward (DDP's default): the encoder's buffers
    (position and token type ids) are constants, equal on every rank from the start, and the
    ULGM's state lives outside the model, kept equal by its all-gather."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=None, find_unused_parameters=find_unused,
                                   broadcast_buffers=False)


def accumulating(model: torch.nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
    """Inside, with `skip_sync`, a DistributedDataParallel model's backward accumulates its
    gradients on this rank without all-reducing them (`no_sync`); the next backward outside
    all-reduces the sum. Anything else: nothing changes."""
    if skip_sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()
