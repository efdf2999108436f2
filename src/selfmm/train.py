"""Training one seed (SPEC 5): the loop, model selection, checkpoints, testing the best weights.

`fit_seed` trains Self-MM, or any model that follows selfmm.models' protocol, with the ULGM,
the tanh weights, gradient accumulation, early stopping, checkpoints and exact resume, into a
seed directory (layout in selfmm.runs). Building the model is selfmm.models', running it on a
split selfmm.inference's, the process's device and random state selfmm.runtime's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint, distributed
from .configuration import Config
from .data.batch import Batch, Collator
from .data.layout import SPLITS
from .data.mmsa import check_label_range
from .data.types import FeatureData, Split
from .errors import SelfMMError
from .inference import Predictions, check_text, encode_all_text, forward, predict
from .io import write_bytes, write_json
from .metrics import regression_metrics
from .model import Heads, SelfMM
from .models import ModelBuilder, check_model, class_path, save_encoder_files, weights_bytes
from .optim import make_optimizer
from .pools import forked_without_interrupts
from .precision import autocast, check_precision
from .resume import finished_seed
from .runs import (
    BEST_WEIGHTS,
    ENCODER,
    HISTORY,
    METRICS,
    PREDICTIONS,
    ULABELS,
    read_json,
    write_predictions,
    write_seed_config,
    write_ulabels,
)
from .runtime import configure_determinism, rng_state, seed_everything, set_rng_state
from .ulgm import MODALITIES, UnimodalLabelGenerator


class NumericalError(SelfMMError):
    """The loss became NaN or infinite."""


def train_loader(split: Split, cfg: Config, seed: int, epoch: int, pin: bool = False,
                 dist: distributed.Context = distributed.ONE_PROCESS) -> DataLoader:
    # The order of epoch e is a function of (seed, e) alone, so a resumed run sees the same.
    generator = torch.Generator().manual_seed(seed * 10007 + epoch)
    sampler = distributed.ShardedBatchSampler(len(split), cfg.optim.batch_size, generator,
                                              dist.rank, dist.world_size)
    return DataLoader(range(len(split)), batch_sampler=sampler, collate_fn=Collator(split),
                      num_workers=cfg.train.num_workers, pin_memory=pin)


def task_losses(pred: Heads, labels: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                tasks: str) -> dict[str, torch.Tensor]:
    """SPEC 4's loss terms: plain L1 for m; per-sample weighted L1 for each active unimodal task."""
    losses = {"m": (pred.m.float() - labels["m"]).abs().mean()}
    for s in "tav":
        if s.upper() in tasks:
            losses[s] = (weights[s] * (getattr(pred, s).float() - labels[s]).abs()).mean()
    return losses


def text_caches(model: torch.nn.Module, cfg: Config, data: FeatureData,
                device: torch.device) -> dict[str, torch.Tensor]:
    """Self-MM's frozen encoder runs once per clip; its vectors stand in for it every epoch."""
    if not (isinstance(model, SelfMM) and cfg.model.freeze_encoder):
        return {}
    # Each loader draws a seed from the CPU generator; fork it, so that a resumed run
    # continues from exactly the random state its checkpoint restored.
    with torch.random.fork_rng(devices=[]):
        return {name: encode_all_text(model, split, 64, device, cfg.train.precision)
                for name, split in data.splits.items()}


def valid_loss(p: Predictions) -> float:
    """Model selection's criterion: mean absolute error of the multimodal head per clip."""
    return float(np.mean(np.abs(p.heads["m"] - p.labels))) if len(p.labels) else 0.0


# Steps between reads of the loop's checks: each read makes the host wait for the device once.
CHECK_EVERY = 32


