"""Self-MM (SPEC 3): a text encoder, two LSTMs, a fusion head and three unimodal heads.

Reads top to bottom like the paper: each modality becomes one vector; the fusion head and
the three unimodal heads each produce a representation F_s (what the ULGM compares with the
class centres) and a prediction y_s. Only y_m is used at test time.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from .bert import cls_vector
from .checks import checked, instance, integer
from .configuration import ModelConfig
from .data.batch import Batch
from .precision import full_precision
from .runtime import cpu_threads
from .transfer import to_device

# Widths of an audio or vision frame: the benchmark files' are at most 709, face meshes a few
# thousand; a width beyond this is not a feature file's.
MAX_INPUT_WIDTH = 65536


class Heads(NamedTuple):
    """One tensor per task: m (multimodal), t (text), a (audio), v (vision)."""

    m: torch.Tensor
    t: torch.Tensor
    a: torch.Tensor
    v: torch.Tensor


class SelfMMOutput(NamedTuple):
    predictions: Heads  # each (B,)
    features: Heads  # F_m (B, post_fusion_dim), F_t, F_a, F_v (B, post_X_dim)


# Torch threads the CPU LSTMs run on, forward and backward; None leaves torch's count alone.
# Their hundreds of tiny time steps each end in a barrier of the thread pool, and when another
# process holds a core every barrier waits for a time slice: on 2 threads of a 2-core machine
# with the other core busy, the LSTMs take 77 ms per mosi batch on 1 thread and 845 ms on 2;
# idle, 51 against 48 (benchmarks/README.md, "The LSTMs' threads"). Running the audio and
# vision LSTMs side by side, one thread each, measured no faster (55 ms idle) and was dropped.
LSTM_THREADS: int | None = 1


class _LSTMOnThreads(torch.autograd.Function):
    """An LSTM whose forward and backward both run on `threads` threads.

    The forward keeps its own graph, over detached aliases of the input and the weights; the
    backward differentiates it inside `cpu_threads`, so the thread count is restored even
    when the backward fails (a hook, an interrupt). The kernels, and so the gradients, are a
    plain backward's, and hooks on the weights fire once, as there.
    """

    @staticmethod
    def forward(ctx, rnn: nn.LSTM, threads: int | None, x: torch.Tensor,
                *weights: torch.Tensor) -> torch.Tensor:
        names = [name for name, _ in rnn.named_parameters()]
        with torch.enable_grad(), cpu_threads(threads):
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in (x, *weights)]
            out, _ = functional_call(rnn, dict(zip(names, leaves[1:], strict=True)), (leaves[0],))
        ctx.threads, ctx.leaves, ctx.out = threads, leaves, out  # out: (B, L, hidden)
        return out.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        needed = ctx.needs_input_grad[2:]
        wanted = [t for t, need in zip(ctx.leaves, needed, strict=True) if need]
        with cpu_threads(ctx.threads):
            grads = iter(torch.autograd.grad(ctx.out, wanted, grad, allow_unused=True))
        del ctx.leaves, ctx.out
        return (None, None, *(next(grads) if need else None for need in needed))


class SequenceEncoder(nn.Module):
    """One LSTM over a clip's valid frames; its final hidden state -> dropout -> linear.

    A clip with zero valid frames has no final state: its hidden vector is defined as zeros
    (the reference crashes in packing), so its output is the linear layer's bias. Runs in
    float32 under any autocast (selfmm.precision).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: (B, L, D); lengths: (B,) on the host
        with full_precision(x):
            x = x.to(self.rnn.weight_ih_l0.dtype)  # float32 from bf16
            if x.device.type == "cpu":
                h = self._padded_final_state(x, lengths)
            else:
                h = packed_final_state(self.rnn, x, lengths)
            return self.linear(self.dropout(h))  # (B, out_dim)

    def _padded_final_state(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # The state after a clip's last valid frame is the packed LSTM's final state: a
        # forward LSTM never sees later frames, and no gradient reaches them. On the CPU the
        # fused kernel over the padded batch runs a mosi batch's LSTMs in 42 ms where stepping
        # a packed one took 214 (5x, benchmarks/README.md).
        last = lengths.clamp(min=1) - 1
        weights = list(self.rnn.parameters())
        if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
            out = _LSTMOnThreads.apply(self.rnn, LSTM_THREADS, x, *weights)
        else:
            with cpu_threads(LSTM_THREADS):
                out, _ = self.rnn(x)  # (B, L, hidden)
        h = out[torch.arange(x.shape[0]), last]  # (B, hidden)
        return h * (lengths > 0).to(h.dtype).unsqueeze(1)


def packed_final_state(rnn: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The LSTM's state after each clip's last valid frame, from packed sequences (cuDNN);
    zeros for a clip without frames. x: (B, L, D); lengths: (B,) on the host -> (B, hidden).

    Packing wants the clips longest first. PyTorch's own sort (`enforce_sorted=False`) copies
    its permutation to the device from pageable memory, which blocks the host; here the order
    is planned on the host and reaches the device through pinned memory.
    """
    n = lengths.numpy()
    order = np.argsort(-n, kind="stable")  # longest first, clips without frames last
    b = n.size
    perm = to_device(torch.from_numpy(np.concatenate([order, np.argsort(order)])), x.device)  # one copy
    packed = pack_padded_sequence(x.index_select(0, perm[:b]), torch.from_numpy(np.maximum(n[order], 1)),
                                  batch_first=True)
    _, (h_n, _) = rnn(packed)  # h_n: (1, B, hidden), longest first
    h = h_n[0]
    empty = int(np.count_nonzero(n == 0))
    if empty:
        h = torch.cat([h[: b - empty], h.new_zeros(empty, h.shape[1])])
    return h.index_select(0, perm[b:])  # back to the batch's order


class Head(nn.Module):
    """dropout -> Linear -> ReLU gives the representation F; Linear -> ReLU -> Linear(1) gives y."""

    def __init__(self, in_dim: int, dim: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.layer_1 = nn.Linear(in_dim, dim)
        self.layer_2 = nn.Linear(dim, dim)
        self.layer_3 = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 under any autocast: bf16-rounded predictions would move Acc-7's rounding
        # and the class edges, and the ULGM would compare rounded representations.
        with full_precision(x):
            feature = torch.relu(self.layer_1(self.dropout(x.to(self.layer_1.weight.dtype))))  # (B, dim)
            prediction = self.layer_3(torch.relu(self.layer_2(feature))).squeeze(-1)  # (B,)
        return feature, prediction


class SelfMM(nn.Module):
    @checked(encoder=instance(nn.Module, "a text encoder (a transformers model)"),
             audio_dim=integer(1, MAX_INPUT_WIDTH), vision_dim=integer(1, MAX_INPUT_WIDTH),
             cfg=instance(ModelConfig, "a selfmm ModelConfig (selfmm.config(...).model)"))
    def __init__(self, encoder: nn.Module, audio_dim: int, vision_dim: int, cfg: ModelConfig):
        super().__init__()
        self.freeze_encoder = cfg.freeze_encoder
        self.text_encoder = encoder
        if cfg.freeze_encoder:
            self.text_encoder.requires_grad_(False)
        elif getattr(encoder, "pooler", None) is not None:
            # Self-MM reads [CLS] of the last hidden state, never the pooler: it gets no
            # gradient either way, and DistributedDataParallel wants no unused trainable weight.
            encoder.pooler.requires_grad_(False)
        text_out = int(encoder.config.hidden_size)
        self.audio_net = SequenceEncoder(audio_dim, cfg.audio_hidden, cfg.audio_out)
        self.vision_net = SequenceEncoder(vision_dim, cfg.vision_hidden, cfg.vision_out)
        self.fusion_head = Head(text_out + cfg.audio_out + cfg.vision_out, cfg.post_fusion_dim,
                                cfg.post_fusion_dropout)
        self.text_head = Head(text_out, cfg.post_text_dim, cfg.post_text_dropout)
        self.audio_head = Head(cfg.audio_out, cfg.post_audio_dim, cfg.post_audio_dropout)
        self.vision_head = Head(cfg.vision_out, cfg.post_vision_dim, cfg.post_vision_dropout)
        # Widths of F_m, F_t, F_a, F_v: what the ULGM compares with its class centres.
        self.feature_dims = {"m": cfg.post_fusion_dim, "t": cfg.post_text_dim,
                             "a": cfg.post_audio_dim, "v": cfg.post_vision_dim}

    def train(self, mode: bool = True) -> SelfMM:
        super().train(mode)
        # A frozen encoder always runs without dropout, so its output is a function of the
        # tokens alone and can be cached across epochs.
        if self.freeze_encoder:
            self.text_encoder.eval()
        return self

    def encode_text(self, text: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[CLS] vector of the encoder's last hidden state. text: (B, 3, Lt) -> (B, text_out);
        `lengths`: (B,) real tokens per text, on the host, when known (see selfmm.bert)."""
        ids, mask, types = text[:, 0], text[:, 1], text[:, 2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return cls_vector(self.text_encoder, ids, mask, types, lengths)

    def forward(self, batch: Batch, text_vector: torch.Tensor | None = None) -> SelfMMOutput:
        """`text_vector` replaces the encoder's output when given (a cached frozen encoder)."""
        text = (self.encode_text(batch.text, batch.text_lengths) if text_vector is None
                else text_vector)  # (B, text_out); bf16 under bf16 autocast
        text = text.to(self.text_head.layer_1.weight.dtype)  # bf16 -> the heads' float32
        audio = self.audio_net(batch.audio, batch.audio_lengths)  # (B, audio_out)
        vision = self.vision_net(batch.vision, batch.vision_lengths)  # (B, vision_out)

        f_m, y_m = self.fusion_head(torch.cat([text, audio, vision], dim=-1))
        f_t, y_t = self.text_head(text)
        f_a, y_a = self.audio_head(audio)
        f_v, y_v = self.vision_head(vision)
        return SelfMMOutput(Heads(y_m, y_t, y_a, y_v), Heads(f_m, f_t, f_a, f_v))

    def parameter_groups(self, lr: dict[str, float], weight_decay: dict[str, float]) -> list[dict]:
        """SPEC 5's five Adam groups: encoder weights (decayed), encoder biases and LayerNorms
        (undecayed), audio LSTM net, vision LSTM net, everything else. Keys of `lr` and
        `weight_decay`: text, audio, vision, other."""
        no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm.weight",
                    "layer_norm.bias")
        encoder = [(n, p) for n, p in self.text_encoder.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in encoder if not any(k in n for k in no_decay)],
             "lr": lr["text"], "weight_decay": weight_decay["text"], "name": "text"},
            {"params": [p for n, p in encoder if any(k in n for k in no_decay)],
             "lr": lr["text"], "weight_decay": 0.0, "name": "text_no_decay"},
            {"params": list(self.audio_net.parameters()),
             "lr": lr["audio"], "weight_decay": weight_decay["audio"], "name": "audio"},
            {"params": list(self.vision_net.parameters()),
             "lr": lr["vision"], "weight_decay": weight_decay["vision"], "name": "vision"},
            {"params": [p for n, p in self.named_parameters()
                        if not n.startswith(("text_encoder.", "audio_net.", "vision_net."))],
             "lr": lr["other"], "weight_decay": weight_decay["other"], "name": "other"},
        ]
        return [g for g in groups if g["params"]]
