"""A plain-text report of a loaded feature file, for `selfmm inspect`."""

from __future__ import annotations

import numpy as np

from .layout import UNKNOWN_FEATURES
from .types import FeatureData, Split

BAR_WIDTH = 40


def summarize(data: FeatureData) -> str:
    """Per split: sizes, length statistics, a label histogram; then what validation repaired."""
    audio_set = "" if data.audio_features == UNKNOWN_FEATURES else f" ({data.audio_features})"
    visual_set = "" if data.visual_features == UNKNOWN_FEATURES else f" ({data.visual_features})"
    lines = [
        f"{data.path}",
        f"  {'aligned' if data.aligned else 'unaligned'}; text length {data.text_len}, "
        f"audio {data.audio_len} x {data.audio_dim}{audio_set}, "
        f"vision {data.vision_len} x {data.vision_dim}{visual_set}",
    ]
    edges = _label_edges(data)
    for split in data.splits.values():
        lines += _split_lines(split, edges)
    lines.append("repairs:")
    lines += [f"  {line}" for line in data.repairs] or ["  no repairs"]
    return "\n".join(lines) + "\n"


def _label_edges(data: FeatureData) -> np.ndarray:
    """Bins centred on the label grid: integers for [-3, 3], steps of 0.2 for [-1, 1] (SIMS)."""
    peak = max((float(np.abs(s.labels).max()) for s in data.splits.values() if len(s)), default=0.0)
    step = 1.0 if peak > 1.0 else 0.2
    top = max(1.0, np.ceil(peak / step - 1e-6) * step)
    centres = np.arange(-top, top + step / 2, step)
    return np.append(centres - step / 2, centres[-1] + step / 2)


def _stats(values: np.ndarray) -> str:
    if not values.size:
        return "-"
    return f"min {values.min()}  mean {values.mean():.1f}  max {values.max()}"


def _split_lines(split: Split, edges: np.ndarray) -> list[str]:
    text_lengths = np.asarray(split.text_bert[:, 1, :]).sum(axis=1).astype(np.int64)
    lines = [
        f"{split.name}: {len(split)} samples",
        f"  text tokens   {_stats(text_lengths)}",
        f"  audio frames  {_stats(split.audio_lengths)}  zero-length {int((split.audio_lengths == 0).sum())}",
        f"  vision frames {_stats(split.vision_lengths)}  zero-length {int((split.vision_lengths == 0).sum())}",
        "  unimodal labels: " + ("present (t, a, v)" if split.unimodal_labels else "absent"),
    ]
    if not len(split):
        return lines
    labels = split.labels
    lines.append(
        f"  labels: mean {labels.mean():.3f}  std {labels.std():.3f}  exactly 0: {int((labels == 0).sum())}"
    )
    counts, _ = np.histogram(labels, bins=edges)
    scale = BAR_WIDTH / max(1, counts.max())
    for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True):
        centre = round((low + high) / 2, 6) + 0.0  # never print "-0.0"
        lines.append(f"  {centre:+5.1f} | {'#' * round(count * scale):<{BAR_WIDTH}} {count}")
    return lines
