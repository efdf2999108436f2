"""Results over seeds: per-seed metrics, mean and standard deviation, as files and as tables."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import write_json, write_text

PerSeed = dict[int, dict[str, float]]


def summarize(per_seed: PerSeed) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (population, ddof=0, as MMSA) of every metric over seeds."""
    names = list(next(iter(per_seed.values())))
    values = {k: np.array([m[k] for m in per_seed.values()], dtype=np.float64) for k in names}
    return {"mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std()) for k, v in values.items()}}


def display(value: float) -> str:
    """The field's convention: x100 (MAE too), two decimals."""
    return f"{round(value * 100, 2):.2f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str = "",
                 left: int = 1, rule: bool = True) -> str:
    """A fixed-width text table; the first `left` columns are left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    lines = [title] if title else []
    lines.append(line(header))
    if rule:
        lines.append(line(["-" * w for w in widths]))
    return "\n".join(lines + [line(r) for r in rows])


def table(per_seed: PerSeed, title: str = "") -> str:
    """One row per seed, then mean and std (x100)."""
    summary = summarize(per_seed)
    names = list(summary["mean"])
    rows = [[str(seed)] + [display(m[k]) for k in names] for seed, m in per_seed.items()]
    rows += [[stat] + [display(summary[stat][k]) for k in names] for stat in ("mean", "std")]
    return format_table(["seed", *names], rows, title)


def csv_text(per_seed: PerSeed) -> str:
    summary = summarize(per_seed)
    names = list(summary["mean"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["seed"] + names)
    for seed, m in per_seed.items():
        writer.writerow([seed] + [f"{m[k]:.6f}" for k in names])
    writer.writerow(["mean"] + [f"{summary['mean'][k]:.6f}" for k in names])
    writer.writerow(["std"] + [f"{summary['std'][k]:.6f}" for k in names])
    return buffer.getvalue()


def write_results(out: Path, config: dict[str, Any], per_seed: PerSeed,
                  provenance: dict[str, Any] | None = None) -> None:
    """`results.json` and `results.csv`, each written whole or not at all."""
    write_json(out / "results.json", {"config": config,
                                      "seeds": {str(s): m for s, m in per_seed.items()},
                                      **summarize(per_seed), "provenance": provenance})
    write_text(out / "results.csv", csv_text(per_seed))
