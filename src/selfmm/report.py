"""One self-contained HTML page per run (`selfmm report`): config, metrics, curves, u-labels
and the test clips with the largest errors.

The page needs nothing beside itself (figures are PNG data URIs, the style is inline), so it
can be mailed or archived. Every string from a run or a data file goes through html.escape:
transcripts and ids are user data.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import json
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .analysis import (chosen_epochs, figures, label_trajectory, load_human_data, png_bytes,
                       seed_dirs, summary_text)
from .errors import SelfMMError
from .io import write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .data.mmsa import FeatureData

HEADS = ("m", "t", "a", "v")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1300px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.summary td { font-weight: bold; background: #fafafa; }
#errors td:nth-child(2) { max-width: 40em; }
img { max-width: 100%; display: block; margin: .5em 0; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
.note { color: #666; }
"""


@dataclass
class SeedRun:
    """What the report reads from one seed directory."""

    path: Path
    seed: int
    saved: dict[str, Any]  # config.json
    metrics: dict[str, Any] | None  # metrics.json; None while the seed is unfinished
    history: list[dict[str, float]]
    predictions: list[dict[str, str]]  # rows of test_predictions.csv


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SelfMMError(f"{path} is not valid JSON: {exc}") from None


def read_seed(path: Path) -> SeedRun:
    saved = _read_json(path / "config.json")
    rows: list[dict[str, str]] = []
    if (path / "test_predictions.csv").exists():
        with open(path / "test_predictions.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    return SeedRun(path=path, seed=int(saved["seed"]), saved=saved,
                   metrics=_read_json(path / "metrics.json"),
                   history=_read_json(path / "history.json", []), predictions=rows)


# --- figures -------------------------------------------------------------------------------


