"""Worker for tests/test_distributed.py.

`labels`: trains a few epochs and saves this rank's u-labels. Run under torchrun (K processes,
per-rank batch b) or as a plain script (one process, batch K*b); the two must give the same
u-labels.

`syncs`: one epoch under torchrun, counting DDP's gradient all-reduces (rounds of its
communication hook, one per backward that synchronises) and buffer broadcasts.

`stop`: `selfmm.fit` under torchrun, with a validation loss that would differ by rank (flat on
rank 0, improving every epoch on the others); saves the epochs and validation losses each rank
went through, and the seed of its own random streams.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModel

import selfmm
from selfmm import configuration as config
from selfmm import distributed, train
from selfmm.data.batch import Batch
from selfmm.data.mmsa import load_features
from selfmm.model import SelfMM
from selfmm.optim import make_optimizer
from selfmm.runtime import seed_everything
from selfmm.train import train_epoch, train_loader
from selfmm.ulgm import UnimodalLabelGenerator


def _batch_in_float64(self: Batch, device, non_blocking: bool = False) -> Batch:
    moved = _to(self, device, non_blocking)
    moved.audio, moved.vision = moved.audio.double(), moved.vision.double()
    return moved


_to = Batch.to


def main(data_path: str, encoder_path: str, out: str, batch_size: int, epochs: int, dtype: str) -> None:
    warnings.simplefilter("ignore")
    # In float64 what is compared is the algorithm (sharding, gradient averaging, all-gathered
    # label updates), not the order of float32 sums, which the label rule's division by
    # alpha_m amplifies (SPEC 4, "Precision").
    double = dtype == "float64"
    if double:
        torch.set_default_dtype(torch.float64)
        Batch.to = _batch_in_float64
    dist, _ = distributed.init_from_env(torch.device("cpu"))
    # Dropout off everywhere (the encoder is frozen, so it runs in eval mode): each rank would
    # otherwise draw other masks than the single process.
    cfg = config.with_values(config.defaults_for("mosi"), {
        "batch_size": batch_size, "freeze_encoder": True, "post_fusion_dropout": 0.0,
        "post_text_dropout": 0.0, "post_audio_dropout": 0.0, "post_vision_dropout": 0.0,
    })
    data = load_features(data_path)
    train = data.splits["train"]
    seed_everything(5)
    model = SelfMM(AutoModel.from_pretrained(encoder_path), data.audio_dim, data.vision_dim, cfg.model)
    model = model.double() if double else model
    optimizer = make_optimizer(model, cfg)
    ulgm = UnimodalLabelGenerator(len(train), {"m": 128, "t": 32, "a": 16, "v": 32}, H=3.0)
    ulgm.init_labels(torch.arange(len(train)), torch.as_tensor(train.labels))
    net = distributed.wrap(model, dist, find_unused=False)
    for epoch in range(1, epochs + 1):
        loader = train_loader(train, cfg, seed=5, epoch=epoch, dist=dist)
        train_epoch(net, optimizer, loader, ulgm, epoch, cfg, torch.device("cpu"),
                    gather=distributed.make_gather(dist), dist=dist)
    torch.save({s: ulgm.labels[s].clone() for s in "mtav"},
               Path(out) / f"labels-{dtype}-{dist.world_size}-{dist.rank}.pt")
    distributed.shutdown(dist)


def syncs(data_path: str, encoder_path: str, out: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    warnings.simplefilter("ignore")
    dist, _ = distributed.init_from_env(torch.device("cpu"))
    counts = {"allreduce_rounds": 0, "broadcasts": 0, "optimizer_steps": 0, "batches": 0}

    def counting_hook(state, bucket):
        counts["allreduce_rounds"] += bucket.is_last()
        return allreduce_hook(state, bucket)

    broadcast = DistributedDataParallel._distributed_broadcast_coalesced

    def counting_broadcast(self, *args, **kwargs):
        counts["broadcasts"] += 1
        return broadcast(self, *args, **kwargs)

    DistributedDataParallel._distributed_broadcast_coalesced = counting_broadcast
    cfg = config.with_values(config.defaults_for("mosi"), {"batch_size": 4})
    data = load_features(data_path)
    train = data.splits["train"]
    seed_everything(5)
    model = SelfMM(AutoModel.from_pretrained(encoder_path), data.audio_dim, data.vision_dim, cfg.model)
    optimizer = make_optimizer(model, cfg)
    optimizer.register_step_post_hook(lambda *args: counts.__setitem__("optimizer_steps",
                                                                       counts["optimizer_steps"] + 1))
    ulgm = UnimodalLabelGenerator(len(train), {"m": 128, "t": 32, "a": 16, "v": 32}, H=3.0)
    ulgm.init_labels(torch.arange(len(train)), torch.as_tensor(train.labels))
    net = distributed.wrap(model, dist, find_unused=False)
    net.register_comm_hook(None, counting_hook)
    loader = train_loader(train, cfg, seed=5, epoch=1, dist=dist)
    counts["batches"] = len(loader)
    train_epoch(net, optimizer, loader, ulgm, 1, cfg, torch.device("cpu"), gather=distributed.make_gather(dist),
                dist=dist)
    (Path(out) / f"syncs-{dist.rank}.json").write_text(json.dumps(counts))
    # Both ranks done before either tears gloo down (once, rank 1 aborted in teardown:
    # "terminate called without an active exception").
    distributed.barrier(dist)
    distributed.shutdown(dist)


def stop(data_path: str, encoder_path: str, out: str) -> None:
    warnings.simplefilter("ignore")
    rank = int(os.environ["RANK"])
    seen: list[tuple[int, float]] = []
    epochs = iter(range(1, 100))
    train.valid_loss = lambda predictions: 1.0 if rank == 0 else 1.0 / next(epochs)
    end_epoch = train.TrainingState.end_epoch

    def recorded(self, train_loss: float, valid: float, seconds: float) -> bool:
        seen.append((self.epoch + 1, valid))
        return end_epoch(self, train_loss, valid, seconds)

    train.TrainingState.end_epoch = recorded
    cfg = selfmm.config("mosi", text_model=encoder_path, early_stop=1, max_epochs=4, batch_size=4)
    selfmm.fit(cfg, load_features(data_path), Path(out) / "run", seeds=[3], device="cpu", progress=False)
    (Path(out) / f"stop-{rank}.json").write_text(json.dumps({"epochs": seen, "seed": torch.initial_seed()}))


if __name__ == "__main__":
    if sys.argv[1] == "stop":
        stop(*sys.argv[2:5])
    elif sys.argv[1] == "syncs":
        syncs(*sys.argv[2:5])
    else:
        main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
