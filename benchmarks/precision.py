"""Does bf16 train as well as fp32? Five seeds in each precision on one synthetic file.

    python benchmarks/precision.py --work runs/precision            # ~40 min on 2 CPU cores
    python benchmarks/precision.py --work runs/precision --json precision.json
    python benchmarks/precision.py --quick --work /tmp/p             # smoke run, ~1 min
    python benchmarks/precision.py --work runs/precision --seeds 3   # the first 3 seeds only

The mosi-profile synthetic file at scale 0.25 (`selfmm synth --profile mosi --scale 0.25
--seed 0`), MiniLM (the offline encoder of the `minilm` extra), at most 10 epochs, the
published MOSI defaults otherwise, seeds 1111-1115, through the public API (`selfmm.fit`), on
the CPU (bf16 needs native bf16 there: AMX or AVX512-BF16) or, with --device cuda, on a GPU
(the evidence issue 12 asks for before CUDA's default may be bf16). Seeds alternate between the
precisions, and each (precision, seed) is its own run directory under --work, resumed when
the command runs again: an interrupted comparison continues where it stopped.

The table: mean and standard deviation (over seeds, n-1) of every test metric per
precision, and z = (mean_bf16 - mean_fp32) / sqrt(se_fp32^2 + se_bf16^2) with se = std /
sqrt(n). "Within noise" means |z| <= 2.5 for every metric (issue 12).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import selfmm
from selfmm.io import write_json

PRECISIONS = ("fp32", "bf16")
SEEDS = (1111, 1112, 1113, 1114, 1115)
Z_LIMIT = 2.5


def synthesize(work: Path, scale: float) -> Path:
    """The feature file, made once by the command a user would run."""
    path = work / f"mosi-{scale}.pkl"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "selfmm", "synth", "--profile", "mosi", "--scale", str(scale),
                        "--seed", "0", "--out", str(path)], check=True)
    return path


def summarize(per_seed: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """Per metric: mean, std and n per precision, and z of bf16 against fp32."""
    metrics = sorted({m for runs in per_seed.values() for seed in runs.values() for m in seed})
    out: dict[str, Any] = {}
    for metric in metrics:
        row: dict[str, Any] = {}
        for precision, runs in per_seed.items():
            values = [seed[metric] for seed in runs.values()]
            row[precision] = {"mean": statistics.fmean(values) if values else math.nan,
                              "std": statistics.stdev(values) if len(values) > 1 else math.nan,
                              "n": len(values)}
        a, b = row.get("fp32"), row.get("bf16")
        if a and b and a["n"] > 1 and b["n"] > 1:
            se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
            diff = b["mean"] - a["mean"]
            row["z"] = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        else:
            row["z"] = math.nan
        out[metric] = row
    return out


def render(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"mosi profile x{args.scale}, {args.text_model}, at most {args.max_epochs} epochs, "
             f"{args.device}; mean +- std over seeds (x100, MAE too); z = bf16 - fp32 in pooled standard errors",
             f"{'metric':<16}{'fp32':>18}{'bf16':>18}{'z':>8}"]
    for metric, row in summary.items():
        cells = "".join(f"{100 * row[p]['mean']:>10.2f} +- {100 * row[p]['std']:<5.2f}" for p in PRECISIONS)
        lines.append(f"{metric:<16}{cells}{row['z']:>8.2f}")
    zs = [row["z"] for row in summary.values()]
    if zs and all(math.isfinite(z) for z in zs):
        worst = max(abs(z) for z in zs)
        verdict = "within noise" if worst <= Z_LIMIT else "NOT within noise"
        lines.append(f"largest |z| {worst:.2f}: {verdict} (|z| <= {Z_LIMIT} for every metric)")
    n = {p: min((row[p]["n"] for row in summary.values()), default=0) for p in PRECISIONS}
    lines.append(f"seeds: fp32 {n['fp32']}, bf16 {n['bf16']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the feature file and the runs (resumed)")
    parser.add_argument("--json", help="also write the per-seed metrics and the table as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: scale 0.03, 2 seeds, 1 epoch")
    parser.add_argument("--text-model", default="minilm")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seeds", type=int, choices=range(2, len(SEEDS) + 1), default=len(SEEDS),
                        help="how many of seeds 1111-1115 (default 5; finished ones are read back)")
    args = parser.parse_args(argv)
    args.scale = 0.03 if args.quick else 0.25
    args.max_epochs = 1 if args.quick else 10
    seeds = SEEDS[:2] if args.quick else SEEDS[:args.seeds]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic file's -inf repairs are intended
        data = selfmm.load_features(synthesize(work, args.scale), dataset="mosi")

    per_seed: dict[str, dict[int, dict[str, float]]] = {p: {} for p in PRECISIONS}
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for seed in seeds:
        for precision in PRECISIONS:
            cfg = selfmm.config("mosi", text_model=args.text_model, max_epochs=args.max_epochs,
                                precision=precision)
            out = work / f"{precision}-seed-{seed}"
            start = time.perf_counter()
            run = selfmm.fit(cfg, data, out, seeds=[seed], device=args.device, resume=out.exists(),
                             progress=False)
            seconds[precision].append(time.perf_counter() - start)
            per_seed[precision][seed] = run.results["seeds"][str(seed)]
            print(f"{precision} seed {seed}: {seconds[precision][-1]:.0f} s, "
                  f"MAE {per_seed[precision][seed]['MAE']:.4f}", file=sys.stderr, flush=True)
    summary = summarize(per_seed)
    print(render(summary, args))
    if args.json:
        write_json(args.json, {"args": {"scale": args.scale, "text_model": args.text_model,
                                        "max_epochs": args.max_epochs, "threads": args.threads,
                                        "device": args.device,
                                        "seeds": list(seeds)},
                               "torch": torch.__version__, "seconds": seconds,
                               "per_seed": {p: {str(s): m for s, m in r.items()} for p, r in per_seed.items()},
                               "summary": summary, "z_limit": Z_LIMIT})
    return 0


if __name__ == "__main__":
    sys.exit(main())
