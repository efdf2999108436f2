"""The paper's ablation over subtasks: M, M+T, M+A, M+V, M+T+A, M+T+V, M+A+V, M+T+A+V.

Layout: RUN/<tasks>/ is a run directory as `selfmm train` writes it (so every combination can
be evaluated, inspected and resumed on its own), and the summary RUN/ablation.json +
RUN/ablation.csv: per combination, per metric, the mean and std over seeds.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from .api import fit
from .configuration import TASKS, Config, with_values
from .data.types import FeatureData
from .errors import SelfMMError
from .io import write_json, write_text
from .model import SelfMM
from .models import class_path
from .provenance import data_provenance
from .results import PerSeed, display, format_table, summarize
from .resume import check_resume
from .rundir import RunDirectory
from .runtime import resolve_device


def ablation_table(results: dict[str, PerSeed], title: str = "") -> str:
    """One row per task combination, one column per metric: the mean over seeds, x100."""
    means = {tasks: summarize(per_seed)["mean"] for tasks, per_seed in results.items()}
    names = list(next(iter(means.values())))
    rows = [[tasks, str(len(results[tasks])), *(display(m[k]) for k in names)]
            for tasks, m in means.items()]
    return format_table(["tasks", "seeds", *names], rows, title)


def ablation_csv(results: dict[str, PerSeed]) -> str:
    """Fractions (not x100), as results.csv: per metric its mean and its std over seeds."""
    summaries = {tasks: summarize(per_seed) for tasks, per_seed in results.items()}
    names = list(next(iter(summaries.values()))["mean"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["tasks", "seeds", *(f"{k}{suffix}" for k in names for suffix in ("", "_std"))])
    for tasks, s in summaries.items():
        writer.writerow([tasks, len(results[tasks]),
                         *(f"{s[stat][k]:.6f}" for k in names for stat in ("mean", "std"))])
    return buffer.getvalue()


def write_ablation(out: Path, config: dict, results: dict[str, PerSeed]) -> None:
    write_json(out / "ablation.json", {
        "config": config,
        "combinations": {tasks: {"seeds": {str(s): m for s, m in per_seed.items()}, **summarize(per_seed)}
                         for tasks, per_seed in results.items()},
    })
    write_text(out / "ablation.csv", ablation_csv(results))


def ablate(cfg: Config, data: FeatureData, out: str | Path, combos: list[str] = TASKS,
           seeds: list[int] | None = None, *, device: str = "auto", resume: bool = False,
           progress: bool = True, invocation: str | None = None) -> dict[str, PerSeed]:
    """Train every task combination in `combos` over `seeds`: {tasks: {seed: test metrics}}."""
    combos = list(dict.fromkeys(combos))  # the order given, each once
    unknown = [c for c in combos if c not in TASKS]
    if unknown:
        raise SelfMMError(f"task combinations {', '.join(unknown)}: each must be one of {', '.join(TASKS)}")
    resolve_device(device)  # an unknown device is refused before the folder is made
    run_dir = RunDirectory(out, resume=resume)
    run_dir.check()
    if resume:
        # Every combination before any trains: a mismatch in the last one must not come after
        # hours of work on the first.
        record = data_provenance(data.path, data.overrides)
        for tasks in combos:
            check_resume(Path(out) / tasks, with_values(cfg, {"tasks": tasks}).to_dict(),
                         data.spec.to_dict(), record, class_path(SelfMM))
    results: dict[str, PerSeed] = {}
    with run_dir as path:
        for tasks in combos:
            combo_cfg = with_values(cfg, {"tasks": tasks})
            print(f"ablation {tasks}", file=sys.stderr)
            run = fit(combo_cfg, data, path / tasks, seeds, device=device, resume=resume,
                      progress=progress, invocation=invocation)
            results[tasks] = {int(s): m for s, m in run.results["seeds"].items()}
            # The summary grows after every combination, so an interrupted ablation shows
            # what is done.
            write_ablation(path, cfg.to_dict(), results)
    return results
