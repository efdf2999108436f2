"""Training and evaluation of one seed (SPEC 5): the loop, selection, checkpoints, outputs.

Layout of a seed's directory:
  config.json             resolved configuration, data widths, seed
  encoder/                the encoder's config and tokenizer (the run needs no hub to reload)
  best.safetensors        weights with the lowest validation loss
  checkpoint-epochNNNN.pt everything needed to resume (the two newest are kept)
  history.json            losses per epoch
  ulabels.npz             u-labels of every training clip after every epoch
  test_predictions.csv    all four heads per test clip
  metrics.json            test metrics of the best weights; its presence marks the seed done
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader

from . import checkpoint, distributed
from .config import Config, from_dict
from .data.batch import Batch, Collator
from .data.mmsa import FeatureData, Split
from .encoder import load_tokenizer
from .errors import SelfMMError
from .io import atomic_writer, write_bytes, write_json
from .metrics import regression_metrics
from .model import Heads, SelfMM
from .ulgm import UnimodalLabelGenerator

MODALITIES = ("m", "t", "a", "v")
# Gathers (indexes, features) from every process before the ULGM sees them; the identity
# when training in one process (see selfmm.distributed).
Gather = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NumericalError(SelfMMError):
    """The loss became NaN or infinite."""


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray  # (N,)
    heads: dict[str, np.ndarray]  # m, t, a, v -> (N,)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SelfMMError(f"--device {name}: CUDA is not available on this machine")
    if name.startswith("cuda"):
        # TF32 tensor cores (Ampere and newer) for the float32 matmuls and cuDNN calls that
        # autocast leaves in float32; their ~1e-3 relative rounding is finer than bf16's.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def check_text(text_bert: np.ndarray, encoder_config: Any, where: str) -> None:
    """Token ids must exist in the encoder's vocabulary and each text must fit its positions
    (else the embedding fails mid-run)."""
    top = int(np.asarray(text_bert[:, 0]).max(initial=0))
    if top >= encoder_config.vocab_size:
        raise SelfMMError(f"{where}: token id {top} is outside the text model's vocabulary "
                          f"({encoder_config.vocab_size} ids); the text was tokenized for another model")
    positions = getattr(encoder_config, "max_position_embeddings", None)
    longest = int(np.asarray(text_bert[:, 1]).sum(axis=1).max(initial=0))
    if positions is not None and longest > positions:
        raise SelfMMError(f"{where}: a text of {longest} tokens is longer than the text model's "
                          f"{positions} positions; tokenize with a maximum length of {positions}")


def build_model(cfg: Config, data: FeatureData, encoder: torch.nn.Module) -> SelfMM:
    for name, split in data.splits.items():
        check_text(split.text_bert, encoder.config, f"{data.path}: split {name!r}: key 'text_bert'")
    return SelfMM(encoder, data.audio_dim, data.vision_dim, cfg.model)


def make_optimizer(model: SelfMM, cfg: Config) -> torch.optim.Adam:
    o = cfg.optim
    lr = {"text": o.lr_text, "audio": o.lr_audio, "video": o.lr_video, "other": o.lr_other}
    wd = {"text": o.weight_decay_text, "audio": o.weight_decay_audio,
          "video": o.weight_decay_video, "other": o.weight_decay_other}
    # The fused kernel updates all tensors in one pass: ~6x faster than the default per-tensor
    # loop on the CPU over MiniLM's 23M weights, equal to it within float32 rounding.
    optimizer = torch.optim.Adam(model.parameter_groups(lr, wd), fused=True)
    buffers: dict[torch.nn.Parameter, torch.Tensor] = {}

    def densify(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # Adam needs dense gradients; a sparse one (the word embeddings on the CPU, see
        # selfmm.bert) is added into a zeroed dense buffer that lives across steps, which
        # costs one fill per optimizer step instead of a fresh 47 MB tensor per batch.
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    dense = buffers.setdefault(p, torch.empty_like(p)).zero_()
                    grad = p.grad.coalesce()
                    dense.index_add_(0, grad.indices()[0], grad.values())
                    p.grad = dense

    optimizer.register_step_pre_hook(densify)
    return optimizer


def eval_loader(split: Split, batch_size: int, num_workers: int = 0, pin: bool = False) -> DataLoader:
    # Evaluation never shuffles (the reference does).
    return DataLoader(range(len(split)), batch_size=batch_size, shuffle=False,
                      collate_fn=Collator(split), num_workers=num_workers, pin_memory=pin)


def train_loader(split: Split, cfg: Config, seed: int, epoch: int, pin: bool = False,
                 dist: distributed.Context = distributed.Context()) -> DataLoader:
    # The order of epoch e is a function of (seed, e) alone, so a resumed run sees the same.
    generator = torch.Generator().manual_seed(seed * 10007 + epoch)
    sampler = distributed.ShardedBatchSampler(len(split), cfg.optim.batch_size, generator,
                                              dist.rank, dist.world_size)
    return DataLoader(range(len(split)), batch_sampler=sampler, collate_fn=Collator(split),
                      num_workers=cfg.train.num_workers, pin_memory=pin)


def autocast(device: torch.device):
    # bf16 on CUDA; on the CPU full precision (CPU bf16 is slower on most machines and less exact).
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def task_losses(pred: Heads, labels: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                tasks: str) -> dict[str, torch.Tensor]:
    """SPEC 4's loss terms: plain L1 for m; per-sample weighted L1 for each active unimodal task."""
    losses = {"m": (pred.m.float() - labels["m"]).abs().mean()}
    for s in "tav":
        if s.upper() in tasks:
            losses[s] = (weights[s] * (getattr(pred, s).float() - labels[s]).abs()).mean()
    return losses


