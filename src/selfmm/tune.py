"""Hyper-parameter search over MMSA's self_mm space (SPEC 3, config.TUNING_SPACE) with Optuna.

Each trial trains one seed into RUN/trial-<n>/ and is scored by its best validation loss: never
the test split (MMSA's tuning scored candidates on test). Every epoch's validation loss is
reported to the trial, and a median pruner stops a trial that is worse than the median of the
finished ones at the same epoch. The study lives in an Optuna storage, by default
sqlite:///RUN/study.db, so an interrupted search continues where it stopped, and several
machines can share one study through one database URL (`--storage postgresql://...`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from .checks import check, integer
from .configuration import TUNING_SPACE, Config, check_seeds, with_values
from .data.types import FeatureData
from .errors import SelfMMError
from .io import write_json
from .models import selfmm_builder
from .provenance import data_provenance
from .resume import config_differences, data_differences
from .rundir import LOCK, RunDirectory
from .runs import METRICS, read_json
from .runtime import resolve_device
from .train import NumericalError, fit_seed

# A trial whose process died stops beating; the next search marks it failed after this grace.
# More trials than any search needs (MMSA's space has 18 settings; the default runs 20 trials):
# a bound against a mistyped count, which would run for months.
MAX_TRIALS = 10_000
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


def open_study(storage: str, name: str, cfg: Config, sampler_seed: int | None = None,
               prune_after: int = 5, prune_warmup: int = 3, data: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study or load it (continuing a search); refuse one made for another base
    configuration or other data files (`data`: provenance.data_provenance)."""
    try:
        with warnings.catch_warnings():
            # The heartbeat is marked experimental; it is what fails trials of a killed process.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # noqa: BLE001 - bad URL, missing driver, unreachable server
        raise SelfMMError(f"`storage` {redact(storage)}: cannot open: {exc}") from None
    study = optuna.create_study(
        storage=rdb, study_name=name, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=prune_warmup),
    )
    base = study.user_attrs.get("config")
    if base is None:
        study.set_user_attr("config", cfg.to_dict())
    # Trials are compared with each other: no setting may differ, not even the epoch limit.
    changed = config_differences(base, cfg.to_dict(), allowed=()) if base is not None else []
    if data is not None:
        if study.user_attrs.get("data") is None:
            study.set_user_attr("data", data)
        changed += data_differences(study.user_attrs["data"], data)
    if changed:
        raise SelfMMError(f"study {name!r} in {redact(storage)} was started with another setup: "
                          f"{'; '.join(changed)}; use the same one or another `study_name`")
    return study


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {key: trial.suggest_categorical(key, list(choices)) for key, choices in TUNING_SPACE.items()}


def make_objective(cfg: Config, data: FeatureData, out: Path, seed: int, device: torch.device,
                   progress: bool = False,
                   log: Callable[[str], None] = print) -> Callable[[optuna.Trial], float]:
    """Trial -> best validation loss of one seed trained with the trial's values."""

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = with_values(cfg, suggest(trial))
        trial_dir = out / f"trial-{trial.number}"
        trial.set_user_attr("dir", str(trial_dir))

        def report(epoch: int, valid_loss: float) -> None:
            trial.report(valid_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"valid loss {valid_loss:.4f} at epoch {epoch}")

        fit_seed(trial_cfg, data, trial_dir, seed, device, selfmm_builder(trial_cfg),
                 progress=progress, log=log, on_epoch=report)
        return float(read_json(trial_dir / METRICS)["best_valid_loss"])

    return objective


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial, for the log."""
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


def summary(study: optuna.Study, storage: str) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = study.best_trial
    lines = [f"study {study.study_name} ({redact(storage)}): {sum(counts.values())} trials, "
             + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n),
             f"best trial {best.number}: valid loss {best.value:.4f} ({best.user_attrs.get('dir', '')})"]
    lines += [f"  {k} = {v}" for k, v in best.params.items()]
    return "\n".join(lines)


def check_settings(trials: int, seed: int, sampler_seed: int | None, prune_after: int, prune_warmup: int) -> None:
    """The tuner's own settings, before any data is loaded."""
    check("trials", trials, integer(1, MAX_TRIALS))
    check_seeds([seed], "`seed`")
    if sampler_seed is not None:
        check_seeds([sampler_seed], "`sampler_seed`")
    for name, value in (("prune_after", prune_after), ("prune_warmup", prune_warmup)):
        check(name, value, integer(0, MAX_TRIALS))


def tune(cfg: Config, data: FeatureData, out: str | Path, trials: int, *, storage: str | None = None,
         study_name: str | None = None, seed: int = 1111, device: str = "auto",
         sampler_seed: int | None = None, prune_after: int = 5, prune_warmup: int = 3,
         progress: bool = True) -> optuna.Study:
    """Run `trials` more trials of the study (created or continued) and write
    OUT/best_config.json and OUT/best_trial.json."""
    check_settings(trials, seed, sampler_seed, prune_after, prune_warmup)
    torch_device = resolve_device(device)
    out = Path(out)
    marker = out / "tune.json"
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not marker.exists():
        raise SelfMMError(f"`out` {out} holds something other than a tuning run; choose another directory")
    # A rerun continues the study, so the directory may exist; the lock still keeps out a
    # second process on this machine.
    run_dir = RunDirectory(out, resume=True)
    name = study_name or f"selfmm-{cfg.dataset}"
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial is enough
    with run_dir:
        storage = storage or default_storage(out)
        write_json(marker, {"study_name": name, "storage": redact(storage), "dataset": cfg.dataset,
                            "seed": seed})
        study = open_study(storage, name, cfg, sampler_seed, prune_after, prune_warmup,
                           data_provenance(data.path, data.overrides))
        study.optimize(make_objective(cfg, data, out, seed, torch_device, progress, log),
                       n_trials=trials, catch=(NumericalError,),
                       callbacks=[lambda s, t: log(trial_line(s, t))])
        try:
            best = study.best_trial
        except ValueError:
            raise SelfMMError(f"study {name!r}: no trial has completed yet") from None
        write_json(out / "best_config.json", with_values(cfg, best.params).to_dict())
        write_json(out / "best_trial.json", {"study_name": name, "storage": redact(storage),
                                             "number": best.number, "valid_loss": best.value,
                                             "params": best.params, "dir": best.user_attrs.get("dir")})
    return study
