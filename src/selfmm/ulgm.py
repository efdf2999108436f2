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

The running sums and counts are maintained in both modes so that a state dict resumes in either.

Decisions on what the reference leaves undefined:
- A class with no member keeps its previous centre; label updates of a modality are skipped
  until both of its centres, and both fused centres, have existed at least once.
- Non-finite features raise ValueError naming the modality, before any state changes: storing
  them would poison every later centre and label.
- Duplicate indexes within one batch are not supported (the running sums would count the
  sample twice); a sampler visits each sample once per epoch, and a distributed all-gather of
  a DistributedSampler's shards is duplicate-free unless it pads, which the trainer must trim.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

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


class UnimodalLabelGenerator:
    """U-label state for N training samples; see the module docstring and SPEC section 4."""

    def __init__(self, num_samples: int, dims: Mapping[str, int], H: float,
                 exclude_zero: bool = True, centres: CentreMode = "incremental",
                 device: torch.device | str = "cpu") -> None:
        if set(dims) != set(MODALITIES):
            raise ValueError(f"dims must have exactly the keys {MODALITIES}, got {sorted(dims)}")
        if centres not in ("full", "incremental"):
            raise ValueError(f"centres must be 'full' or 'incremental', got {centres!r}")
        self.num_samples = int(num_samples)
        self.dims = {s: int(dims[s]) for s in MODALITIES}
        self.H = float(H)
        self.exclude_zero = bool(exclude_zero)
        self.centre_mode = centres
        self.device = torch.device(device)
        n, dev = self.num_samples, self.device
        # Row order follows MODALITIES; the m row is the human label and never changes.
        self._labels = torch.zeros(len(MODALITIES), n, dtype=torch.float32, device=dev)
        self._reps = {s: torch.zeros(n, d, dtype=torch.float32, device=dev)
                      for s, d in self.dims.items()}
        # Per modality, row 0 is the positive class and row 1 the negative one.
        self._sums = {s: torch.zeros(2, d, dtype=torch.float64, device=dev)
                      for s, d in self.dims.items()}
        self._counts = {s: torch.zeros(2, dtype=torch.int64, device=dev) for s in MODALITIES}
        self._centres = {s: torch.zeros(2, d, dtype=torch.float32, device=dev)
                         for s, d in self.dims.items()}
        self._existed = {s: torch.zeros(2, dtype=torch.bool, device=dev) for s in MODALITIES}

    # -- public API --

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        return {s: self._labels[i] for i, s in enumerate(MODALITIES)}

    @property
    def centres(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {s: (c[0], c[1]) for s, c in self._centres.items()}

    def init_labels(self, indexes: torch.Tensor | Sequence[int], m_labels: torch.Tensor | Sequence[float]) -> None:
        """Set all four label rows of these samples to their m-label, then rebuild sums and centres."""
        idx = self._index(indexes)
        y = torch.as_tensor(m_labels, dtype=torch.float32, device=self.device).reshape(-1)
        if y.shape != idx.shape:
            raise ValueError(f"{idx.numel()} indexes but {y.numel()} labels")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("m_labels contain non-finite values")
        self._labels[:, idx] = y
        # Done once per run, so an O(N * d) rebuild keeps this simple and always consistent.
        for i, s in enumerate(MODALITIES):
            masks = torch.stack(class_masks(self._labels[i], self.exclude_zero), dim=1)
            self._counts[s] = masks.sum(dim=0)
            self._sums[s] = masks.to(torch.float64).T @ self._reps[s].to(torch.float64)
        self._refresh_centres(MODALITIES)

    def step(self, indexes: torch.Tensor | Sequence[int], features: Mapping[str, torch.Tensor],
             epoch: int) -> None:
        """SPEC steps 3-5 for one batch (epoch is 1-based)."""
        idx = self._index(indexes)
        feats = self._check_features(features, idx.numel())
        if idx.numel() == 0:
            return
        old_labels = self._labels[:, idx].clone()
        if epoch >= 2:
            self._update_labels(idx, feats, epoch)
        new_labels = self._labels[:, idx]
        for i, s in enumerate(MODALITIES):
            self._accumulate(s, self._reps[s][idx], feats[s], old_labels[i], new_labels[i])
            self._reps[s][idx] = feats[s]
        self._refresh_centres(MODALITIES)

    def weights(self, indexes: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """Per-sample loss weights tanh(|y_s - y_m|) of the unimodal tasks."""
        idx = self._index(indexes)
        y_m = self._labels[0, idx]
        return {s: torch.tanh(torch.abs(self._labels[i, idx] - y_m))
                for i, s in enumerate(MODALITIES) if s != "m"}

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {"labels": self._labels.clone()}
        for s in MODALITIES:
            sd[f"reps.{s}"] = self._reps[s].clone()
            sd[f"sums.{s}"] = self._sums[s].clone()
            sd[f"counts.{s}"] = self._counts[s].clone()
            sd[f"centres.{s}"] = self._centres[s].clone()
            sd[f"existed.{s}"] = self._existed[s].clone()
        return sd

    def load_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        if set(sd) != set(expected):
            raise ValueError(f"ULGM state keys differ: missing {sorted(set(expected) - set(sd))}, "
                             f"unexpected {sorted(set(sd) - set(expected))}")
        for key, ref in expected.items():
            if tuple(sd[key].shape) != tuple(ref.shape) or sd[key].dtype != ref.dtype:
                raise ValueError(f"ULGM state {key}: expected {ref.dtype} {tuple(ref.shape)}, "
                                 f"got {sd[key].dtype} {tuple(sd[key].shape)}")
        dev = self.device
        self._labels = sd["labels"].to(dev, copy=True)
        for s in MODALITIES:
            self._reps[s] = sd[f"reps.{s}"].to(dev, copy=True)
            self._sums[s] = sd[f"sums.{s}"].to(dev, copy=True)
            self._counts[s] = sd[f"counts.{s}"].to(dev, copy=True)
            self._centres[s] = sd[f"centres.{s}"].to(dev, copy=True)
            self._existed[s] = sd[f"existed.{s}"].to(dev, copy=True)

    def to(self, device: torch.device | str) -> UnimodalLabelGenerator:
        self.device = torch.device(device)
        self.load_state_dict(self.state_dict())
        return self

    # -- internals --

    def _index(self, indexes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(indexes, dtype=torch.long, device=self.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ValueError(f"sample indexes must lie in [0, {self.num_samples})")
        return idx

    def _check_features(self, features: Mapping[str, torch.Tensor], batch: int
                        ) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for s in MODALITIES:
            if s not in features:
                raise ValueError(f"features lack modality {s!r}")
            f = features[s].detach().to(self.device, torch.float32)
            if tuple(f.shape) != (batch, self.dims[s]):
                raise ValueError(f"features[{s!r}] has shape {tuple(f.shape)}, "
                                 f"expected ({batch}, {self.dims[s]})")
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"features[{s!r}] contain non-finite values")
            feats[s] = f
        return feats

    def _update_labels(self, idx: torch.Tensor, feats: dict[str, torch.Tensor], epoch: int) -> None:
        """Step 3: new u-labels from the centres as they stood before this batch."""
        if not bool(self._existed["m"].all()):
            return
        y_m = self._labels[0, idx]
        pos_m, neg_m = self._centres["m"]
        alpha_m = relative_distance(feats["m"], pos_m, neg_m)
        for i, s in enumerate(MODALITIES):
            if s == "m" or not bool(self._existed[s].all()):
                continue
            pos, neg = self._centres[s]
            y_hat = candidate_label(y_m, relative_distance(feats[s], pos, neg), alpha_m, self.H)
            # Finite representations too large for float32 distances give inf - inf = NaN: such
            # a sample gets no candidate this time and keeps its label (clamping handles +-inf).
            y_hat = torch.where(torch.isnan(y_hat), self._labels[i, idx], y_hat)
            self._labels[i, idx] = momentum_update(self._labels[i, idx], y_hat, epoch)

    def _accumulate(self, s: str, old_rep: torch.Tensor, new_rep: torch.Tensor,
                    old_label: torch.Tensor, new_label: torch.Tensor) -> None:
        """Move the batch's contribution to the class sums and counts from old to new state."""
        old_m = torch.stack(class_masks(old_label, self.exclude_zero), dim=1)  # (B, 2)
        new_m = torch.stack(class_masks(new_label, self.exclude_zero), dim=1)
        self._sums[s] += (new_m.to(torch.float64).T @ new_rep.to(torch.float64)
                          - old_m.to(torch.float64).T @ old_rep.to(torch.float64))
        self._counts[s] += new_m.sum(dim=0) - old_m.sum(dim=0)

    def _refresh_centres(self, modalities: Sequence[str]) -> None:
        """Step 5; an empty class keeps its previous centre."""
        for s in modalities:
            counts = self._counts[s]
            present = counts > 0
            # An emptied class's sum is zero up to rounding; reset it so no drift survives.
            self._sums[s][~present] = 0.0
            if self.centre_mode == "full":
                i = MODALITIES.index(s)
                fresh = full_centres(self._reps[s], self._labels[i], self.exclude_zero)
                self._centres[s] = torch.stack([c if c is not None else prev
                                                for c, prev in zip(fresh, self._centres[s])])
            else:
                mean = (self._sums[s] / counts.clamp(min=1).unsqueeze(1)).to(torch.float32)
                self._centres[s] = torch.where(present.unsqueeze(1), mean, self._centres[s])
            self._existed[s] |= present
