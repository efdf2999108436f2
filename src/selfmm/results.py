"""Results over seeds: per-seed metrics, mean and standard deviation, as files and as a table."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from .io import write_json, write_text


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (population, ddof=0, as MMSA) of every metric over seeds."""
    names = list(next(iter(per_seed.values())))
    values = {k: np.array([m[k] for m in per_seed.values()], dtype=np.float64) for k in names}
    return {"mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std()) for k, v in values.items()}}


def display(value: float) -> str:
    """The field's convention: x100 (MAE too), two decimals."""
    return f"{round(value * 100, 2):.2f}"


def table(per_seed: dict[int, dict[str, float]], title: str = "") -> str:
    """A fixed-width text table: one row per seed, then mean and std."""
    summary = summarize(per_seed)
    names = list(summary["mean"])
    rows = [[str(seed)] + [display(m[k]) for k in names] for seed, m in per_seed.items()]
    rows.append(["mean"] + [display(summary["mean"][k]) for k in names])
    rows.append(["std"] + [display(summary["std"][k]) for k in names])
    header = ["seed"] + names
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    lines = ([title] if title else []) + [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def csv_text(per_seed: dict[int, dict[str, float]]) -> str:
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


def write(out: Path, config: dict[str, Any], per_seed: dict[int, dict[str, float]]) -> None:
    """`results.json` and `results.csv`, each written whole or not at all."""
    write_json(out / "results.json", {"config": config,
                                      "seeds": {str(s): m for s, m in per_seed.items()},
                                      **summarize(per_seed)})
    write_text(out / "results.csv", csv_text(per_seed))
