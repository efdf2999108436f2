"""U-label analysis (`selfmm labels`): how the generated unimodal labels leave the m-labels.

A seed directory's ulabels.npz holds the u-labels of every training clip after initialisation
(row 0, equal to the m-label) and after every epoch (row e). From it we draw the distributions
at chosen epochs (the paper's figure), the mean |u - m| per epoch and, when the feature file
holds human unimodal labels (SIMS, SIMSv2, the synthetic benchmark), how well the generated
labels agree with them next to the plain m-label as the baseline.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data.mmsa import load_features
from .data.types import FeatureData
from .errors import SelfMMError, warn
from .io import write_bytes, write_text
from .metrics import pearson
from .provenance import file_digest
from .runs import read_seed_config, read_ulabels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UNIMODAL = ("t", "a", "v")
NAMES = {"t": "text", "a": "audio", "v": "vision"}
COLORS = {"t": "tab:blue", "a": "tab:orange", "v": "tab:green"}


@dataclass
class LabelTrajectory:
    seed: int
    ids: list[str]
    m: np.ndarray  # (N,) m-labels of the training clips
    u: dict[str, np.ndarray]  # t/a/v -> (E+1, N): row 0 initialisation, row e after epoch e
    human: dict[str, np.ndarray]  # t/a/v -> (N,) in the order of `ids`; {} when the data has none
    H: float  # the u-labels' bound
    data_path: str | None  # the feature file the human labels came from

    @property
    def epochs(self) -> int:
        return int(self.u["t"].shape[0]) - 1


@dataclass
class Agreement:
    """Generated u-labels against one modality's human labels, per epoch (index = epoch)."""

    corr: np.ndarray  # (E+1,) Pearson r
    mae: np.ndarray  # (E+1,)
    # (E+1,) partial correlation of u with the human label given m: what the u-label knows of
    # the human label beyond the m-label. Unlike r and MAE it ignores a mere shrinking or
    # spreading of the labels (u = c * m + d has no residual), which alone moves both.
    beyond: np.ndarray
    baseline_corr: float  # the same of the m-label
    baseline_mae: float
    closer: float  # share of clips whose last u-label is nearer the human label than the m-label is
    farther: float


def label_trajectory(seed_dir: str | Path, data: FeatureData | None = None) -> LabelTrajectory:
    """Read a seed directory's u-labels; with `data`, attach its human unimodal labels by clip id."""
    seed_dir = Path(seed_dir)
    saved = read_seed_config(seed_dir)
    labels = read_ulabels(seed_dir)
    ids = [str(i) for i in labels["ids"]]
    m = labels["m"].astype(np.float64)
    u = {s: labels[s].astype(np.float64) for s in UNIMODAL}
    human: dict[str, np.ndarray] = {}
    if data is not None and data.splits["train"].unimodal_labels:
        train = data.splits["train"]
        row = {clip: j for j, clip in enumerate(train.ids)}
        missing = [clip for clip in ids if clip not in row]
        if missing:
            raise SelfMMError(f"{data.path} does not hold {len(missing)} of the run's {len(ids)} "
                              f"training clips (e.g. {missing[0]!r}): pass the run's own file as `data`")
        order = np.array([row[clip] for clip in ids])
        human = {s: np.asarray(train.unimodal_labels[s], np.float64)[order] for s in UNIMODAL}
    return LabelTrajectory(seed=int(saved["seed"]), ids=ids, m=m, u=u, human=human,
                           H=float(saved["config"]["labels"]["H"]),
                           data_path=data.path if data is not None else None)


def distance_from_m(traj: LabelTrajectory) -> dict[str, np.ndarray]:
    """Mean |u - m| over the training clips, per modality: (E+1,) each."""
    return {s: np.abs(traj.u[s] - traj.m).mean(axis=1) for s in UNIMODAL}