class StepChecks:
    """The training loop's checks, accumulated on the device and read every CHECK_EVERY steps
    and at the end of the epoch: reading a value a GPU computes makes the host wait for it, and
    the loop would otherwise do so several times per step. A fault found at a read names the
    first batch where it happened; the steps in between changed nothing that is kept (the run
    stops before the epoch's checkpoint)."""

    def __init__(self, device: torch.device, epoch: int, steps: int,
                 dist: distributed.Context = distributed.ONE_PROCESS):
        self.epoch, self.steps, self.dist = epoch, steps, dist
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 1-based batch; 0: none yet
        self.detail: torch.Tensor | None = None  # that batch's per-head losses, then finiteness flags
        self.heads: list[str] = []
        self.total = torch.zeros((), dtype=torch.float64, device=device)  # sum of counted losses
        self.counted = 0

    def add(self, i: int, loss: torch.Tensor, losses: dict[str, torch.Tensor],
            features: dict[str, torch.Tensor], counted: bool = True) -> None:
        """Batch i's loss and representations; `counted`: whether its loss enters the mean."""
        # A representation can overflow while the loss stays finite (an inactive task's head).
        finite = torch.stack([torch.isfinite(loss)] + [torch.isfinite(f).all() for f in features.values()])
        detail = torch.cat([torch.stack([v.detach().float() for v in losses.values()]), finite.float()])
        fresh = (self.first_bad == 0) & ~finite.all()
        self.first_bad = torch.where(fresh, i + 1, self.first_bad)
        self.detail = detail if self.detail is None else torch.where(fresh, detail, self.detail)
        self.heads = list(losses)
        if counted:
            self.total += loss.detach().double()
            self.counted += 1

    def read(self, optimizer: torch.optim.Optimizer) -> float:
        """Raise NumericalError if a batch so far went bad, here or on another rank; else
        return the mean counted loss so far. Under torch.distributed every rank reads at the
        same step and stops together."""
        anywhere = distributed.any_rank(self.dist, self.first_bad)
        values = torch.cat([torch.stack([self.first_bad, anywhere]).double(), self.total.view(1),
                            self.detail.double() if self.detail is not None else self.total.new_zeros(0)]).tolist()
        first, elsewhere, total, *detail = values
        lrs = ", ".join(f"{g.get('name', i)}={g['lr']:.1e}" for i, g in enumerate(optimizer.param_groups))
        if first:
            per_head = dict(zip(self.heads, detail, strict=False))
            flags = detail[len(self.heads):]
            bad_reps = [s for s, ok in zip(MODALITIES, flags[1:], strict=True) if not ok]
            what = "loss" if not flags[0] else f"representation {', '.join(bad_reps)}"
            bad = ", ".join(f"{s}={v:.4g}" for s, v in per_head.items())
            raise NumericalError(f"epoch {self.epoch}, batch {int(first)}/{self.steps}: {what} is not finite "
                                 f"(per head: {bad}; learning rates: {lrs}); the last good checkpoint is kept")
        if elsewhere:
            raise NumericalError(f"epoch {self.epoch}, batch {int(elsewhere)}/{self.steps}: the loss or a "
                                 f"representation is not finite on another process (learning rates: {lrs}); "
                                 "the last good checkpoint is kept")
        return total / max(self.counted, 1)


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                ulgm: UnimodalLabelGenerator, epoch: int, cfg: Config, device: torch.device,
                text_cache: torch.Tensor | None = None, gather: distributed.Gather | None = None,
                progress: str | None = None,
                dist: distributed.Context = distributed.ONE_PROCESS) -> float:
    """One pass over the training data in SPEC 4's order; returns the mean loss per batch.
    `progress`: the description of a progress bar, or None for none. `gather` (from
    selfmm.distributed, with a loader from `train_loader`): every rank's share of the batch.

    On CUDA the host never waits for the device inside a step (the checks are read every
    CHECK_EVERY steps, see StepChecks), so it queues the next batch while the device works."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    steps = len(loader)
    checks = StepChecks(device, epoch, steps, dist)
    # The batches pass through the bar's iterator even when it is hidden: CPU matrix kernels
    # round differently with where tensors land in memory, and a run must come out the same
    # bit for bit with the bar shown or not.
    with forked_without_interrupts():  # the loader's workers start here: Ctrl-C is the parent's
        started = iter(loader)
    batches = tqdm(started, total=steps, desc=progress, disable=progress is None, leave=False,
                   dynamic_ncols=True)
    for i, host in enumerate(batches):
        # Step every `accumulation_steps` batches and at the last batch (the reference drops
        # the last partial window's gradients).
        stepping = (i + 1) % cfg.optim.accumulation_steps == 0 or i + 1 == steps
        # Under DDP the gradients are all-reduced only at a batch that steps: the others
        # accumulate on each rank (one all-reduce per optimizer step instead of one per batch).
        with distributed.accumulating(model, not stepping):
            batch: Batch = host.to(device, non_blocking=True)
            with autocast(device, cfg.train.precision):
                out = forward(model, batch, text_cache)
            labels = {s: ulgm.labels[s][batch.index] for s in MODALITIES}
            # The ULGM takes the indexes on the host: it checks them there without a device read.
            losses = task_losses(out.predictions, labels, ulgm.weights(host.index), cfg.train.tasks)
            loss = sum(losses.values())
            features = {s: f.detach().float() for s, f in out.features._asdict().items()}
            index, batch_features, share = host.index, features, 1.0
            if gather is not None:
                step = loader.batch_sampler.step(i)
                index, batch_features = gather(step, features)
                # DDP averages gradients over ranks; weighting each rank by its share of the global
                # batch makes an uneven last batch count every sample once, as one process would
                # (a rank that only stands in has share 0).
                share = step.share
            checks.add(i, loss, losses, features, counted=share > 0)
            (loss * share).backward()
        # The representations are checked above; the ULGM need not read them back itself.
        ulgm.step(index, batch_features, epoch, check_finite=False)
        if stepping:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if (i + 1) % CHECK_EVERY == 0 and i + 1 < steps:
            checks.read(optimizer)
    return checks.read(optimizer)


# ---------------------------------------------------------------------------------------------
# One seed: fit with early stopping and resume, then test the best weights.


@dataclass
class TrainingState:
    """Everything an epoch changes, and so everything a checkpoint holds."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ulgm: UnimodalLabelGenerator
    epoch: int = 0  # the last finished epoch
    history: list[dict[str, float]] = field(default_factory=list)
    label_history: list[dict[str, torch.Tensor]] = field(default_factory=list)
    best_valid: float = math.inf
    best_epoch: int = 0

    @classmethod
    def start(cls, model: torch.nn.Module, cfg: Config, train: Split, device: torch.device) -> TrainingState:
        ulgm = UnimodalLabelGenerator(
            num_samples=len(train), dims=model.feature_dims, H=cfg.labels.H,
            exclude_zero=cfg.labels.exclude_zero, centres=cfg.labels.centres).to(device)
        ulgm.init_labels(torch.arange(len(train), device=device), torch.as_tensor(train.labels, device=device))
        state = cls(model, make_optimizer(model, cfg), ulgm)
        state.label_history.append(state.current_labels())
        return state

    def current_labels(self) -> dict[str, torch.Tensor]:
        return {s: self.ulgm.labels[s].cpu().clone() for s in MODALITIES}

    def keep_training(self, cfg: Config) -> bool:
        """Early stopping (SPEC 5) and the optional epoch limit, for the next epoch."""
        upcoming = self.epoch + 1
        return (upcoming - self.best_epoch <= cfg.train.early_stop
                and not 0 < cfg.train.max_epochs < upcoming)

    def end_epoch(self, train_loss: float, valid: float, seconds: float) -> bool:
        """Record a finished epoch; whether its validation loss is the best so far."""
        self.epoch += 1
        self.history.append({"epoch": self.epoch, "train_loss": train_loss, "valid_loss": valid,
                             "seconds": seconds})
        self.label_history.append(self.current_labels())
        improved = valid <= self.best_valid - 1e-6
        if improved:
            self.best_valid, self.best_epoch = valid, self.epoch
        return improved

    def checkpoint(self, cfg: Config, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """`rng`: every process's random state, in rank order (see runtime.rng_state)."""
        return {"epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "ulgm": self.ulgm.state_dict(),
                "rng": rng, "history": self.history, "best_valid": self.best_valid,
                "best_epoch": self.best_epoch, "label_history": self.label_history,
                "config": cfg.to_dict()}

    def restore(self, saved: dict[str, Any], device: torch.device, rank: int = 0) -> None:
        """Everything `saved` holds; rank `rank`'s own random state. A rank the checkpoint
        has no state for (a run resumed with more processes) keeps the one it was seeded with."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.ulgm.load_state_dict(saved["ulgm"])
        states = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]  # older: one dict
        if rank < len(states):
            set_rng_state(states[rank], device)
        self.epoch, self.history = saved["epoch"], saved["history"]
        self.best_valid, self.best_epoch = saved["best_valid"], saved["best_epoch"]
        self.label_history = saved["label_history"]


def save_epoch(out: Path, state: TrainingState, improved: bool, train_ids: list[str], cfg: Config,
               rng: list[dict[str, Any]], writer: ThreadPoolExecutor) -> Future:
    """What an epoch leaves in the seed directory, copied now (the next step changes the
    weights in place) and written by `writer` while the next epoch trains (about 1 s of the
    ~270 MB checkpoint's hashing, writing and fsync per epoch); in order, the checkpoint last,
    so that it never claims an epoch whose other files were not written. `rng`: every
    process's random state."""
    best = weights_bytes(state.model) if improved else None
    history, labels = list(state.history), list(state.label_history)
    path, payload = checkpoint.epoch_path(out, state.epoch), checkpoint.serialize(state.checkpoint(cfg, rng))

    def write() -> None:
        if best is not None:
            write_bytes(out / BEST_WEIGHTS, best)
        write_json(out / HISTORY, history)
        write_ulabels(out / ULABELS, train_ids, labels)
        checkpoint.write(path, payload)
        checkpoint.prune(out)

    return writer.submit(write)


def check_data(cfg: Config, data: FeatureData) -> None:
    """What training needs of the data, known before the first step: clips in every split (the
    test split is scored at the end) and labels in the configured dataset's range."""
    for name in SPLITS:
        if len(data.splits[name]) == 0:
            raise SelfMMError(f"{data.path}: split {name!r} has no clips; training needs clips in "
                              f"train and valid, and testing in test")
    check_label_range(data, cfg.dataset)


def start_seed(cfg: Config, data: FeatureData, seed: int, device: torch.device, build: ModelBuilder,
               dist: distributed.Context = distributed.ONE_PROCESS) -> TrainingState:
    """Seed, build and check the model, then its optimizer and ULGM: the state of epoch 0."""
    configure_determinism(device, cfg.train.deterministic)
    seed_everything(seed)
    model = build(data.spec).to(device)
    check_model(model)
    if isinstance(model, SelfMM):
        for name, split in data.splits.items():
            check_text(split.text_bert, model.text_encoder.config, f"{data.path}: split {name!r}: key 'text_bert'")
    state = TrainingState.start(model, cfg, data.splits["train"], device)
    if dist.rank:
        # Every rank built the same model; from here each draws its own dropout masks.
        seed_everything(distributed.rank_seed(seed, dist.rank))
    return state


def run_epochs(state: TrainingState, cfg: Config, data: FeatureData, out: Path, seed: int,
               device: torch.device, dist: distributed.Context, progress: bool,
               log: Callable[[str], None], on_epoch: Callable[[int, float], None] | None) -> dict[str, torch.Tensor]:
    """Epochs until early stopping: each trained, validated, logged and checkpointed. Returns
    the frozen encoder's text vectors (text_caches), which testing reuses."""
    model, train = state.model, data.splits["train"]
    # Unimodal heads are unused when their task is off, and a model of the user's own may hold
    # weights a batch does not reach; DDP must be told.
    net = distributed.wrap(model, dist, find_unused=cfg.train.tasks != "MTAV" or not isinstance(model, SelfMM))
    gather = distributed.make_gather(dist)
    caches = text_caches(model, cfg, data, device)
    # An epoch's files are written while the next epoch trains, one epoch's at a time; all are
    # on disk before testing reads the best weights, and before an error or Ctrl-C ends the run.
    with ThreadPoolExecutor(1, thread_name_prefix="selfmm-checkpoint") as writer:
        written: Future | None = None
        while state.keep_training(cfg):
            epoch, t0 = state.epoch + 1, time.perf_counter()
            loader = train_loader(train, cfg, seed, epoch, pin=device.type == "cuda", dist=dist)
            train_loss = train_epoch(net, state.optimizer, loader, state.ulgm, epoch, cfg, device,
                                     caches.get("train"), gather,
                                     f"seed {seed} epoch {epoch}" if progress else None, dist)
            # Rank 0 validates and the others take its loss: every rank stops at the same epoch.
            valid = valid_loss(predict(model, data.splits["valid"], device, text_cache=caches.get("valid"),
                                       precision=cfg.train.precision)) if dist.is_main else math.nan
            valid = distributed.from_main(dist, valid, device)
            if not math.isfinite(valid):
                # The steps' checks read the loss before each step; the epoch's last optimizer
                # step can still leave non-finite weights, which this epoch's checkpoint would keep.
                raise NumericalError(f"epoch {epoch}: the validation loss is {valid} (non-finite weights after "
                                     "the epoch's last optimizer step); the last good checkpoint is kept")
            improved = state.end_epoch(train_loss, valid, time.perf_counter() - t0)
            if on_epoch is not None:
                on_epoch(epoch, valid)
            log(f"seed {seed} epoch {epoch}: train loss {train_loss:.4f}, valid loss {valid:.4f}"
                + (" (best)" if improved else f" (best {state.best_valid:.4f} at epoch {state.best_epoch})"))
            rng = distributed.all_objects(dist, rng_state(device))
            if dist.is_main:
                if written is not None:
                    written.result()  # the previous epoch's write failed (a full disk): stop here
                written = save_epoch(out, state, improved, list(train.ids), cfg, rng, writer)
        if written is not None:
            written.result()
    return caches


def fit_seed(cfg: Config, data: FeatureData, out: Path, seed: int, device: torch.device,
             build: ModelBuilder, *, resume: bool = False,
             dist: distributed.Context = distributed.ONE_PROCESS,
             progress: bool = False, log: Callable[[str], None] = print,
             on_epoch: Callable[[int, float], None] | None = None,
             provenance: dict[str, Any] | None = None) -> dict[str, float]:
    """Train one seed into `out` and return the test metrics of its best weights.

    `build(data.spec)` makes the model after seeding; `provenance` (see selfmm.provenance) goes
    into the seed's config.json. `on_epoch(epoch, valid_loss)` runs once the epoch's
    validation loss is known, before its checkpoint is written; an exception it raises (e.g. a
    tuner's prune signal) stops the run. Under torch.distributed (`dist`), every rank trains
    its shard and keeps the same ULGM state; only the main rank writes files and tests.
    """
    check_data(cfg, data)
    check_precision(cfg.train.precision, device)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"path": str(Path(data.path).resolve()), **data.spec.to_dict()}

    def write_config(model: torch.nn.Module) -> None:
        # CPU kernels may sum in another order on another thread count: a rerun needs it.
        write_seed_config(out, config=cfg.to_dict(), seed=seed, data=spec, model_class=class_path(type(model)),
                          provenance=provenance, torch_threads=torch.get_num_threads())

    if resume and (out / METRICS).exists():
        if not dist.is_main:
            return read_json(out / METRICS)["test"]
        done = finished_seed(out, list(data.splits["train"].ids), log=log,
                             write_config=lambda: write_config(build(data.spec)))
        if done is not None:
            return done
    state = start_seed(cfg, data, seed, device, build, dist)
    if dist.is_main:
        write_config(state.model)
        save_encoder_files(state.model, cfg.model.text_model, out / ENCODER)
    if resume:
        saved, problems = checkpoint.load_newest(out)
        for line in problems:
            log(f"skipping {line}")
        if saved is not None:
            state.restore(saved, device, dist.rank)
            log(f"seed {seed}: resuming after epoch {state.epoch}")
    caches = run_epochs(state, cfg, data, out, seed, device, dist, progress, log, on_epoch)
    if not dist.is_main:
        return {}
    return test_seed(out, seed, state.model, data, cfg, device, caches, state)


def test_seed(out: Path, seed: int, model: torch.nn.Module, data: FeatureData, cfg: Config,
              device: torch.device, caches: dict[str, torch.Tensor], state: TrainingState) -> dict[str, float]:
    """The best weights on the test split: predictions, metrics.json (which marks the seed done)."""
    model.load_state_dict(load_file(str(out / BEST_WEIGHTS)))
    preds = predict(model, data.splits["test"], device, text_cache=caches.get("test"),
                    precision=cfg.train.precision)
    metrics = regression_metrics(preds.heads["m"], preds.labels, cfg.dataset)
    write_predictions(out / PREDICTIONS, preds.rows())
    write_json(out / METRICS, {"seed": seed, "best_epoch": state.best_epoch,
                               "best_valid_loss": state.best_valid, "test": metrics})
    return metrics
