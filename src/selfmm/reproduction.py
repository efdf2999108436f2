"""Our mean over seeds beside the published Self-MM numbers (SPEC section 7), with a spread.

Neither the paper nor MMSA gives a spread, so the only honest question is whether each published
value lies inside the 95% t-interval of our mean over seeds: inside means the gap is what seed
noise at this many seeds allows; outside means something else (versions, data, configuration)
differs. Everything here is a pure function of per-seed metrics; training and the CLI sit above.

The published values are themselves means over seeds with an unreported spread, so the check
is stricter than a two-sample test would be: "outside" is a reason to look, not a verdict.

Values are fractions, as `selfmm.metrics` returns them (MAE too); only the rendering multiplies
by 100, as the field prints tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from . import datasets
from .data.mmsa import check_label_range
from .data.types import FeatureData
from .datasets import SOURCES, Column
from .errors import SelfMMError
from .io import write_json, write_text
from .metrics import METRIC_NAMES
from .results import display

PROTOCOL_SEEDS = (1111, 1112, 1113, 1114, 1115)  # MMSA's default seeds (SPEC section 5)
CONFIDENCE = 0.95
PUBLISHED = Column(lambda dataset: dataset.published)  # dataset -> source -> Published


def check_labels(data: FeatureData, dataset: str) -> None:
    """The file's labels must fit the dataset named: inside its range, and, for the [-3, 3]
    datasets, beyond [-1, 1] somewhere (a file whose labels all lie within +-1 is SIMS-like)."""
    check_label_range(data, dataset)
    low, high = datasets.get(dataset).label_range
    labels = np.concatenate([np.asarray(s.labels) for s in data.splits.values()])
    if high > 1 and labels.size and np.abs(labels).max() <= 1:
        raise SelfMMError(f"{data.path}: every label lies within [-1, 1], as in SIMS, not in {dataset}'s "
                          f"[{low:g}, {high:g}]: not a {dataset} file")


def compare(per_seed: Mapping[int, Mapping[str, float]], dataset: str, protocol: bool = True,
            notes: Sequence[str] = ()) -> dict[str, Any]:
    """Mean, std (ddof=1) and 95% t-interval over seeds of every metric, each published value
    beside them with the difference (ours - published) and whether it lies inside the interval.

    `protocol` False, or seeds other than 1111-1115, marks the result as not the published
    protocol; `notes` say why (e.g. "max_epochs=3"). NaN values (Non0_* when the test split has
    no non-zero label) are left out and `n` counts what remains. The result is JSON-ready:
    undefined numbers are None.
    """
    if dataset not in METRIC_NAMES:
        raise SelfMMError(f"unknown dataset {dataset!r}; expected one of {', '.join(METRIC_NAMES)}")
    if not per_seed:
        raise SelfMMError("no finished seed to compare with the published results")
    per_seed = {int(s): m for s, m in per_seed.items()}  # results.json keys seeds by string
    seeds = sorted(per_seed)
    names = METRIC_NAMES[dataset]
    for seed in seeds:
        missing = [k for k in names if k not in per_seed[seed]]
        if missing:
            raise SelfMMError(f"seed {seed}: metrics {', '.join(missing)} missing for dataset {dataset!r}")
    notes = list(notes)
    if tuple(seeds) != PROTOCOL_SEEDS:
        notes.append(f"seeds {', '.join(map(str, seeds))} instead of the published "
                     f"{PROTOCOL_SEEDS[0]}-{PROTOCOL_SEEDS[-1]}")
    sources = PUBLISHED[dataset]
    metrics = {}
    for name in names:
        summary = _summary({seed: float(per_seed[seed][name]) for seed in seeds})
        summary["published"] = {key: _against(name, summary, key, src.values.get(name))
                                for key, src in sources.items()}
        metrics[name] = summary
    return {
        "dataset": dataset,
        "protocol": protocol and tuple(seeds) == PROTOCOL_SEEDS,
        "notes": notes,
        "seeds": seeds,
        "confidence": CONFIDENCE,
        "sources": {key: {"label": SOURCES[key][0], "citation": src.citation}
                    for key, src in sources.items()},
        "metrics": metrics,
    }


def _summary(values: dict[int, float]) -> dict[str, Any]:
    finite = np.array([v for v in values.values() if math.isfinite(v)], dtype=np.float64)
    n = int(finite.size)
    out: dict[str, Any] = {"per_seed": {str(s): (v if math.isfinite(v) else None) for s, v in values.items()},
                           "n": n, "mean": float(finite.mean()) if n else None, "std": None, "interval": None}
    if n >= 2:
        std = float(finite.std(ddof=1))
        half = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, interval=[out["mean"] - half, out["mean"] + half])
    return out


def _against(metric: str, summary: dict[str, Any], source: str, value: float | None) -> dict[str, Any]:
    """One published value against our summary: difference, inside or not, and a sentence."""
    who, mean, interval, n = SOURCES[source][1], summary["mean"], summary["interval"], summary["n"]
    if value is None:
        return {"value": None, "difference": None, "inside": None,
                "sentence": f"{metric}: {who} does not report it."}
    if mean is None:
        return {"value": value, "difference": None, "inside": None,
                "sentence": f"{metric}: no seed gave a value to set against {who}'s {display(value)}."}
    diff = mean - value
    if interval is None:
        return {"value": value, "difference": diff, "inside": None,
                "sentence": f"{metric}: our one seed is {_relative(diff)} {who}'s {display(value)}; "
                            f"one seed has no spread, so there is no interval to judge the gap by."}
    lo, hi = interval
    inside = bool(lo <= value <= hi)
    verdict = (f"within seed noise at {n} seeds" if inside else f"more than seed noise at {n} seeds explains")
    return {"value": value, "difference": diff, "inside": inside,
            "sentence": f"{metric}: {who}'s {display(value)} lies {'inside' if inside else 'outside'} "
                        f"our {CONFIDENCE:.0%} interval [{display(lo)}, {display(hi)}]; our mean is "
                        f"{_relative(diff)} it: {verdict}."}


def _relative(diff: float) -> str:
    size = display(abs(diff))
    if size == "0.00":
        return "level with"
    return f"{size} points {'above' if diff > 0 else 'below'}"


def render_markdown(comparison: Mapping[str, Any], provenance: Mapping[str, Any] | None = None) -> str:
    """The comparison as a page a person reads: flag, table, sentences, per-seed values, sources
    and whatever provenance the caller passes (versions, data hash, device)."""
    seeds, sources, metrics = comparison["seeds"], comparison["sources"], comparison["metrics"]
    name = comparison["dataset"]
    title = datasets.get(name).title if name in datasets.names() else name.upper()
    lines = [f"# Self-MM reproduction: {title}", ""]
    if comparison["protocol"]:
        lines.append(f"Published protocol: seeds {PROTOCOL_SEEDS[0]}-{PROTOCOL_SEEDS[-1]} with the published "
                     "configuration.")
    else:
        why = "; ".join(comparison["notes"]) or "so marked by the caller"
        lines.append(f"**Not the published protocol** ({why}): do not read the gaps below as a failure "
                     "to reproduce.")
    level = f"{comparison['confidence']:.0%}"
    lines += ["", f"Seeds: {', '.join(map(str, seeds))}. Every value is x100 with 2 decimals, as the field "
              "prints it, MAE included (MAE 71.30 means a mean absolute error of 0.7130). std is the sample "
              f"standard deviation over seeds (ddof=1); the interval is the {level} t-interval of the mean; "
              "diff is ours minus the published value; inside says whether the published value lies in "
              "the interval.", ""]
    header, rows = table(comparison)
    align = ["---", "---:", "---:", "---:", ":---:"] + ["---:", "---:", ":---:"] * len(sources)
    lines += [_row(header), _row(align)]
    lines += [_row(["**no**" if cell == "no" else cell for cell in row]) for row in rows]
    lines += ["", "## In words", ""]
    lines += [f"- {m['published'][key]['sentence']}" for m in metrics.values() for key in sources]
    lines += ["", "## Per seed", "", _row(["seed", *metrics]), _row(["---"] + ["---:"] * len(metrics))]
    lines += [_row([str(s)] + [_shown(m["per_seed"][str(s)]) for m in metrics.values()]) for s in seeds]
    lines += ["", "## Sources", ""]
    lines += [f"- {src['label']}: {src['citation']}" for src in sources.values()]
    if provenance:
        lines += ["", "## Provenance", "", *_bullets(provenance)]
    return "\n".join(lines) + "\n"


def table(comparison: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison, x100 as the field prints it: per metric n, mean, std,
    interval, then per source its value, the difference and whether it lies inside."""
    sources, level = comparison["sources"], f"{comparison['confidence']:.0%}"
    header = ["metric", "n", "mean", "std", f"{level} interval"]
    for src in sources.values():
        header += [src["label"], "diff", "inside"]
    rows = []
    for name, m in comparison["metrics"].items():
        interval = m["interval"]
        cells = [name, str(m["n"]), _shown(m["mean"]), _shown(m["std"]),
                 f"{display(interval[0])} to {display(interval[1])}" if interval else "n/a"]
        for key in sources:
            p = m["published"][key]
            if p["value"] is None:
                cells += ["not reported", "", ""]
            else:
                diff = "n/a" if p["difference"] is None else _signed(p["difference"])
                cells += [display(p["value"]), diff, {True: "yes", False: "no", None: "n/a"}[p["inside"]]]
        rows.append(cells)
    return header, rows


def write(out: str | Path, comparison: Mapping[str, Any], provenance: Mapping[str, Any] | None = None) -> str:
    """`out/reproduction.json` (the comparison and the provenance) and `out/reproduction.md`, each
    written whole or not at all; returns the markdown for printing."""
    out = Path(out)
    text = render_markdown(comparison, provenance)
    write_json(out / "reproduction.json", {**comparison, "provenance": dict(provenance or {})})
    write_text(out / "reproduction.md", text)
    return text


def _shown(value: float | None) -> str:
    return "n/a" if value is None else display(value)


def _signed(diff: float) -> str:
    # + 0.0 turns a rounded -0.0 into 0.0, so a gap too small to print reads "+0.00", not "-0.00".
    return f"{round(100 * diff, 2) + 0.0:+.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _bullets(obj: Mapping[str, Any], depth: int = 0) -> list[str]:
    indent, lines = "  " * depth, []
    for key, value in obj.items():
        if isinstance(value, Mapping):
            lines += [f"{indent}- {key}:", *_bullets(value, depth + 1)]
        elif isinstance(value, (list, tuple)):
            lines.append(f"{indent}- {key}: {', '.join(map(str, value))}")
        else:
            lines.append(f"{indent}- {key}: {value}")
    return lines