def _residual(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """What is left of `x` after the least-squares line on `m`."""
    if m.std() < 1e-9:
        return x - x.mean()
    slope, intercept = np.polyfit(m, x, 1)
    return x - (slope * m + intercept)


def agreement(traj: LabelTrajectory) -> dict[str, Agreement]:
    """Per modality: u-labels vs the human unimodal labels per epoch; {} without human labels."""
    out = {}
    for s, truth in traj.human.items():
        u = traj.u[s]
        last_err, m_err = np.abs(u[-1] - truth), np.abs(traj.m - truth)
        out[s] = Agreement(
            corr=np.array([pearson(row, truth) for row in u]),
            mae=np.abs(u - truth).mean(axis=1),
            beyond=np.array([pearson(_residual(row, traj.m), _residual(truth, traj.m)) for row in u]),
            baseline_corr=pearson(traj.m, truth),
            baseline_mae=float(m_err.mean()),
            closer=float(np.mean(last_err < m_err)),
            farther=float(np.mean(last_err > m_err)),
        )
    return out


def default_epochs(last: int) -> list[int]:
    """Epoch 0 (the m-labels) and up to four evenly spaced from epoch 2 to the last; epoch 1
    is skipped because the ULGM first moves the labels in epoch 2, so it equals epoch 0."""
    if last < 2:
        return list(range(last + 1))
    return [0] + sorted({int(round(e)) for e in np.linspace(2, last, min(last - 1, 4))})


# --- figures -------------------------------------------------------------------------------
# The object-oriented API (Figure, no pyplot) keeps no global state and needs no display.


def _density(ax, values: np.ndarray, label: str, color, lo: float, hi: float) -> None:
    from scipy.stats import gaussian_kde

    if np.ptp(values) < 1e-9:
        # A kernel density needs spread; one value is drawn as a line where it sits.
        ax.axvline(float(values[0]), color=color, label=label, linewidth=1.5)
        return
    grid = np.linspace(lo, hi, 400)
    ax.plot(grid, gaussian_kde(values)(grid), color=color, label=label, linewidth=1.5)


def plot_distributions(traj: LabelTrajectory, epochs: list[int]) -> Figure:
    """Top row: each modality's u-label density at `epochs` (epoch 0 is the m-label).
    Bottom row: the density of u - m at the same epochs, after the first."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3, sharex="row")
    cmap = colormaps["viridis"]
    shades = {e: cmap(i / max(len(epochs) - 1, 1)) for i, e in enumerate(epochs)}
    spread = max((np.abs(traj.u[s][e] - traj.m).max() for s in UNIMODAL for e in epochs), default=0.0)
    spread = max(float(spread), 0.1)
    for col, s in enumerate(UNIMODAL):
        top, bottom = axes[0, col], axes[1, col]
        for e in epochs:
            name = "epoch 0 (m-label)" if e == 0 else f"epoch {e}"
            _density(top, traj.u[s][e], name, shades[e], -traj.H, traj.H)
            if e > 0:
                _density(bottom, traj.u[s][e] - traj.m, f"epoch {e}", shades[e], -spread, spread)
        top.set_title(f"{NAMES[s]} u-labels")
        top.set_xlabel("label")
        bottom.set_title(f"{NAMES[s]}: u - m")
        bottom.set_xlabel("u-label minus m-label")
        for ax in (top, bottom):
            ax.set_ylabel("density")
            ax.grid(alpha=0.3)
        top.legend(fontsize=8)
        if any(e > 0 for e in epochs):
            bottom.legend(fontsize=8)
    fig.suptitle(f"seed {traj.seed}: distribution of the generated u-labels over epochs "
                 f"({len(traj.ids)} training clips)")
    return fig


def plot_distance(traj: LabelTrajectory) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    epochs = np.arange(traj.epochs + 1)
    for s, d in distance_from_m(traj).items():
        ax.plot(epochs, d, marker="o", color=COLORS[s], label=NAMES[s])
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean |u - m|")
    ax.set_title(f"seed {traj.seed}: how far the u-labels moved from the m-labels")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_agreement(traj: LabelTrajectory) -> Figure:
    """Pearson r and MAE against the human labels per epoch (dashed: the m-label baseline), and
    the partial correlation with them given the m-label."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    left, middle, right = fig.subplots(1, 3, sharex=True)
    epochs = np.arange(traj.epochs + 1)
    for s, a in agreement(traj).items():
        left.plot(epochs, a.corr, marker="o", color=COLORS[s], label=f"{NAMES[s]} u-label")
        left.axhline(a.baseline_corr, color=COLORS[s], linestyle="--")
        middle.plot(epochs, a.mae, marker="o", color=COLORS[s], label=f"{NAMES[s]} u-label")
        middle.axhline(a.baseline_mae, color=COLORS[s], linestyle="--")
        right.plot(epochs, a.beyond, marker="o", color=COLORS[s], label=NAMES[s])
    left.set_ylabel("Pearson r with the human unimodal label")
    middle.set_ylabel("MAE against the human unimodal label")
    right.set_ylabel("partial r of u-label and human label given m")
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set_title("what the u-label knows beyond the m-label", fontsize=10)
    baseline = Line2D([], [], color="grey", linestyle="--", label="m-label (baseline)")
    for ax in (left, middle, right):
        ax.set_xlabel("epoch (0 = initialisation)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in (left, middle):
        ax.legend(handles=[*ax.get_legend_handles_labels()[0], baseline], fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"seed {traj.seed}: generated u-labels against the human unimodal labels "
                 "(dashed: the m-label as a guess)")
    return fig


def figures(traj: LabelTrajectory, epochs: list[int]) -> dict[str, Figure]:
    """File stem -> figure; the agreement figure only when the data has human labels."""
    out = {"distributions": plot_distributions(traj, epochs), "distance": plot_distance(traj)}
    if traj.human:
        out["agreement"] = plot_agreement(traj)
    return out


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --- text ----------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "   nan" if np.isnan(x) else f"{x:6.3f}"


def summary_text(traj: LabelTrajectory) -> str:
    n, last = len(traj.ids), traj.epochs
    lines = [f"seed {traj.seed}: {n} training clips, {last} epoch(s), u-labels bounded by +-{traj.H:g}"]
    lines += ["", "mean |u - m| per epoch (epoch 0 = initialisation; ULGM updates from epoch 2 on)",
              "epoch   " + "  ".join(f"{NAMES[s]:>6}" for s in UNIMODAL)]
    dist = distance_from_m(traj)
    lines += [f"{e:5d}   " + "  ".join(_fmt(dist[s][e]) for s in UNIMODAL) for e in range(last + 1)]
    agree = agreement(traj)
    if not agree:
        lines.append("")
        lines.append(f"{traj.data_path} has no human unimodal labels: no comparison with them"
                     if traj.data_path else "no data file at hand: no comparison with human unimodal labels")
        return "\n".join(lines) + "\n"
    lines += ["", f"against the human unimodal labels of {traj.data_path}",
              "(row m: the m-label itself as the guess, the baseline)",
              "(pr_s: partial correlation of u and the human label given m, what u knows beyond m;",
              " nan while u is a linear function of m)",
              "epoch   " + "  ".join(f"{'r_' + s:>6}" for s in UNIMODAL) + "   "
              + "  ".join(f"{'MAE_' + s:>6}" for s in UNIMODAL) + "   "
              + "  ".join(f"{'pr_' + s:>6}" for s in UNIMODAL)]
    lines.append("    m   " + "  ".join(_fmt(agree[s].baseline_corr) for s in UNIMODAL) + "   "
                 + "  ".join(_fmt(agree[s].baseline_mae) for s in UNIMODAL))
    lines += [f"{e:5d}   " + "  ".join(_fmt(agree[s].corr[e]) for s in UNIMODAL) + "   "
              + "  ".join(_fmt(agree[s].mae[e]) for s in UNIMODAL) + "   "
              + "  ".join(_fmt(agree[s].beyond[e]) for s in UNIMODAL) for e in range(last + 1)]
    lines += ["", f"after epoch {last}, against the m-label baseline:"]
    for s in UNIMODAL:
        a = agree[s]
        lines.append(f"  {NAMES[s]:>6}: r {a.baseline_corr:.3f} -> {a.corr[-1]:.3f} "
                     f"({a.corr[-1] - a.baseline_corr:+.3f}), MAE {a.baseline_mae:.3f} -> {a.mae[-1]:.3f} "
                     f"({a.mae[-1] - a.baseline_mae:+.3f}), partial r {a.beyond[-1]:.3f}; u-label nearer the "
                     f"truth than m for {100 * a.closer:.1f}% of clips, farther for {100 * a.farther:.1f}%")
    return "\n".join(lines) + "\n"


def write_analysis(traj: LabelTrajectory, out: Path, epochs: list[int]) -> str:
    """The PNGs and summary.txt of one seed into `out`; returns the summary."""
    for stem, fig in figures(traj, epochs).items():
        write_bytes(out / f"{stem}.png", png_bytes(fig))
    text = summary_text(traj)
    write_text(out / "summary.txt", text)
    return text


# --- the data a run was trained on -----------------------------------------------------------


def load_human_data(seed_dir: Path, data_path: str | None, cache: dict[str, FeatureData | None]
                    ) -> FeatureData | None:
    """The feature file for human labels and transcripts: `data_path`, else the file the run
    recorded, by its resolved path, and only while it holds the bytes the run was trained on
    (its SHA-256): a file of the same name elsewhere or rewritten since is not the run's data.
    A recorded file that has moved or changed only costs the comparison (a warning)."""
    saved = read_seed_config(seed_dir)
    recorded = ((saved.get("provenance") or {}).get("data") or {}).get("file") or {}
    path = data_path or saved["data"].get("path")
    if path is not None and data_path is None and not Path(path).is_absolute():
        # Runs made before paths were recorded resolved: their provenance holds it.
        path = recorded.get("path") or path
    if path is None:
        return None
    if path not in cache:
        changed = data_path is None and Path(path).exists() and recorded.get("sha256") not in (
            None, file_digest(path)["sha256"])
        if data_path is None and (changed or not Path(path).exists()):
            warn(f"the run's data file {path} {'has changed since training' if changed else 'is gone'}; "
                 "give the data file to compare with human unimodal labels")
            cache[path] = None
        else:
            with warnings.catch_warnings():
                # Repairs of non-finite features concern training, not labels or transcripts.
                warnings.simplefilter("ignore")
                cache[path] = load_features(path, saved["config"]["dataset"])
    return cache[path]


def chosen_epochs(requested: list[int] | None, last: int) -> list[int]:
    if not requested:
        return default_epochs(last)
    bad = [e for e in requested if not 0 <= e <= last]
    if bad:
        raise SelfMMError(f"epochs {' '.join(map(str, bad))}: the run has epochs 0 to {last}")
    return sorted(set(requested))
