"""Unimodal Label Generation Module (SPEC section 4): u-labels from class centres, no parameters.

The generator knows nothing of the model: it receives each batch's sample indexes and detached
representations per modality ("m" fused, "t", "a", "v") and keeps, for the N training samples,
the labels, the latest representation of every sample and a positive and a negative centre
per modality.

Centres are means over all N samples (unseen samples are zero rows). Two ways to keep them:
- "full": recompute the masked means of all N stored representations in float32 after every
  batch, exactly as the official implementation does (it reproduces its labels bit for bit);
- "incremental" (default): per-class running sums in float64 and integer counts, updated by the
  batch's old and new representations and class memberships, so a batch costs O(B * d) instead
  of O(N * d).

The generator is a `torch.nn.Module` without parameters: its state lives in persistent buffers,
so `state_dict`, `load_state_dict` and `.to(device)` are PyTorch's. Per modality s: `labels_s`,
`reps_s`, `sums_s` (float64), `counts_s`, `centres_s` and `existed_s` (see `state_layout`), where
row 0 of the class-wise buffers is the positive class and row 1 the negative one.
The running sums and counts are maintained in both modes so that a state dict resumes in either.
Dtypes are fixed: a cast (`.to(dtype)`, `.double()`, ...) is refused, and so is loading a tensor
of another dtype, which `Module.load_state_dict` would otherwise cast silently.

Decisions on what the reference leaves undefined:
- A class with no member keeps its previous centre; label updates of a modality are skipped
  until both of its centres, and both fused centres, have existed at least once.
- Non-finite features raise ValueError naming the modality, before any state changes: storing
  them would poison every later centre and label. A caller that checks them itself passes
  `check_finite=False` to `step` (the trainer does, on the device).
- Duplicate indexes within one batch are not supported (the running sums would count the
  sample twice); a sampler visits each sample once per epoch, and a distributed all-gather of
  a DistributedSampler's shards is duplicate-free unless it pads, which the trainer must trim.

On CUDA a step makes the host wait for the device nowhere in "incremental" mode, given indexes
on the host (they are checked there and copied through pinned memory): the existence of the
centres is decided on the device, and an emptied class's sums are cleared by a mask. Indexes
already on the device are checked with one read each; "full" mode reads its class masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, Literal, cast

import numpy as np
import torch

from .checks import Wrong, boolean, checked, integer, number, one_of
from .runtime import device_name, resolve_device
from .transfer import to_device

MODALITIES: tuple[str, ...] = ("m", "t", "a", "v")
UNIMODAL: tuple[str, ...] = ("t", "a", "v")
EPS = 1e-8
CentreMode = Literal["full", "incremental"]


# ---- the equations, as pure functions --------------------------------------------------------


def relative_distance(features: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                      eps: float = EPS) -> torch.Tensor:
    """alpha = (D_neg - D_pos) / (D_pos + eps) with plain L2 distances; (B, d) -> (B,)."""
    d_pos = torch.norm(features - pos, dim=-1)
    d_neg = torch.norm(features - neg, dim=-1)
    return (d_neg - d_pos) / (d_pos + eps)


def candidate_label(y_m: torch.Tensor, alpha_s: torch.Tensor, alpha_m: torch.Tensor, H: float,
                    eps: float = EPS) -> torch.Tensor:
    """Mean of the multiplicative and additive relations, clamped to [-H, H].

    The operations run in the official implementation's order (ratio first, then times y_m),
    since alpha_m near 0 amplifies any rounding difference.
    """
    ratio = alpha_s / (alpha_m + eps)
    y_hat = 0.5 * ratio * y_m + 0.5 * (y_m + alpha_s - alpha_m)
    return torch.clamp(y_hat, min=-H, max=H)


def momentum_update(y_prev: torch.Tensor, y_hat: torch.Tensor, epoch: int) -> torch.Tensor:
    """y <- (e-1)/(e+1) y + 2/(e+1) y_hat: the average of all candidates weighted by epoch."""
    return (epoch - 1) / (epoch + 1) * y_prev + 2 / (epoch + 1) * y_hat


def class_masks(labels: torch.Tensor, exclude_zero: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) membership; a zero label is positive only when exclude_zero is off."""
    pos = labels > 0 if exclude_zero else labels >= 0
    return pos, labels < 0


