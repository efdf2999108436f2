"""One self-contained HTML page per run (`selfmm report`): config, metrics, curves, u-labels
and the test clips with the largest errors.

The page needs nothing beside itself (figures are PNG data URIs, the style is inline), so it
can be mailed or archived. This module gathers the data; the markup is templates/report.html.j2,
rendered with autoescaping, so every string from a run or a data file (ids, transcripts, config
values, paths) comes out as text, never as markup.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .analysis import chosen_epochs, figures, label_trajectory, load_human_data, png_bytes, summary_text
from .configuration import flatten
from .data.types import FeatureData
from .reproduction import table as reproduction_table
from .results import display, summarize
from .runs import HEADS, ULABELS, read_json, read_predictions
from .trained import SeedRun, load_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Table:
    """Cells are text; None shows as "(not available)". Columns from `numeric_from` on are
    right-aligned numbers; the last `summary_rows` rows are emphasised."""

    header: list[str]
    rows: list[list[str | None]]
    numeric_from: int = 1
    summary_rows: int = 0


# --- figures -------------------------------------------------------------------------------


def plot_curves(seeds: list[SeedRun]) -> Figure:
    """Training and validation loss per epoch, one line per seed; a dot at the selected epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for run in seeds:
        epochs = [h["epoch"] for h in run.history]
        for ax, key in zip(axes, ("train_loss", "valid_loss"), strict=True):
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


def _png_uri(fig: Figure) -> str:
    # Base64 holds no character that HTML escapes, so the template needs no `safe` for it.
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode("ascii")


# --- sections ------------------------------------------------------------------------------


def metrics_section(seeds: list[SeedRun]) -> Table | None:
    done = {r.seed: r.metrics for r in seeds if r.metrics}
    if not done:
        return None
    per_seed = {seed: m["test"] for seed, m in done.items()}
    names = list(next(iter(per_seed.values())))
    rows: list[list[str | None]] = [
        [str(seed), str(done[seed]["best_epoch"]), *(display(v[k]) for k in names)]
        for seed, v in per_seed.items()]
    summary = summarize(per_seed)
    rows += [[stat, "", *(display(summary[stat][k]) for k in names)] for stat in ("mean", "std")]
    return Table(["seed", "best epoch", *names], rows, summary_rows=2)


def config_section(run: SeedRun) -> Table:
    rows: list[list[str | None]] = [[k, json.dumps(v)] for k, v in flatten(run.saved["config"]).items()]
    rows += [[f"data.{k}", json.dumps(v)] for k, v in run.saved["data"].items()]
    return Table(["setting", "value"], rows, numeric_from=2)


def error_section(seeds: list[SeedRun], data: FeatureData | None, top: int) -> dict[str, Any] | None:
    """The test clips whose multimodal prediction (mean over seeds) misses the label most."""
    predictions = {r.seed: read_predictions(r.path) for r in seeds}
    runs = [r for r in seeds if predictions[r.seed]]
    if not runs:
        return None
    preds: dict[str, list[np.ndarray]] = {}
    labels: dict[str, float] = {}
    for r in runs:
        for row in predictions[r.seed]:
            labels[row["id"]] = float(row["label"])
            preds.setdefault(row["id"], []).append(np.array([float(row[f"pred_{s}"]) for s in HEADS]))
    # Only clips every seed predicted, so each mean is over the same models.
    mean = {clip: np.mean(p, axis=0) for clip, p in preds.items() if len(p) == len(runs)}
    worst = sorted(mean, key=lambda clip: -abs(mean[clip][0] - labels[clip]))[:top]
    transcripts: dict[str, str] = {}
    human: dict[str, dict[str, float]] = {}  # clip -> t/a/v human label, where the file has them
    if data is not None and "test" in data.splits:
        test = data.splits["test"]
        transcripts = dict(zip(test.ids, test.raw_text, strict=True))
        if test.unimodal_labels:
            human = {clip: {s: float(test.unimodal_labels[s][j]) for s in "tav"}
                     for j, clip in enumerate(test.ids)}
    rows: list[list[str | None]] = []
    for clip in worst:
        p = mean[clip]
        truth = []
        if human:
            truth = [f"{human[clip][s]:.2f}" for s in "tav"] if clip in human else ["", "", ""]
        rows.append([clip, transcripts.get(clip) or None, f"{labels[clip]:.2f}", *truth,
                     *(f"{x:.2f}" for x in p), f"{abs(p[0] - labels[clip]):.2f}"])
    header = ["id", "transcript", "m-label", *(["human t", "human a", "human v"] if human else []),
              "pred m", "pred t", "pred a", "pred v", "|error|"]
    return {"table": Table(header, rows, numeric_from=2), "transcripts": bool(transcripts),
            "human": bool(human),
            "averaged": f"the mean over {len(runs)} seeds" if len(runs) > 1 else f"seed {runs[0].seed}"}


def ulabel_section(seeds: list[SeedRun], data_arg: str | None, epochs: list[int] | None,
                   cache: dict[str, FeatureData | None]) -> list[dict[str, Any]]:
    """Per seed with u-labels: its seed, the summary text and (file stem, PNG data URI) pairs."""
    out = []
    for run in seeds:
        if not (run.path / ULABELS).exists():
            continue
        traj = label_trajectory(run.path, load_human_data(run.path, data_arg, cache))
        out.append({"seed": run.seed, "summary": summary_text(traj),
                    "figures": [(stem, _png_uri(fig))
                                for stem, fig in figures(traj, chosen_epochs(epochs, traj.epochs)).items()]})
    return out


def reproduction_section(run: Path) -> dict[str, Any] | None:
    """The table of `selfmm reproduce` (reproduction.json beside the run), as reproduction.md has it."""
    saved = read_json(run / "reproduction.json", None)
    if saved is None:
        return None
    header, rows = reproduction_table(saved)
    return {"protocol": saved["protocol"], "notes": saved["notes"], "seeds": saved["seeds"],
            "level": f"{saved['confidence']:.0%}", "table": Table(header, rows, numeric_from=1)}


def build_report(run: str | Path, data_arg: str | None = None, top: int = 10,
                 epochs: list[int] | None = None, seed: int | None = None) -> str:
    """The report page of a run directory (every seed) or of one seed directory."""
    import jinja2

    loaded = load_run(run)
    seeds = [loaded.select(seed)] if seed is not None else list(loaded.seeds.values())
    first = seeds[0]
    cache: dict[str, FeatureData | None] = {}
    data = load_human_data(first.path, data_arg, cache)
    # autoescape=True, not select_autoescape: that one goes by the last extension, here .j2.
    env = jinja2.Environment(loader=jinja2.PackageLoader("selfmm", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        name=Path(run).name, path=Path(run).resolve(), dataset=first.saved["config"]["dataset"],
        seeds=[r.seed for r in seeds], version=__version__,
        when=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        metrics=metrics_section(seeds), unfinished=[r.seed for r in seeds if not r.metrics],
        reproduction=reproduction_section(Path(run)),
        curves=_png_uri(plot_curves(seeds)) if any(r.history for r in seeds) else None,
        ulabels=ulabel_section(seeds, data_arg, epochs, cache), errors=error_section(seeds, data, top),
        config_seed=first.seed, config=config_section(first))
