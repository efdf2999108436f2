"""The [CLS] vector of a BERT encoder, computing only what Self-MM reads.

Self-MM reads one vector from the text encoder: the last layer's output at [CLS]. Hugging
Face's forward computes every layer at every position, padding included, and the pooler.
Here:
- per-token work (linear layers, layer norms, dropout) runs on the real tokens only (see
  `Tokens`); only attention sees the padded layout;
- the last layer's query, attention output and feed-forward run at [CLS] alone (its keys
  and values still span every token): about 1/7 fewer multiply-adds on a 6-layer model.
Both compute the same function. The weights are the Hugging Face model's own modules, so
parameter names, checkpoints and `from_pretrained` are unchanged; other architectures use
their own forward.

On CUDA nothing here makes the host wait for the device: given each text's length (known on
the host), the packed positions are planned there and copied through pinned memory, instead
of `nonzero` reading the mask back; attention runs through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels) on CUDA, and as two matrix
products and a softmax on the CPU (`ATTENTION`; benchmarks/gpu.py measures both on a GPU).

Two savings apply on the CPU only, where they matter:
- dropout masks come from `torch.rand` (a float per element) rather than `bernoulli_` (a
  double): twice as fast, the same keep probability to 2^-24 (float32 under bf16 autocast too);
- the word-embedding gradient is sparse: a dense one is a 47 MB tensor (MiniLM) filled and
  added once per batch for the ~500 rows a batch touches. The optimizer densifies it once
  per step (`selfmm.train.make_optimizer`). Under torch.distributed it stays dense, since
  DistributedDataParallel reduces dense buckets.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .transfer import to_device

# The attention kernel per device type: "sdpa" (scaled_dot_product_attention) or "eager".
ATTENTION = {"cpu": "eager", "cuda": "sdpa"}


def supports(encoder: nn.Module) -> bool:
    """Whether `cls_vector` can run this encoder: Hugging Face BERT, absolute positions."""
    config = getattr(encoder, "config", None)
    return (getattr(config, "model_type", None) == "bert"
            and not getattr(config, "is_decoder", False)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and hasattr(encoder, "embeddings") and hasattr(encoder, "encoder"))


def cls_vector(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
               types: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden state at [CLS]. ids, mask, types: (B, L) -> (B, hidden).

    `lengths`: (B,) on the host, each text's number of real tokens (the mask's sum), for
    right-padded masks only; with it the tokens are packed without reading the mask back."""
    if not supports(encoder):
        hidden = encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        return hidden[:, 0]
    training = encoder.training
    tokens = Tokens(mask, lengths, bucketed=buckets_shapes(ids.device))
    x = _embed(encoder.embeddings, ids, types, tokens, training)  # (T, D)
    layers = encoder.encoder.layer
    for layer in layers[:-1]:
        x = _layer(layer, x, tokens, training, cls_only=False)
    return _layer(layers[-1], x, tokens, training, cls_only=True)  # (B, D)


def bucket(n: int, bits: int) -> int:
    """`n` rounded up to the next number with at most `bits` + 1 significant bits: at most
    1/2^bits more (bits 3: ..., 256, 288, 320, 352, 384, 448, 512, ...)."""
    shift = max(n.bit_length() - bits - 1, 0)
    return -(-n >> shift) << shift


def buckets_shapes(device: torch.device) -> bool:
    """Whether the encoder rounds its per-batch sizes up to buckets (see `Tokens`): on the CPU
    under bf16 autocast, where oneDNN builds a new bf16 primitive for every new matrix shape
    (milliseconds each) and caches it. fp32 goes to MKL, which has no per-shape cost, and keeps
    the exact sizes (and so its results bit for bit)."""
    return device.type == "cpu" and torch.is_autocast_enabled("cpu") and (
        torch.get_autocast_dtype("cpu") == torch.bfloat16)


