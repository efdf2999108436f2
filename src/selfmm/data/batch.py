"""Batches: gather rows of a split by index and cut every sequence to the batch's longest.

Padding beyond a batch's longest sequence changes nothing the model computes (the encoder masks
it, the LSTMs pack it away), so dynamic padding only saves work.

The lengths stay on the host when a batch moves to the device: packing the LSTMs' sequences
and the encoder's tokens is planned from them there, and reading them from a GPU would make
the host wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .types import Split

HOST_FIELDS = ("audio_lengths", "vision_lengths", "text_lengths")


@dataclass
class Batch:
    index: torch.Tensor  # (B,) int64, row of each clip in its split
    text: torch.Tensor  # (B, 3, Lt) int64: ids, mask, token types
    audio: torch.Tensor  # (B, La, Da) float32
    audio_lengths: torch.Tensor  # (B,) int64
    vision: torch.Tensor  # (B, Lv, Dv) float32
    vision_lengths: torch.Tensor  # (B,) int64
    labels: torch.Tensor  # (B,) float32 m-labels
    # (B,) int64 real tokens of each text (its mask's sum), when known; with right-padded masks
    # (which the loader guarantees) the encoder packs its tokens without reading the mask back.
    text_lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on `device`, its lengths left on the host."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            host = value is None or f.name in HOST_FIELDS
            moved[f.name] = value if host else value.to(device, non_blocking=non_blocking)
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: None if (value := getattr(self, f.name)) is None else value.pin_memory()
                        for f in fields(self)})

    def __len__(self) -> int:
        return int(self.index.shape[0])


class Collator:
    """`collate_fn` over lists of row indexes of one split; `pad_to_max` disables the cut."""

    def __init__(self, split: Split, pad_to_max: bool = False):
        self.split = split
        self.pad_to_max = pad_to_max

    def __call__(self, rows: list[int]) -> Batch:
        s = self.split
        idx = np.asarray(rows, dtype=np.int64)
        text = s.text_bert[idx]
        text_lengths = np.asarray(text[:, 1].sum(axis=1), dtype=np.int64)
        audio_lengths = np.asarray(s.audio_lengths[idx], dtype=np.int64)
        vision_lengths = np.asarray(s.vision_lengths[idx], dtype=np.int64)
        if self.pad_to_max:
            lt, la, lv = text.shape[-1], s.audio.shape[1], s.vision.shape[1]
        else:
            # Keep at least one step so that a batch of empty clips still has a shape.
            lt = max(int(text_lengths.max(initial=0)), 1)
            la = max(int(audio_lengths.max(initial=0)), 1)
            lv = max(int(vision_lengths.max(initial=0)), 1)
        return Batch(
            index=torch.from_numpy(idx),
            text=torch.from_numpy(np.ascontiguousarray(text[:, :, :lt]).astype(np.int64, copy=False)),
            audio=torch.from_numpy(np.ascontiguousarray(s.audio[idx, :la], dtype=np.float32)),
            audio_lengths=torch.from_numpy(np.minimum(audio_lengths, la)),
            vision=torch.from_numpy(np.ascontiguousarray(s.vision[idx, :lv], dtype=np.float32)),
            vision_lengths=torch.from_numpy(np.minimum(vision_lengths, lv)),
            labels=torch.from_numpy(np.asarray(s.labels[idx], dtype=np.float32)),
            text_lengths=torch.from_numpy(text_lengths),
        )