@torch.no_grad()
def encode_all_text(model: SelfMM, split: Split, batch_size: int, device: torch.device) -> torch.Tensor:
    """A frozen encoder's [CLS] vector for every clip of `split`, computed once: (N, text_out)."""
    model.eval()
    out = []
    for batch in eval_loader(split, batch_size):
        with autocast(device):
            out.append(model.encode_text(batch.text.to(device)).float())
    return torch.cat(out) if out else torch.zeros(0, model.text_head.layer_1.in_features, device=device)


@torch.inference_mode()
def predict(model: SelfMM, split: Split, device: torch.device, batch_size: int = 64,
            text_cache: torch.Tensor | None = None) -> Predictions:
    model.eval()
    heads: dict[str, list[np.ndarray]] = {s: [] for s in MODALITIES}
    for batch in eval_loader(split, batch_size, pin=device.type == "cuda"):
        batch = batch.to(device, non_blocking=True)
        cached = None if text_cache is None else text_cache[batch.index]
        with autocast(device):
            out = model(batch, text_vector=cached)
        for s in MODALITIES:
            heads[s].append(getattr(out.predictions, s).float().cpu().numpy())
    return Predictions(
        ids=list(split.ids),
        labels=np.asarray(split.labels, dtype=np.float32),
        heads={s: np.concatenate(v) if v else np.zeros(0, np.float32) for s, v in heads.items()},
    )


def valid_loss(p: Predictions) -> float:
    """Model selection's criterion: mean absolute error of the multimodal head per clip."""
    return float(np.mean(np.abs(p.heads["m"] - p.labels))) if len(p.labels) else 0.0


def train_epoch(model: SelfMM, optimizer: torch.optim.Optimizer, loader: DataLoader,
                ulgm: UnimodalLabelGenerator, epoch: int, cfg: Config, device: torch.device,
                text_cache: torch.Tensor | None = None, gather: Gather | None = None,
                progress: Callable | None = None) -> float:
    """One pass over the training data in SPEC 4's order; returns the mean loss per batch."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    steps, total = len(loader), 0.0
    for i, batch in enumerate(progress(loader) if progress else loader):
        batch: Batch = batch.to(device, non_blocking=True)
        with autocast(device):
            out = model(batch, None if text_cache is None else text_cache[batch.index])
        labels = {s: ulgm.labels[s][batch.index] for s in MODALITIES}
        losses = task_losses(out.predictions, labels, ulgm.weights(batch.index), cfg.train.tasks)
        loss = sum(losses.values())
        # A representation can overflow while the loss stays finite (an inactive task's head).
        bad_reps = [s for s, f in out.features._asdict().items() if not bool(torch.isfinite(f).all())]
        if not torch.isfinite(loss) or bad_reps:
            what = "loss" if not torch.isfinite(loss) else f"representation {', '.join(bad_reps)}"
            bad = ", ".join(f"{s}={v.item():.4g}" for s, v in losses.items())
            lrs = ", ".join(f"{g['name']}={g['lr']:.1e}" for g in optimizer.param_groups)
            raise NumericalError(f"epoch {epoch}, batch {i + 1}/{steps}: {what} is not finite "
                                 f"(per head: {bad}; learning rates: {lrs}); "
                                 "the last good checkpoint is kept")
        features = {s: f.detach().float() for s, f in out.features._asdict().items()}
        index, share = batch.index, 1.0
        if gather is not None:
            index, features = gather(index, features)
            # DDP averages gradients over ranks; weighting each rank by its share of the global
            # batch makes an uneven last batch count every sample once, as one process would.
            share = len(batch) * torch.distributed.get_world_size() / len(index)
        (loss * share).backward()
        ulgm.step(index, features, epoch)
        # Step every `accumulation_steps` batches and at the last batch (the reference drops
        # the last partial window's gradients).
        if (i + 1) % cfg.optim.accumulation_steps == 0 or i + 1 == steps:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.item()
    return total / max(steps, 1)


# ---------------------------------------------------------------------------------------------
# One seed: fit with early stopping and resume, then test the best weights.


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_ulabels(path: Path, ids: list[str], history: list[dict[str, torch.Tensor]]) -> None:
    """u-labels after initialisation (row 0) and after every epoch (row e): compact npz."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=np.asarray(ids),
                        m=history[0]["m"].numpy(),
                        **{s: np.stack([h[s].numpy() for h in history]) for s in "tav"})
    write_bytes(path, buffer.getvalue())


