"""The optimizer: Adam over the model's own parameter groups, taking the sparse gradients of the
CPU word embeddings (selfmm.bert) as dense ones."""

from __future__ import annotations

from typing import Any

import torch

from .configuration import Config


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Adam:
    """Adam with the model's own parameter groups (SPEC 5's five for Self-MM), or one group
    with `lr_other` and `weight_decay_other` for a model without `parameter_groups`."""
    o = cfg.optim
    if hasattr(model, "parameter_groups"):
        lr = {"text": o.lr_text, "audio": o.lr_audio, "vision": o.lr_vision, "other": o.lr_other}
        wd = {"text": o.weight_decay_text, "audio": o.weight_decay_audio,
              "vision": o.weight_decay_vision, "other": o.weight_decay_other}
        groups = model.parameter_groups(lr, wd)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": o.lr_other,
                   "weight_decay": o.weight_decay_other, "name": "other"}]
    # The fused kernel updates all tensors in one pass: ~6x faster than the default per-tensor
    # loop on the CPU over MiniLM's 23M weights, equal to it within float32 rounding.
    optimizer = torch.optim.Adam(groups, fused=True)
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
