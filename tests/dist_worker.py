"""Worker for tests/test_distributed.py: trains a few epochs and saves this rank's u-labels.

Run under torchrun (K processes, per-rank batch b) or as a plain script (one process, batch
K*b); the two must give the same u-labels.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModel

from selfmm import configuration as config
from selfmm import distributed
from selfmm.data.batch import Batch
from selfmm.data.mmsa import load_features
from selfmm.model import SelfMM
from selfmm.train import make_optimizer, seed_everything, train_epoch, train_loader
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
