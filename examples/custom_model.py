"""A model of your own trained with Self-MM's unimodal label generation (docs/custom-model.md).

One vector per modality (mean word embedding, mean audio frame, mean vision frame), a small
Transformer over the three, and Self-MM's four heads on its outputs. The ULGM needs nothing
else: the widths of the four representations (`feature_dims`) and a forward that returns
predictions and representations per modality.
"""

from __future__ import annotations

import torch
from torch import nn

import selfmm

WIDTH = 32
VOCAB_BUCKETS = 4096  # token ids are hashed into this many rows: any tokenizer's ids fit


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over each clip's valid frames; zeros for a clip with none. (B, L, D) -> (B, D)."""
    valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]  # (B, L)
    total = (x * valid.unsqueeze(-1)).sum(dim=1)
    return total / valid.sum(dim=1, keepdim=True).clamp(min=1)


class Head(nn.Module):
    """Representation F = ReLU(Linear(x)); prediction y = Linear(F)."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.feature = nn.Linear(width, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.feature(x))
        return f, self.out(f).squeeze(-1)


class TransformerFusion(nn.Module):
    feature_dims = {"m": 64, "t": 32, "a": 16, "v": 16}

    def __init__(self, data: selfmm.DataSpec, cfg: selfmm.Config):
        super().__init__()
        self.words = nn.Embedding(VOCAB_BUCKETS, WIDTH)
        self.audio = nn.Linear(data.audio_dim, WIDTH)
        self.vision = nn.Linear(data.vision_dim, WIDTH)
        self.modality = nn.Parameter(torch.zeros(3, WIDTH))  # which token is which modality
        layer = nn.TransformerEncoderLayer(WIDTH, nhead=4, dim_feedforward=64, dropout=0.1,
                                           batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.heads = nn.ModuleDict({s: Head(WIDTH, d) for s, d in self.feature_dims.items()})

    def forward(self, batch: selfmm.Batch) -> selfmm.SelfMMOutput:
        ids, mask = batch.text[:, 0], batch.text[:, 1]  # (B, L) each; the mask is right-padded
        text = masked_mean(self.words(ids % VOCAB_BUCKETS), mask.sum(dim=1))
        audio = self.audio(masked_mean(batch.audio, batch.audio_lengths))
        vision = self.vision(masked_mean(batch.vision, batch.vision_lengths))
        tokens = self.fusion(torch.stack([text, audio, vision], dim=1) + self.modality)  # (B, 3, W)
        inputs = {"m": tokens.mean(dim=1), "t": tokens[:, 0], "a": tokens[:, 1], "v": tokens[:, 2]}
        out = {s: self.heads[s](x) for s, x in inputs.items()}
        return selfmm.SelfMMOutput(selfmm.Heads(*(out[s][1] for s in "mtav")),
                                   selfmm.Heads(*(out[s][0] for s in "mtav")))
