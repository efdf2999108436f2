"""A trained model on data: its forward pass, every head's predictions on a split, the checks
that a split's text fits the model's encoder.

What evaluation, scoring and serving run, and what training calls to validate; it knows
nothing of the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.batch import Batch, Collator
from .data.types import Split
from .errors import SelfMMError
from .model import SelfMM, SelfMMOutput
from .models import check_model, class_path
from .precision import autocast
from .ulgm import MODALITIES


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray  # (N,)
    heads: dict[str, np.ndarray]  # m, t, a, v -> (N,)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per clip: id, label, pred_m, pred_t, pred_a, pred_v."""
        return [{"id": clip, "label": float(self.labels[j]),
                 **{f"pred_{s}": float(self.heads[s][j]) for s in MODALITIES}}
                for j, clip in enumerate(self.ids)]


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


def check_outputs(model: torch.nn.Module, split: Split, batch_size: int, device: torch.device) -> None:
    """Run a model of your own on one batch of `split`, as training will, and check what it
    returns before any training: each head's predictions (B,) and each representation
    (B, feature_dims[s]), floating and finite, the predictions differentiable. Today's most
    common slip, predictions of shape (B, 1), would otherwise train a whole run on a loss
    broadcast to (B, B). SelfMMError naming the class and the output."""
    check_model(model)
    name = class_path(type(model))
    batch = Collator(split)(list(range(min(len(split), batch_size)))).to(device)
    size = int(batch.index.shape[0])
    model.train()
    out = forward(model, batch)
    for s in MODALITIES:
        for what, value, shape in (("predictions", out.predictions, (size,)),
                                   ("features", out.features, (size, model.feature_dims[s]))):
            tensor = getattr(value, s)
            where = f"model {name}: forward's {what}.{s}"
            if not isinstance(tensor, torch.Tensor):
                raise SelfMMError(f"{where} is a {type(tensor).__name__}, not a tensor")
            if tuple(tensor.shape) != shape or not tensor.is_floating_point():
                raise SelfMMError(f"{where} is {tensor.dtype} of shape {tuple(tensor.shape)}; expected a "
                                  f"floating tensor of shape {shape} (batch of {size}"
                                  + (f", feature_dims[{s!r}] = {shape[1]})" if len(shape) == 2 else ")"))
            if not bool(torch.isfinite(tensor.detach()).all()):
                raise SelfMMError(f"{where} holds NaN or infinite values on the first batch")
            if what == "predictions" and not tensor.requires_grad:
                raise SelfMMError(f"{where} does not require grad: the loss could not train the model "
                                  "(detached, or computed under torch.no_grad)")


def eval_loader(split: Split, batch_size: int, num_workers: int = 0, pin: bool = False) -> DataLoader:
    # Evaluation never shuffles (the reference does).
    return DataLoader(range(len(split)), batch_size=batch_size, shuffle=False,
                      collate_fn=Collator(split), num_workers=num_workers, pin_memory=pin)


def forward(model: torch.nn.Module, batch: Batch, text_cache: torch.Tensor | None = None) -> SelfMMOutput:
    """The model's output for a batch; a cached frozen encoder's [CLS] vectors replace its own."""
    out = model(batch) if text_cache is None else model(batch, text_cache[batch.index])
    if not isinstance(out, SelfMMOutput):
        raise SelfMMError(f"model {class_path(type(model))}: forward returned "
                          f"{type(out).__name__}, not a selfmm.SelfMMOutput")
    return out


@torch.inference_mode()
def predict(model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 64,
            text_cache: torch.Tensor | None = None, precision: str = "fp32") -> Predictions:
    """Every head's predictions on `split`, in the `precision` the model was trained in."""
    model.eval()
    heads: dict[str, list[np.ndarray]] = {s: [] for s in MODALITIES}
    for batch in eval_loader(split, batch_size, pin=device.type == "cuda"):
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            out = forward(model, batch, text_cache)
        for s in MODALITIES:
            heads[s].append(getattr(out.predictions, s).float().cpu().numpy())
    return Predictions(
        ids=list(split.ids),
        labels=np.asarray(split.labels, dtype=np.float32),
        heads={s: np.concatenate(v) if v else np.zeros(0, np.float32) for s, v in heads.items()},
    )


@torch.no_grad()
def encode_all_text(model: SelfMM, split: Split, batch_size: int, device: torch.device,
                    precision: str = "fp32") -> torch.Tensor:
    """A frozen encoder's [CLS] vector for every clip of `split`, computed once: (N, text_out)."""
    model.eval()
    out = []
    for batch in eval_loader(split, batch_size):
        with autocast(device, precision):
            out.append(model.encode_text(batch.text.to(device)).float())
    return torch.cat(out) if out else torch.zeros(0, model.text_head.layer_1.in_features, device=device)
