"""Hyper-parameter search over MMSA's self_mm space (SPEC 3, config.TUNING_SPACE) with Optuna.

Each trial trains one seed into RUN/trial-<n>/ and is scored by its best validation loss: never
the test split (MMSA's tuning scored candidates on test). Every epoch's validation loss is
reported to the trial, and a median pruner stops a trial that is worse than the median of the
finished ones at the same epoch. The study lives in an Optuna storage, by default
sqlite:///RUN/study.db, so an interrupted search continues where it stopped, and several
machines can share one study through one database URL (`--storage postgresql://...`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import SelfMMError

if TYPE_CHECKING:
    import optuna
    import torch

    from .config import Config
    from .data.mmsa import FeatureData

# A trial whose process died stops beating; the next search marks it failed after this grace.
HEARTBEAT_S = 60
GRACE_S = 180


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by the storage itself
        return url


def open_study(storage: str, name: str, cfg: "Config", sampler_seed: int | None = None,
               prune_after: int = 5, prune_warmup: int = 3) -> "optuna.Study":
    """Create the study or load it (continuing a search); refuse one made for another setup."""
    import optuna

    try:
        with warnings.catch_warnings():
            # The heartbeat is marked experimental; it is what fails trials of a killed process.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # noqa: BLE001 - bad URL, missing driver, unreachable server
        raise SelfMMError(f"--storage {redact(storage)}: cannot open: {exc}") from None
    study = optuna.create_study(
        storage=rdb, study_name=name, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=prune_warmup),
    )
    base = study.user_attrs.get("config")
    if base is None:
        study.set_user_attr("config", cfg.to_dict())
    elif base != cfg.to_dict():
        raise SelfMMError(f"study {name!r} in {redact(storage)} was started with another base "
                          "configuration (dataset, --config, --set, --max-epochs ...); "
                          "use the same one or another --study-name")
    return study


def suggest(trial: "optuna.Trial") -> dict[str, Any]:
    from .config import TUNING_SPACE

    return {key: trial.suggest_categorical(key, list(choices)) for key, choices in TUNING_SPACE.items()}


def make_objective(cfg: "Config", data: "FeatureData", out: Path, seed: int, device: "torch.device",
                   progress: Callable[[str], Callable] | None = None,
                   log: Callable[[str], None] = print) -> Callable[["optuna.Trial"], float]:
    """Trial -> best validation loss of one seed trained with the trial's values."""
    import optuna

    from .config import with_values
    from .encoder import load_encoder
    from .train import fit_seed

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = with_values(cfg, suggest(trial))
        trial_dir = out / f"trial-{trial.number}"
        trial.set_user_attr("dir", str(trial_dir))

        def report(epoch: int, valid_loss: float) -> None:
            trial.report(valid_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"valid loss {valid_loss:.4f} at epoch {epoch}")

        fit_seed(trial_cfg, data, trial_dir, seed, device, lambda: load_encoder(cfg.model.text_model),
                 progress=progress, log=log, on_epoch=report)
        return float(json.loads((trial_dir / "metrics.json").read_text())["best_valid_loss"])

    return objective


def trial_line(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> str:
    """One line per finished trial, for the log."""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        what = f"valid loss {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = max(trial.intermediate_values, default=0)
        what = f"pruned after epoch {last}"
    else:
        what = trial.state.name.lower()
    try:
        best = f" (best: trial {study.best_trial.number}, {study.best_value:.4f})"
    except ValueError:
        best = ""
    return f"trial {trial.number}: {what}{best}"


def summary(study: "optuna.Study", storage: str) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = study.best_trial
    lines = [f"study {study.study_name} ({redact(storage)}): {sum(counts.values())} trials, "
             + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n),
             f"best trial {best.number}: valid loss {best.value:.4f} ({best.user_attrs.get('dir', '')})"]
    lines += [f"  {k} = {v}" for k, v in best.params.items()]
    return "\n".join(lines)


def cmd_tune(args: argparse.Namespace) -> int:
    import optuna

    from .cli import _progress, load_data, resolve_config
    from .config import with_values
    from .encoder import load_encoder
    from .io import write_json
    from .rundir import RunDirectory
    from .train import NumericalError, resolve_device

    if args.trials < 1:
        raise SelfMMError("--trials must be at least 1")
    cfg = resolve_config(args)
    device = resolve_device(args.device)
    out = Path(args.out)
    marker = out / "tune.json"
    if out.is_dir() and any(p.name != ".selfmm.lock" for p in out.iterdir()) and not marker.exists():
        raise SelfMMError(f"--out {out} holds something other than a tuning run; choose another directory")
    # A rerun continues the study, so the directory may exist; the lock still keeps out a
    # second process on this machine.
    run_dir = RunDirectory(out, resume=True)
    run_dir.check()
    data = load_data(args.data, cfg.dataset, args.text_file, args.audio_file, args.vision_file)
    load_encoder(cfg.model.text_model)  # fail fast, before any trial
    name = args.study_name or f"selfmm-{cfg.dataset}"
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial is enough
    with run_dir:
        storage = args.storage or default_storage(out)
        write_json(marker, {"study_name": name, "storage": redact(storage), "dataset": cfg.dataset,
                            "seed": args.seed})
        study = open_study(storage, name, cfg, args.sampler_seed, args.prune_after, args.prune_warmup)
        study.optimize(make_objective(cfg, data, out, args.seed, device, _progress, log),
                       n_trials=args.trials, catch=(NumericalError,),
                       callbacks=[lambda s, t: log(trial_line(s, t))])
        try:
            best = study.best_trial
        except ValueError:
            raise SelfMMError(f"study {name!r}: no trial has completed yet") from None
        best_cfg = with_values(cfg, best.params)
        write_json(out / "best_config.json", best_cfg.to_dict())
        write_json(out / "best_trial.json", {"study_name": name, "storage": redact(storage),
                                             "number": best.number, "valid_loss": best.value,
                                             "params": best.params, "dir": best.user_attrs.get("dir")})
    print(summary(study, storage))
    print(f"wrote {out / 'best_config.json'}; train with it: selfmm train --dataset {cfg.dataset} "
          f"--config {out / 'best_config.json'} --data FILE --out DIR")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_config_arguments, add_data_arguments
    from .config import DEFAULT_SEEDS

    p = subparsers.add_parser("tune", help="search MMSA's self_mm hyper-parameter space with Optuna, "
                                           "scored by validation loss")
    add_config_arguments(p)
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="tuning directory: trial-<n>/, study.db, best_config.json; "
                   "rerun with the same --out to continue the search")
    p.add_argument("--trials", type=int, default=20, help="trials to run in this call (default 20)")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines, e.g. "
                   "postgresql://user:pass@host/db (default sqlite:///OUT/study.db)")
    p.add_argument("--study-name", help="default selfmm-<dataset>")
    p.add_argument("--seed", type=int, default=DEFAULT_SEEDS[0],
                   help=f"training seed of every trial (default {DEFAULT_SEEDS[0]})")
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    p.add_argument("--prune-after", type=int, default=5,
                   help="finished trials before pruning starts (default 5)")
    p.add_argument("--prune-warmup", type=int, default=3,
                   help="epochs every trial runs before it may be pruned (default 3: the u-labels "
                        "only start moving at epoch 2)")
    p.set_defaults(func=cmd_tune)
