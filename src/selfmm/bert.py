"""The [CLS] vector of a BERT encoder, computing only what Self-MM reads.

Self-MM reads one vector from the text encoder: the last layer's output at [CLS]. Hugging
Face's forward computes the last layer at every token, and the pooler. Here the last layer's
query, attention output and feed-forward run at [CLS] alone (its keys and values still span
every token): the same function, with about 1/7 fewer multiply-adds on a 6-layer model. The
weights are the Hugging Face model's own modules, so parameter names, checkpoints and
`from_pretrained` are unchanged; other architectures use their own forward.

Two savings apply on the CPU only, where they matter:
- dropout masks come from `torch.rand` (a float per element) rather than `bernoulli_` (a
  double): twice as fast, the same keep probability to 2^-24;
- the word-embedding gradient is sparse: a dense one is a 47 MB tensor (MiniLM) filled and
  added once per batch for the ~500 rows a batch touches. The optimizer densifies it once
  per step (`selfmm.train.make_optimizer`). Under torch.distributed it stays dense, since
  DistributedDataParallel reduces dense buckets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def supports(encoder: nn.Module) -> bool:
    """Whether `cls_vector` can run this encoder: Hugging Face BERT, absolute positions."""
    config = getattr(encoder, "config", None)
    return (getattr(config, "model_type", None) == "bert"
            and not getattr(config, "is_decoder", False)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and hasattr(encoder, "embeddings") and hasattr(encoder, "encoder"))


def cls_vector(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
               types: torch.Tensor) -> torch.Tensor:
    """Last hidden state at [CLS]. ids, mask, types: (B, L) -> (B, hidden)."""
    if not supports(encoder):
        hidden = encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        return hidden[:, 0]
    training = encoder.training
    h = _embed(encoder.embeddings, ids, types, training)  # (B, L, D)
    # Padding keys get the most negative score, as Hugging Face's eager attention does.
    bias = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min  # (B, 1, 1, L)
    layers = encoder.encoder.layer
    for layer in layers[:-1]:
        h = _layer(layer, h, h, bias, training)
    return _layer(layers[-1], h[:, :1], h, bias, training)[:, 0]


def _embed(emb: nn.Module, ids: torch.Tensor, types: torch.Tensor, training: bool) -> torch.Tensor:
    words = emb.word_embeddings
    sparse = (training and torch.is_grad_enabled() and words.weight.requires_grad
              and words.weight.device.type == "cpu" and not _distributed())
    x = F.embedding(ids, words.weight, words.padding_idx, sparse=sparse)
    x = x + emb.token_type_embeddings(types)
    x = x + emb.position_embeddings.weight[: ids.shape[1]]
    return dropout(emb.LayerNorm(x), emb.dropout.p, training)


def _layer(layer: nn.Module, rows: torch.Tensor, h: torch.Tensor, bias: torch.Tensor,
           training: bool) -> torch.Tensor:
    """One BERT layer's output at `rows` (B, Lq, D), attending over all of `h` (B, L, D)."""
    att = layer.attention.self
    B, L, _ = h.shape
    heads, size = att.num_attention_heads, att.attention_head_size
    q = att.query(rows).view(B, -1, heads, size).transpose(1, 2)  # (B, H, Lq, d)
    k = att.key(h).view(B, L, heads, size).transpose(1, 2)  # (B, H, L, d)
    v = att.value(h).view(B, L, heads, size).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(2, 3)) * size ** -0.5 + bias
    probs = dropout(scores.softmax(dim=-1), att.dropout.p, training)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(B, -1, heads * size)
    out = layer.attention.output
    x = out.LayerNorm(dropout(out.dense(context), out.dropout.p, training) + rows)
    ffn = layer.output
    return ffn.LayerNorm(dropout(ffn.dense(layer.intermediate(x)), ffn.dropout.p, training) + x)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    keep = torch.rand_like(x).ge_(p).div_(1.0 - p)  # 0 or 1/(1-p): P(U >= p) = 1 - p
    return x * keep


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
