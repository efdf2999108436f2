"""The paper's ablation over subtasks: M, M+T, M+A, M+V, M+T+A, M+T+V, M+A+V, M+T+A+V.

Layout: RUN/<tasks>/seed-<seed>/ as `selfmm train` writes them (so every combination can be
evaluated, inspected and resumed on its own), RUN/<tasks>/results.json, and the summary
RUN/ablation.json + RUN/ablation.csv: per combination, per metric, the mean and std over seeds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from .errors import SelfMMError

PerSeed = dict[int, dict[str, float]]


def ablation_table(results: dict[str, PerSeed], title: str = "") -> str:
    """One row per task combination, one column per metric: the mean over seeds, x100."""
    from .results import display, summarize

    means = {tasks: summarize(per_seed)["mean"] for tasks, per_seed in results.items()}
    names = list(next(iter(means.values())))
    header = ["tasks", "seeds", *names]
    rows = [[tasks, str(len(results[tasks])), *(display(m[k]) for k in names)]
            for tasks, m in means.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    for row in [header, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def ablation_csv(results: dict[str, PerSeed]) -> str:
    """Fractions (not x100), as results.csv: per metric its mean and its std over seeds."""
    from .results import summarize

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
    from .io import write_json, write_text
    from .results import summarize

    write_json(out / "ablation.json", {
        "config": config,
        "combinations": {tasks: {"seeds": {str(s): m for s, m in per_seed.items()}, **summarize(per_seed)}
                         for tasks, per_seed in results.items()},
    })
    write_text(out / "ablation.csv", ablation_csv(results))


# Settings a resumed ablation may change: they bound or feed the loop, not what it learns.
_RESUMABLE = ("max_epochs", "num_workers")


def _check_same_config(seed_dir: Path, expected: dict) -> None:
    """A resumed combination must have been started with the configuration asked for now."""
    saved = seed_dir / "config.json"
    if not saved.exists():
        return
    before = json.loads(saved.read_text())["config"]
    changed = sorted(f"{section}.{k}" for section, values in expected.items()
                     if isinstance(values, dict) for k in values
                     if k not in _RESUMABLE and before.get(section, {}).get(k) != values[k])
    if changed or before.get("dataset") != expected["dataset"]:
        raise SelfMMError(f"{seed_dir} was trained with a different configuration "
                          f"({', '.join(changed) or 'dataset'}); use another --out")


def cmd_ablate(args: argparse.Namespace) -> int:
    from .cli import _progress, load_data, resolve_config
    from .config import DEFAULT_SEEDS, with_values
    from .encoder import load_encoder
    from .results import write
    from .rundir import RunDirectory
    from .train import fit_seed, resolve_device

    if args.tasks:
        raise SelfMMError("ablate runs several task combinations: choose them with --combos, not --tasks")
    cfg = resolve_config(args)
    device = resolve_device(args.device)
    run_dir = RunDirectory(args.out, resume=args.resume)
    run_dir.check()
    data = load_data(args.data, cfg.dataset, args.text_file, args.audio_file, args.vision_file)
    load_encoder(cfg.model.text_model)  # fail fast, before any directory is made
    seeds = args.seeds or list(DEFAULT_SEEDS)
    combos = list(dict.fromkeys(args.combos))  # the order given, each once
    results: dict[str, PerSeed] = {}
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    with run_dir as out:
        for tasks in combos:
            combo_cfg = with_values(cfg, {"tasks": tasks})
            results[tasks] = {}
            for seed in seeds:
                seed_dir = out / tasks / f"seed-{seed}"
                _check_same_config(seed_dir, combo_cfg.to_dict())
                log(f"ablation {tasks}, seed {seed}")
                results[tasks][seed] = fit_seed(
                    combo_cfg, data, seed_dir, seed, device,
                    lambda: load_encoder(cfg.model.text_model), resume=args.resume,
                    progress=_progress, log=log)
            write(out / tasks, combo_cfg.to_dict(), results[tasks])
            # The summary grows after every combination, so an interrupted ablation shows
            # what is done.
            write_ablation(out, cfg.to_dict(), results)
    print(ablation_table(results, f"{cfg.dataset} ablation: test metrics (x100), mean of "
                                  f"{len(seeds)} seed(s): {out}"))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_config_arguments, add_data_arguments
    from .config import TASKS

    p = subparsers.add_parser("ablate", help="train every subtask combination (M ... MTAV) and "
                                             "print one table of test metrics")
    add_config_arguments(p)
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run directory (must be new unless --resume)")
    p.add_argument("--combos", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASKS",
                   help=f"task combinations to run (default all: {' '.join(TASKS)})")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 1111 1112 1113 1114 1115")
    p.add_argument("--resume", action="store_true",
                   help="continue the ablation in --out: finished seeds are kept, others resumed")
    p.set_defaults(func=cmd_ablate)
