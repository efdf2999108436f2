"""`selfmm train`, `evaluate`, `ablate` and `tune`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import datasets
from ..ablate import ablate as run_ablation
from ..ablate import ablation_table
from ..api import fit
from ..api import reproduce as run_reproduction
from ..encoder import load_encoder_config
from ..errors import SelfMMError
from ..results import table
from ..rundir import RunDirectory
from ..runs import read_metrics
from ..trained import load_run
from ..tune import check_settings as check_tuning
from ..tune import default_storage, summary
from ..tune import tune as run_tuning
from .common import data_from_args, training_inputs


def train(args: argparse.Namespace) -> int:
    fit.check(seeds=args.seeds, jobs=args.jobs, device=args.device)  # before the data is read
    cfg, data = training_inputs(args, RunDirectory(args.out, resume=args.resume))
    run = fit(cfg, data, args.out, args.seeds, device=args.device, resume=args.resume,
              invocation=args.invocation, jobs=args.jobs)
    if run.results is not None:  # rank 0 of a torchrun job, or the only process
        per_seed = {int(s): m for s, m in run.results["seeds"].items()}
        title = f"{cfg.dataset} test metrics (x100), {len(per_seed)} seed(s)"
        processes = (run.results.get("provenance") or {}).get("processes")
        if processes:
            title += f", {processes} processes"
        print(table(per_seed, f"{title}: {args.out}"))
    return 0


def reproduce(args: argparse.Namespace) -> int:
    run_reproduction.check(seeds=args.seeds, jobs=args.jobs, device=args.device, max_epochs=args.max_epochs)
    RunDirectory(args.out, resume=args.resume).check()
    load_encoder_config(args.text_model or datasets.get(args.dataset).text_model)
    data = data_from_args(args, args.dataset)
    comparison = run_reproduction(args.dataset, data, args.out, args.seeds, text_model=args.text_model,
                                  device=args.device, max_epochs=args.max_epochs, precision=args.precision,
                                  resume=args.resume, jobs=args.jobs,
                                  invocation=args.invocation)
    if comparison:
        print((Path(args.out) / "reproduction.md").read_text(), end="")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    dataset = next(iter(run.seeds.values())).config.dataset
    data = data_from_args(args, dataset)
    per_seed = run.evaluate(data, args.split, device=args.device)
    if args.split == "test":
        for seed, metrics in per_seed.items():
            recorded = read_metrics(run.seeds[seed].path)
            if recorded is not None:
                same = recorded["test"] == metrics
                print(f"{run.seeds[seed].path}: {'reproduces' if same else 'DIFFERS FROM'} the recorded "
                      "test metrics", file=sys.stderr)
    print(table(per_seed, f"{dataset} {args.split} metrics (x100)"))
    if args.json:
        print(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2))
    return 0


def ablate(args: argparse.Namespace) -> int:
    if args.tasks:
        raise SelfMMError("ablate runs several task combinations: choose them with --combos, not --tasks")
    cfg, data = training_inputs(args, RunDirectory(args.out, resume=args.resume))
    results = run_ablation(cfg, data, args.out, args.combos, args.seeds, device=args.device,
                           resume=args.resume, invocation=args.invocation)
    seeds = len(next(iter(results.values())))
    print(ablation_table(results, f"{cfg.dataset} ablation: test metrics (x100), mean of "
                                  f"{seeds} seed(s): {args.out}"))
    return 0


def tune(args: argparse.Namespace) -> int:
    check_tuning(args.trials, args.seed, args.sampler_seed, args.prune_after, args.prune_warmup)
    cfg, data = training_inputs(args)
    study = run_tuning(cfg, data, args.out, args.trials, storage=args.storage,
                       study_name=args.study_name, seed=args.seed, device=args.device,
                       sampler_seed=args.sampler_seed, prune_after=args.prune_after,
                       prune_warmup=args.prune_warmup)
    print(summary(study, args.storage or default_storage(Path(args.out))))
    best = Path(args.out) / "best_config.json"
    print(f"wrote {best}; train with it: selfmm train --dataset {cfg.dataset} --config {best} "
          "--data FILE --out DIR")
    return 0
