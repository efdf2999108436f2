"""`selfmm labels`, `report`, `import-mmsa` and `export-mmsa`: reading and converting runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..analysis import chosen_epochs, label_trajectory, load_human_data, write_analysis
from ..data.types import FeatureData
from ..errors import SelfMMError
from ..interop import import_mmsa as import_weights
from ..interop import write_mmsa_results
from ..io import write_text
from ..report import build_report
from ..runs import read_results, seed_dirs
from .common import config_from_args


def labels(args: argparse.Namespace) -> int:
    run = Path(args.run)
    dirs = seed_dirs(run, args.seed)
    single = dirs == [run]
    out_root = Path(args.out) if args.out else run / "labels"
    cache: dict[str, FeatureData | None] = {}
    texts = []
    for seed_dir in dirs:
        traj = label_trajectory(seed_dir, load_human_data(seed_dir, args.data, cache))
        out = out_root if single else out_root / seed_dir.name
        texts.append(write_analysis(traj, out, chosen_epochs(args.epochs, traj.epochs)))
    text = "\n".join(texts)
    if not single:
        write_text(out_root / "summary.txt", text)
    print(text, end="")
    print(f"plots and summary.txt in {out_root}", file=sys.stderr)
    return 0


def report(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise SelfMMError("--top must be at least 1")
    html = build_report(args.run, args.data, args.top, args.epochs, args.seed)
    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    write_text(out, html)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def import_mmsa(args: argparse.Namespace) -> int:
    out = import_weights(Path(args.weights), config_from_args(args), Path(args.out), seed=args.seed)
    print(f"imported {args.weights} into {out}; evaluate with: selfmm evaluate --run {out} --data FILE")
    return 0


def export_mmsa(args: argparse.Namespace) -> int:
    saved = read_results(Path(args.run))
    per_seed = {int(seed): metrics for seed, metrics in saved["seeds"].items()}
    write_mmsa_results(args.out, args.model_name, per_seed, replace=args.force)
    print(f"appended {args.model_name} ({len(per_seed)} seed(s)) to {args.out}", file=sys.stderr)
    return 0