class Tokens:
    """The batch's real tokens, packed: every per-token operation (the linear layers, layer
    norms, dropout) runs on them alone, and only attention sees the padded (B, L) layout.

    Padding tokens cannot change a real token's output (their keys get zero attention), so
    skipping them is exact; in a dynamically padded batch they are ~40% of the positions.
    [CLS] (position 0) always counts as real, so an empty text reads its [CLS] alone.

    `bucketed`: the packed rows are rounded up to `bucket(T, 3)` (zero rows after the T real
    ones, whose results nothing reads) and the padded length to `bucket(L, 2)` (more padding
    keys), so that a few matrix shapes recur and oneDNN's primitive cache hits.
    """

    def __init__(self, mask: torch.Tensor, lengths: torch.Tensor | None = None, bucketed: bool = False):
        self.B, width = mask.shape
        self.L = bucket(width, 2) if bucketed else width
        real = mask.bool().clone()
        real[:, 0] = True
        if self.L > width:
            real = F.pad(real, (0, self.L - width))
        self.padding = (~real)[:, None, None, :]  # (B, 1, 1, L): keys attention must skip
        if lengths is None:
            self.where = real.flatten().nonzero().squeeze(1)  # (T,) into B*L, in order
            # Each clip's [CLS] row in the packed order.
            self.cls = torch.searchsorted(self.where, torch.arange(self.B, device=mask.device) * self.L)
        else:
            # Right-padded: text b's real tokens are its first max(length, 1) positions.
            n = np.maximum(lengths.numpy(), 1)
            cls = np.cumsum(n) - n  # (B,) packed row of each [CLS]
            where = np.arange(n.sum()) + np.repeat(np.arange(self.B) * self.L - cls, n)  # (T,)
            both = to_device(torch.from_numpy(np.concatenate([where, cls])), mask.device)  # one copy
            self.where, self.cls = both[: where.size], both[where.size:]
        self.T = int(self.where.shape[0])
        self.rows = bucket(self.T, 3) if bucketed else self.T  # packed rows: T real, then zeros
        # Each real token's place in the (B, width) inputs, and its position.
        self.positions = self.where % self.L
        self.source = self.where if self.L == width else self.where // self.L * width + self.positions

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (rows, D): the real tokens, then zero rows up to the bucket."""
        return x if self.rows == self.T else F.pad(x, (0, 0, 0, self.rows - self.T))

    def pad(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(rows, D) -> (B, heads, L, D / heads), zeros at padding."""
        padded = x.new_zeros(self.B * self.L, x.shape[-1]).index_copy(0, self.where, x[: self.T])
        return padded.view(self.B, self.L, heads, -1).transpose(1, 2)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, d) -> (rows, heads * d)."""
        return self.fill(x.transpose(1, 2).reshape(self.B * self.L, -1).index_select(0, self.where))


def _embed(emb: nn.Module, ids: torch.Tensor, types: torch.Tensor, tokens: Tokens,
           training: bool) -> torch.Tensor:
    words = emb.word_embeddings
    sparse = (training and torch.is_grad_enabled() and words.weight.requires_grad
              and words.weight.device.type == "cpu" and not _distributed())
    x = F.embedding(ids.flatten()[tokens.source], words.weight, words.padding_idx, sparse=sparse)
    x = x + emb.token_type_embeddings(types.flatten()[tokens.source])
    x = x + emb.position_embeddings(tokens.positions)
    return tokens.fill(dropout(emb.LayerNorm(x), emb.dropout.p, training))  # (rows, D)


def _layer(layer: nn.Module, x: torch.Tensor, tokens: Tokens, training: bool,
           cls_only: bool) -> torch.Tensor:
    """One BERT layer over the packed tokens x (rows, D): its output at every token (rows, D),
    or at each clip's [CLS] alone (B, D)."""
    att = layer.attention.self
    heads, size = att.num_attention_heads, att.attention_head_size
    rows = x[tokens.cls] if cls_only else x
    q = att.query(rows)
    q = q.view(tokens.B, 1, heads, size).transpose(1, 2) if cls_only else tokens.pad(q, heads)
    k, v = tokens.pad(att.key(x), heads), tokens.pad(att.value(x), heads)  # (B, H, L, d)
    context = attend(q, k, v, tokens.padding, att.dropout.p, training)  # (B, H, Lq, d)
    context = context.transpose(1, 2).reshape(tokens.B, -1) if cls_only else tokens.unpad(context)
    out = layer.attention.output
    h = out.LayerNorm(dropout(out.dense(context), out.dropout.p, training) + rows)
    ffn = layer.output
    return ffn.LayerNorm(dropout(ffn.dense(layer.intermediate(h)), ffn.dropout.p, training) + h)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: torch.Tensor, p: float,
           training: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with padding keys excluded; (B, H, Lq, d)."""
    if ATTENTION.get(q.device.type, "eager") == "sdpa":
        with sdpa_backends():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=~padding, dropout_p=p if training else 0.0)
    scores = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
    # Padding keys get the most negative score, as Hugging Face's eager attention does.
    scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
    return torch.matmul(dropout(scores.softmax(dim=-1), p, training), v)


def sdpa_backends() -> contextlib.AbstractContextManager:
    """Under `torch.use_deterministic_algorithms` (the `deterministic` setting on CUDA), SDPA's
    math backend, whose backward is plain matrix products; otherwise torch's choice. With a
    padding mask CUDA would pick the memory-efficient kernel, whose backward sums with atomics
    (texts over 64 tokens), and `warn_only` would only warn about it."""
    if torch.are_deterministic_algorithms_enabled():
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    # 0 or 1/(1-p): P(U >= p) = 1 - p. Drawn in float32 at least: in bf16 (autocast) U >= 0.1
    # would keep 89.8% and 1/0.9 would round to 1.109; the product is rounded once, to x's dtype.
    keep = torch.rand_like(x, dtype=torch.promote_types(x.dtype, torch.float32)).ge_(p).div_(1.0 - p)
    return x * keep if keep.dtype == x.dtype else (x * keep).to(x.dtype)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