def plot_curves(seeds: list[SeedRun]) -> Figure:
    """Training and validation loss per epoch, one line per seed; a dot at the selected epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for run in seeds:
        epochs = [h["epoch"] for h in run.history]
        for ax, key in zip(axes, ("train_loss", "valid_loss")):
            (line,) = ax.plot(epochs, [h[key] for h in run.history], marker=".", label=f"seed {run.seed}")
            best = run.metrics["best_epoch"] if run.metrics else 0
            if key == "valid_loss" and best in epochs:
                ax.plot([best], [run.history[epochs.index(best)][key]], "o", markersize=9,
                        color=line.get_color(), markerfacecolor="none")
    axes[0].set_title("training loss (sum of the active tasks' L1)")
    axes[1].set_title("validation loss (multimodal L1); circle: selected epoch")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _img(fig: Figure, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


# --- sections ------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1, table_id: str = "",
           summary_rows: int = 0) -> str:
    """An HTML table of already-escaped cells; the last `summary_rows` rows are emphasised."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="summary"' if i >= len(rows) - summary_rows else ""
        cells = "".join(f'<td class="num">{c}</td>' if j >= numeric_from else f"<td>{c}</td>"
                        for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def metrics_section(seeds: list[SeedRun]) -> str:
    from .results import display, summarize

    done = {r.seed: r.metrics for r in seeds if r.metrics}
    if not done:
        return "<p class=note>No seed has finished: no test metrics yet.</p>"
    per_seed = {seed: m["test"] for seed, m in done.items()}
    names = list(next(iter(per_seed.values())))
    rows = [[escape(str(seed)), str(done[seed]["best_epoch"])] + [display(v[k]) for k in names]
            for seed, v in per_seed.items()]
    summary = summarize(per_seed)
    rows += [[stat, ""] + [display(summary[stat][k]) for k in names] for stat in ("mean", "std")]
    unfinished = [r.seed for r in seeds if not r.metrics]
    note = (f"<p class=note>Unfinished, left out: seed(s) {escape(', '.join(map(str, unfinished)))}.</p>"
            if unfinished else "")
    return (f"<p>Test split, best weights by validation loss, x100 (MAE too); std over seeds "
            f"is the population std (ddof=0), as MMSA.</p>"
            + _table(["seed", "best epoch", *map(escape, names)], rows, table_id="metrics", summary_rows=2)
            + note)


def config_section(run: SeedRun) -> str:
    from .config import flatten

    config = flatten(run.saved["config"])
    rows = [[escape(k), escape(json.dumps(v))] for k, v in config.items()]
    rows += [[escape(f"data.{k}"), escape(json.dumps(v))] for k, v in run.saved["data"].items()]
    return _table(["setting", "value"], rows, numeric_from=2)


def error_section(seeds: list[SeedRun], data: FeatureData | None, top: int) -> str:
    """The test clips whose multimodal prediction (mean over seeds) misses the label most."""
    runs = [r for r in seeds if r.predictions]
    if not runs:
        return "<p class=note>No test predictions yet.</p>"
    preds: dict[str, list[np.ndarray]] = {}
    labels: dict[str, float] = {}
    for r in runs:
        for row in r.predictions:
            labels[row["id"]] = float(row["label"])
            preds.setdefault(row["id"], []).append(np.array([float(row[f"pred_{s}"]) for s in HEADS]))
    # Only clips every seed predicted, so each mean is over the same models.
    mean = {clip: np.mean(p, axis=0) for clip, p in preds.items() if len(p) == len(runs)}
    worst = sorted(mean, key=lambda clip: -abs(mean[clip][0] - labels[clip]))[:top]
    transcripts: dict[str, str] = {}
    human: dict[str, dict[str, float]] = {}  # clip -> t/a/v human label, where the file has them
    if data is not None and "test" in data.splits:
        test = data.splits["test"]
        transcripts = dict(zip(test.ids, test.raw_text))
        if test.unimodal_labels:
            human = {clip: {s: float(test.unimodal_labels[s][j]) for s in "tav"}
                     for j, clip in enumerate(test.ids)}
    rows = []
    for clip in worst:
        p = mean[clip]
        text = transcripts.get(clip)
        truth = []
        if human:
            truth = [f"{human[clip][s]:.2f}" for s in "tav"] if clip in human else ["", "", ""]
        rows.append([escape(clip), escape(text) if text else '<span class="note">(not available)</span>',
                     f"{labels[clip]:.2f}", *truth, *(f"{x:.2f}" for x in p),
                     f"{abs(p[0] - labels[clip]):.2f}"])
    averaged = f"the mean over {len(runs)} seeds" if len(runs) > 1 else f"seed {runs[0].seed}"
    note = "" if transcripts else " Transcripts need the data file (--data)."
    if human:
        note += " The file's human unimodal labels stand beside the m-label (human t, a, v)."
    header = ["id", "transcript", "m-label", *(["human t", "human a", "human v"] if human else []),
              "pred m", "pred t", "pred a", "pred v", "|error|"]
    return (f"<p>The {len(worst)} test clips with the largest |pred m - m-label|; predictions are "
            f"{escape(averaged)}. Only the multimodal head is used at test time; t, a, v show what "
            f"each unimodal head alone says.{note}</p>"
            + _table(header, rows, numeric_from=2, table_id="errors"))


def ulabel_section(seeds: list[SeedRun], data_arg: str | None, epochs: list[int] | None,
                   cache: dict[str, FeatureData | None]) -> str:
    parts = []
    for i, run in enumerate(seeds):
        if not (run.path / "ulabels.npz").exists():
            continue
        traj = label_trajectory(run.path, load_human_data(run.path, data_arg, cache))
        body = f"<pre>{escape(summary_text(traj))}</pre>" + "".join(
            _img(fig, f"seed {run.seed}: {stem}")
            for stem, fig in figures(traj, chosen_epochs(epochs, traj.epochs)).items())
        # The first seed open, the others folded: five seeds of figures are a long page.
        parts.append(f"<details{' open' if i == 0 else ''}><summary>seed {run.seed}</summary>"
                     f"{body}</details>")
    return "".join(parts) or "<p class=note>No u-labels recorded yet.</p>"


def build_report(run: str | Path, data_arg: str | None = None, top: int = 10,
                 epochs: list[int] | None = None, seed: int | None = None) -> str:
    """The report page of a run directory (every seed) or of one seed directory."""
    seeds = [read_seed(p) for p in seed_dirs(run, seed)]
    first = seeds[0]
    cache: dict[str, FeatureData | None] = {}
    data = load_human_data(first.path, data_arg, cache)
    dataset = first.saved["config"]["dataset"]
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    curves = (_img(plot_curves(seeds), "training and validation loss per epoch")
              if any(r.history for r in seeds) else "<p class=note>No epoch finished yet.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(f"selfmm report: {Path(run).name}")}</title>
<style>{STYLE}</style></head><body>
<h1>{escape(f"Self-MM run {Path(run).resolve()}")}</h1>
<p>{escape(f"dataset {dataset}, seeds {', '.join(str(r.seed) for r in seeds)}; "
           f"selfmm {__version__}; report written {when}")}</p>
<h2>Test metrics</h2>
{metrics_section(seeds)}
<h2>Training and validation curves</h2>
{curves}
<h2>Generated unimodal labels</h2>
<p>How the u-labels of the training clips left the m-labels, and, where the data holds human
unimodal labels, how they compare with them (see docs/ulabels.md).</p>
{ulabel_section(seeds, data_arg, epochs, cache)}
<h2>Largest test errors</h2>
{error_section(seeds, data, top)}
<h2>Configuration</h2>
<p>{escape(f"seed {first.seed}'s resolved configuration (config.json); every seed of a run shares it.")}</p>
{config_section(first)}
</body></html>
"""


def cmd_report(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise SelfMMError("--top must be at least 1")
    html = build_report(args.run, args.data, args.top, args.epochs, args.seed)
    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    write_text(out, html)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a run")
    p.add_argument("run", help="a run directory (every seed) or one seed directory")
    p.add_argument("--data", help="feature file for transcripts and human unimodal labels "
                   "(default: the file the run was trained on)")
    p.add_argument("--out", help="output file (default: RUN/report.html)")
    p.add_argument("--top", type=int, default=10, help="test clips with the largest errors to show")
    p.add_argument("--epochs", type=int, nargs="+", metavar="E",
                   help="epochs of the u-label distributions (as in `selfmm labels`)")
    p.add_argument("--seed", type=int, help="only this seed of a run directory")
    p.set_defaults(func=cmd_report)