def full_centres(reps: torch.Tensor, labels: torch.Tensor, exclude_zero: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Float32 masked means over all N rows, as the reference computes them; None for an empty class."""
    out: list[torch.Tensor | None] = []
    for mask in class_masks(labels, exclude_zero):
        out.append(reps[mask].mean(dim=0) if bool(mask.any()) else None)
    return out[0], out[1]


# ---- the stateful generator -------------------------------------------------------------------

def state_layout(n: int, d: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of each buffer kind of one modality of width d; buffers are f"{kind}_{s}"."""
    return {"labels": ((n,), torch.float32), "reps": ((n, d), torch.float32),
            "sums": ((2, d), torch.float64), "counts": ((2,), torch.int64),
            "centres": ((2, d), torch.float32), "existed": ((2,), torch.bool)}


def from_old_layout(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The buffers' names for a state saved before the ULGM kept them as buffers (checkpoints
    of runs from before commit ef286d0): one (4, N) "labels" tensor with a row per modality in
    MODALITIES order, and "reps.s", "sums.s", "counts.s", "centres.s", "existed.s". The
    values are the same; any other state is returned unchanged."""
    labels = state.get("labels")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.shape[0] == len(MODALITIES)):
        return state
    out = {k.replace(".", "_", 1): v for k, v in state.items() if k != "labels"}
    out.update({f"labels_{s}": labels[i].clone() for i, s in enumerate(MODALITIES)})
    return out


# --- the rules of the public methods' arguments (selfmm.checks); cheap: nothing is read back
# from a device.

def _dims(value: Any) -> Mapping[str, int]:
    expects = "a mapping of m, t, a and v to positive widths"
    if not isinstance(value, Mapping):
        raise Wrong(expects, kind=True)
    if set(value) != set(MODALITIES) or not all(
            isinstance(d, Integral) and not isinstance(d, bool) and d > 0 for d in value.values()):
        raise Wrong(expects)
    return value


def _values(kind: type, what: str) -> Callable[[Any], Any]:
    expects = f"{what} (a tensor, a numpy array or a sequence)"

    def rule(value: Any) -> Any:
        if isinstance(value, (torch.Tensor, np.ndarray)):
            if value.dtype == torch.bool or value.dtype == bool or (
                    kind is Integral and (value.is_floating_point() if isinstance(value, torch.Tensor)
                                          else not np.issubdtype(value.dtype, np.integer))):
                raise Wrong(expects, kind=True)
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
                isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise Wrong(expects, kind=True)
        return value

    return rule


def _features(value: Any) -> Mapping[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not all(isinstance(f, torch.Tensor) for f in value.values()):
        raise Wrong("a mapping of m, t, a and v to (B, d) tensors", kind=True)
    return value


INDEXES = _values(Integral, "integer sample indexes")


class UnimodalLabelGenerator(torch.nn.Module):
    """U-label state for N training samples; see the module docstring and SPEC section 4.

    It has no forward: the trainer calls `init_labels`, `step` and `weights`.
    """

    @checked(num_samples=integer(1), dims=_dims, H=number(above=0), exclude_zero=boolean,
             centres=one_of("full", "incremental"), device=device_name)
    def __init__(self, num_samples: int, dims: Mapping[str, int], H: float,
                 exclude_zero: bool = True, centres: CentreMode = "incremental",
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        if set(dims) != set(MODALITIES):
            raise ValueError(f"dims must have exactly the keys {MODALITIES}, got {sorted(dims)}")
        if centres not in ("full", "incremental"):
            raise ValueError(f"centres must be 'full' or 'incremental', got {centres!r}")
        self.num_samples = int(num_samples)
        self.dims = {s: int(dims[s]) for s in MODALITIES}
        self.H = float(H)
        self.exclude_zero = bool(exclude_zero)
        self.centre_mode = centres
        device = resolve_device(device)
        for s, d in self.dims.items():
            for kind, (shape, dtype) in state_layout(self.num_samples, d).items():
                self.register_buffer(f"{kind}_{s}", torch.zeros(shape, dtype=dtype, device=device))

    # -- public API --

    @property
    def device(self) -> torch.device:
        return self._state("labels", "m").device

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        """Current labels per modality, (N,) each; the m row is the human label and never changes."""
        return {s: self._state("labels", s) for s in MODALITIES}

    @property
    def centres(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(positive, negative) centre per modality."""
        rows = {s: self._state("centres", s) for s in MODALITIES}
        return {s: (c[0], c[1]) for s, c in rows.items()}

    @checked(indexes=INDEXES, m_labels=_values(Real, "numeric labels"))
    def init_labels(self, indexes: torch.Tensor | Sequence[int],
                    m_labels: torch.Tensor | Sequence[float]) -> None:
        """Set all four labels of these samples to their m-label, then rebuild sums and centres."""
        idx = self._index(indexes)
        y = torch.as_tensor(m_labels, dtype=torch.float32, device=self.device).reshape(-1)
        if y.shape != idx.shape:
            raise ValueError(f"{idx.numel()} indexes but {y.numel()} labels")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("m_labels contain non-finite values")
        # Done once per run, so an O(N * d) rebuild keeps this simple and always consistent.
        for s in MODALITIES:
            labels = self._state("labels", s)
            labels[idx] = y
            masks = torch.stack(class_masks(labels, self.exclude_zero), dim=1)
            self._state("counts", s).copy_(masks.sum(dim=0))
            self._state("sums", s).copy_(masks.to(torch.float64).T @ self._state("reps", s).to(torch.float64))
        self._refresh_centres()

    @checked(indexes=INDEXES, features=_features, epoch=integer(1), check_finite=boolean)
    def step(self, indexes: torch.Tensor | Sequence[int], features: Mapping[str, torch.Tensor],
             epoch: int, *, check_finite: bool = True) -> None:
        """SPEC steps 3-5 for one batch (epoch is 1-based). `check_finite=False` skips the
        features' finiteness check, which reads a flag back from the device per modality."""
        idx = self._index(indexes)
        feats = self._check_features(features, idx.numel(), check_finite)
        if idx.numel() == 0:
            return
        old_labels = {s: self._state("labels", s)[idx] for s in MODALITIES}  # indexing copies
        if epoch >= 2:
            self._update_labels(idx, feats, epoch)
        for s in MODALITIES:
            reps = self._state("reps", s)
            self._accumulate(s, reps[idx], feats[s], old_labels[s], self._state("labels", s)[idx])
            reps[idx] = feats[s]
        self._refresh_centres()

    @checked(indexes=INDEXES)
    def weights(self, indexes: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """Per-sample loss weights tanh(|y_s - y_m|) of the unimodal tasks."""
        idx = self._index(indexes)
        y_m = self._state("labels", "m")[idx]
        return {s: torch.tanh(torch.abs(self._state("labels", s)[idx] - y_m)) for s in UNIMODAL}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Strict, and copying into the existing buffers, which keeps their device.

        Partial loading is not offered: sums and counts must agree with the labels and reps.
        Shapes and dtypes are checked first, so a bad state names its key and changes nothing.
        A state saved before the buffers existed (see `from_old_layout`) is converted first.
        """
        state_dict = from_old_layout(state_dict)
        expected = dict(self.named_buffers())
        if set(state_dict) != set(expected):
            raise ValueError(f"ULGM state keys differ: missing {sorted(set(expected) - set(state_dict))}, "
                             f"unexpected {sorted(set(state_dict) - set(expected))}")
        for key, ref in expected.items():
            got = state_dict[key]
            if not isinstance(got, torch.Tensor):
                raise ValueError(f"ULGM state {key}: expected a tensor, got {type(got).__name__}")
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise ValueError(f"ULGM state {key}: expected {ref.dtype} {tuple(ref.shape)}, "
                                 f"got {got.dtype} {tuple(got.shape)}")
        super().load_state_dict(state_dict)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, dims={self.dims}, H={self.H}, "
                f"exclude_zero={self.exclude_zero}, centres={self.centre_mode!r}")

    # -- internals --

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> UnimodalLabelGenerator:
        # Module.to(dtype), .double(), .half() would cast the buffers: the float64 sums would lose
        # the precision they are kept for, and float32 centres would no longer reproduce the
        # reference. Probe the conversion on empty tensors and refuse a cast before anything moves.
        for name, buf in self.named_buffers():
            cast = fn(buf.new_empty(0)).dtype
            if cast != buf.dtype:
                raise TypeError(f"UnimodalLabelGenerator keeps {name} in {buf.dtype}, refusing to cast "
                                f"it to {cast}; move it with .to(device) only")
        return super()._apply(fn, recurse)

    def _state(self, kind: str, s: str) -> torch.Tensor:
        # A plain dict lookup: get_buffer resolves a dotted path (2 us), some 60 times per step.
        return cast(torch.Tensor, self._buffers[f"{kind}_{s}"])

    def _index(self, indexes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Indexes on this generator's device; checked on the host when they come from there."""
        if isinstance(indexes, torch.Tensor) and indexes.device.type != "cpu":
            idx = indexes.to(self.device, torch.long).reshape(-1)
            low, high = (int(idx.min()), int(idx.max())) if idx.numel() else (0, 0)
        else:
            idx = torch.as_tensor(indexes, dtype=torch.long).reshape(-1)
            host = idx.numpy()
            low, high = (host.min(), host.max()) if host.size else (0, 0)
            idx = to_device(idx, self.device)
        if low < 0 or high >= self.num_samples:
            raise ValueError(f"sample indexes must lie in [0, {self.num_samples})")
        return idx

    def _check_features(self, features: Mapping[str, torch.Tensor], batch: int, check_finite: bool = True
                        ) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for s in MODALITIES:
            if s not in features:
                raise ValueError(f"features lack modality {s!r}")
            f = features[s].detach().to(self.device, torch.float32)
            if tuple(f.shape) != (batch, self.dims[s]):
                raise ValueError(f"features[{s!r}] has shape {tuple(f.shape)}, "
                                 f"expected ({batch}, {self.dims[s]})")
            if check_finite and not bool(torch.isfinite(f).all()):
                raise ValueError(f"features[{s!r}] contain non-finite values")
            feats[s] = f
        return feats

    def _update_labels(self, idx: torch.Tensor, feats: dict[str, torch.Tensor], epoch: int) -> None:
        """Step 3: new u-labels from the centres as they stood before this batch, for each
        modality whose two centres, and both fused ones, have existed. That condition is
        applied on the device (labels that may not move are written back unchanged): reading
        it would make the host wait for the device every step."""
        fused_ready = self._state("existed", "m").all()
        y_m = self._state("labels", "m")[idx]
        pos_m, neg_m = self._state("centres", "m")
        alpha_m = relative_distance(feats["m"], pos_m, neg_m)
        for s in UNIMODAL:
            ready = fused_ready & self._state("existed", s).all()
            pos, neg = self._state("centres", s)
            labels = self._state("labels", s)
            old = labels[idx]
            y_hat = candidate_label(y_m, relative_distance(feats[s], pos, neg), alpha_m, self.H)
            # Finite representations too large for float32 distances give inf - inf = NaN: such
            # a sample gets no candidate this time and keeps its label (clamping handles +-inf).
            y_hat = torch.where(torch.isnan(y_hat), old, y_hat)
            labels[idx] = torch.where(ready, momentum_update(old, y_hat, epoch), old)

    def _accumulate(self, s: str, old_rep: torch.Tensor, new_rep: torch.Tensor,
                    old_label: torch.Tensor, new_label: torch.Tensor) -> None:
        """Move the batch's contribution to the class sums and counts from old to new state."""
        old_m = torch.stack(class_masks(old_label, self.exclude_zero), dim=1)  # (B, 2)
        new_m = torch.stack(class_masks(new_label, self.exclude_zero), dim=1)
        self._state("sums", s).add_(new_m.to(torch.float64).T @ new_rep.to(torch.float64)
                                    - old_m.to(torch.float64).T @ old_rep.to(torch.float64))
        self._state("counts", s).add_(new_m.sum(dim=0) - old_m.sum(dim=0))

    def _refresh_centres(self) -> None:
        """Step 5; an empty class keeps its previous centre."""
        for s in MODALITIES:
            sums, counts = self._state("sums", s), self._state("counts", s)
            centres = self._state("centres", s)
            present = counts > 0
            # An emptied class's sum is zero up to rounding; reset it so no drift survives.
            sums.masked_fill_(~present.unsqueeze(1), 0.0)
            if self.centre_mode == "full":
                fresh = full_centres(self._state("reps", s), self._state("labels", s), self.exclude_zero)
                for row, centre in enumerate(fresh):
                    if centre is not None:
                        centres[row] = centre
            else:
                mean = (sums / counts.clamp(min=1).unsqueeze(1)).to(torch.float32)
                centres.copy_(torch.where(present.unsqueeze(1), mean, centres))
            self._state("existed", s).logical_or_(present)