def _write_predictions(path: Path, p: Predictions) -> None:
    with atomic_writer(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "pred_m", "pred_t", "pred_a", "pred_v"])
        for j, clip in enumerate(p.ids):
            writer.writerow([clip, f"{p.labels[j]:.6g}", *(f"{p.heads[s][j]:.6g}" for s in MODALITIES)])


def save_encoder_files(name: str, encoder: torch.nn.Module, directory: Path) -> None:
    """The encoder's config, and its tokenizer when it has one, so the run reloads offline."""
    encoder.config.save_pretrained(str(directory))
    try:
        load_tokenizer(name).save_pretrained(str(directory))
    except (SelfMMError, OSError, ValueError):
        # An encoder without a tokenizer (e.g. one built from a config in a test) can still be
        # trained and evaluated on feature files; only scoring raw transcripts needs one.
        pass


def run_config(cfg: Config, data: FeatureData, seed: int) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "seed": seed,
            "data": {"path": data.path, "audio_dim": data.audio_dim, "vision_dim": data.vision_dim,
                     "audio_features": data.audio_features, "aligned": data.aligned,
                     "train_size": len(data.splits["train"])}}


def fit_seed(cfg: Config, data: FeatureData, out: Path, seed: int, device: torch.device,
             encoder_factory: Callable[[], torch.nn.Module], *, resume: bool = False,
             dist: distributed.Context = distributed.Context(),
             progress: Callable[[str], Callable] | None = None, log: Callable[[str], None] = print,
             on_epoch: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Train one seed into `out` and return the test metrics of its best weights.

    `on_epoch(epoch, valid_loss)` runs once the epoch's validation loss is known, before its
    checkpoint is written; an exception it raises (e.g. a tuner's prune signal) stops the run.
    Under torch.distributed (`dist`), every rank trains its shard and keeps the same ULGM state;
    only the main rank writes files, and only it evaluates on the test split.
    """
    is_main = dist.is_main
    for name in ("train", "valid"):
        if len(data.splits[name]) == 0:
            raise SelfMMError(f"{data.path}: split {name!r} has no clips; training needs train and valid clips")
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())["test"]
    seed_everything(seed)
    model = build_model(cfg, data, encoder_factory()).to(device)
    optimizer = make_optimizer(model, cfg)
    train = data.splits["train"]
    m = cfg.model
    ulgm = UnimodalLabelGenerator(
        num_samples=len(train),
        dims={"m": m.post_fusion_dim, "t": m.post_text_dim, "a": m.post_audio_dim, "v": m.post_video_dim},
        H=cfg.labels.H, exclude_zero=cfg.labels.exclude_zero, centres=cfg.labels.centres,
    ).to(device)
    ulgm.init_labels(torch.arange(len(train), device=device), torch.as_tensor(train.labels, device=device))
    if is_main:
        write_json(out / "config.json", run_config(cfg, data, seed))
        save_encoder_files(cfg.model.text_model, model.text_encoder, out / "encoder")
    history: list[dict[str, float]] = []
    label_history = [{s: ulgm.labels[s].cpu().clone() for s in MODALITIES}]
    start, best_valid, best_epoch = 1, math.inf, 0

    if resume:
        state, problems = checkpoint.load_newest(out)
        for line in problems:
            log(f"skipping {line}")
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            ulgm.load_state_dict(state["ulgm"])
            _set_rng_state(state["rng"])
            history, best_valid, best_epoch = state["history"], state["best_valid"], state["best_epoch"]
            label_history = state["label_history"]
            start = state["epoch"] + 1
            log(f"seed {seed}: resuming after epoch {state['epoch']}")

    # Every unimodal head is unused when its task is off; DDP must be told.
    net = distributed.wrap(model, dist, find_unused=cfg.train.tasks != "MTAV")
    gather = distributed.make_gather(dist)
    caches = {}
    if cfg.model.freeze_encoder:
        # Each loader draws a seed from the CPU generator; fork it, so that a resumed run
        # continues from exactly the random state its checkpoint restored.
        with torch.random.fork_rng(devices=[]):
            caches = {name: encode_all_text(model, split, 64, device) for name, split in data.splits.items()}

    epoch = start
    while epoch - best_epoch <= cfg.train.early_stop and not (0 < cfg.train.max_epochs < epoch):
        t0 = time.perf_counter()
        loader = train_loader(train, cfg, seed, epoch, pin=device.type == "cuda", dist=dist)
        bar = progress(f"seed {seed} epoch {epoch}") if progress else None
        train_loss = train_epoch(net, optimizer, loader, ulgm, epoch, cfg, device,
                                 caches.get("train"), gather, bar)
        valid = valid_loss(predict(model, data.splits["valid"], device, text_cache=caches.get("valid")))
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid,
                        "seconds": time.perf_counter() - t0})
        label_history.append({s: ulgm.labels[s].cpu().clone() for s in MODALITIES})
        if on_epoch is not None:
            on_epoch(epoch, valid)
        improved = valid <= best_valid - 1e-6
        if improved:
            best_valid, best_epoch = valid, epoch
        log(f"seed {seed} epoch {epoch}: train loss {train_loss:.4f}, valid loss {valid:.4f}"
            + (" (best)" if improved else f" (best {best_valid:.4f} at epoch {best_epoch})"))
        if is_main:
            if improved:
                write_bytes(out / "best.safetensors", save_safetensors(
                    {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
            write_json(out / "history.json", history)
            _write_ulabels(out / "ulabels.npz", list(train.ids), label_history)
            checkpoint.save(checkpoint.epoch_path(out, epoch), {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ulgm": ulgm.state_dict(), "rng": _rng_state(), "history": history,
                "best_valid": best_valid, "best_epoch": best_epoch, "label_history": label_history,
                "config": cfg.to_dict(),
            })
            checkpoint.prune(out)
        epoch += 1

    if not is_main:
        return {}
    metrics, preds = evaluate_run(out, data, "test", device, model=model, cfg=cfg, caches=caches)
    if is_main:
        _write_predictions(out / "test_predictions.csv", preds)
        write_json(out / "metrics.json", {"seed": seed, "best_epoch": best_epoch,
                                          "best_valid_loss": best_valid, "test": metrics})
    return metrics


def load_run(run: Path, device: torch.device) -> tuple[Config, SelfMM, dict[str, Any]]:
    """Rebuild a trained model from its seed directory: config, encoder config, best weights."""
    from transformers import AutoConfig, AutoModel

    try:
        saved = json.loads((run / "config.json").read_text())
        enc_cfg = AutoConfig.from_pretrained(str(run / "encoder"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SelfMMError(f"{run} is not a selfmm run directory (config.json, encoder/): {exc}") from None
    cfg = from_dict(saved["config"])
    encoder = AutoModel.from_config(enc_cfg)
    model = SelfMM(encoder, saved["data"]["audio_dim"], saved["data"]["vision_dim"], cfg.model)
    weights = run / "best.safetensors"
    if not weights.exists():
        raise SelfMMError(f"{weights} does not exist: the run never finished an epoch")
    model.load_state_dict(load_file(str(weights)))
    return cfg, model.to(device), saved


def evaluate_run(run: Path, data: FeatureData, split: str, device: torch.device,
                 model: SelfMM | None = None, cfg: Config | None = None,
                 caches: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, float], Predictions]:
    """Metrics of the run's best weights on `split` of `data` (reloaded from disk)."""
    if model is None or cfg is None:
        cfg, model, saved = load_run(run, device)
        for key in ("audio_dim", "vision_dim"):
            if saved["data"][key] != getattr(data, key):
                raise SelfMMError(f"{data.path}: {key} is {getattr(data, key)}, but the run at {run} "
                                  f"was trained with {saved['data'][key]}")
    else:
        model.load_state_dict(load_file(str(run / "best.safetensors")))
    if split not in data.splits:
        raise SelfMMError(f"{data.path}: no split {split!r}")
    preds = predict(model, data.splits[split], device,
                    text_cache=(caches or {}).get(split) if caches else None)
    return regression_metrics(preds.heads["m"], preds.labels, cfg.dataset), preds


