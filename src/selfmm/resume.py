"""What a resumed run must match, and what a finished seed must hold.

`check_resume` compares what is asked now (configuration, dataset, data files by their SHA-256,
the data's shapes, the model class) with what the run recorded, and refuses a difference before
anything is written, naming every key that differs. `finished_seed` checks the files a finished
seed left, rebuilds from its checkpoints what it can, and names in one line what it cannot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from . import checkpoint
from .configuration import flatten, from_dict
from .errors import SelfMMError
from .io import write_bytes, write_json
from .runs import (
    BEST_WEIGHTS,
    CONFIG,
    HISTORY,
    METRICS,
    RESULTS,
    ULABELS,
    read_history,
    read_json,
    read_metrics,
    read_seed_config,
    read_ulabels,
    write_ulabels,
)

# Settings a resumed run may change: they bound or feed the loop, not what it learns.
RESUMABLE = ("train.max_epochs", "train.num_workers")
_ABSENT = object()


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else repr(value)


def _normalized(config: Any) -> dict[str, Any]:
    """A recorded configuration with today's defaults for keys it predates, flat."""
    if not isinstance(config, dict):
        raise SelfMMError("no configuration")
    try:
        return flatten(from_dict(config).to_dict())
    except SelfMMError:
        return flatten(config)  # another version's keys: compared as they are


def config_differences(recorded: Any, requested: dict[str, Any],
                       allowed: tuple[str, ...] = RESUMABLE) -> list[str]:
    """'key: the run's value (now value)' for every setting that differs, `allowed` aside."""
    before, now = _normalized(recorded), flatten(requested)
    return [f"{key} {_show(before.get(key, _ABSENT))} (now {_show(now.get(key, _ABSENT))})"
            for key in sorted(set(before) | set(now))
            if key not in allowed and before.get(key, _ABSENT) != now.get(key, _ABSENT)]


def data_differences(recorded: Any, now: dict[str, Any]) -> list[str]:
    """The data files that are not the bytes the run used ({"file": digest, "audio_file": ...},
    as selfmm.provenance records them). Nothing for runs without provenance."""
    if not isinstance(recorded, dict):
        return []
    found = []
    for key in sorted(set(recorded) | set(now)):
        name = "data file" if key == "file" else f"--{key.replace('_', '-')}"
        then, current = recorded.get(key), now.get(key)
        if not isinstance(then, dict):
            found.append(f"{name} {current['path']} (the run had none)")
        elif current is None:
            found.append(f"{name} (the run used {then.get('path')}; none now)")
        elif then.get("sha256") != current["sha256"]:
            found.append(f"{name} {current['path']} has sha256 {current['sha256'][:12]}, the run's "
                         f"{then.get('path')} had {str(then.get('sha256'))[:12]}")
    return found


def spec_differences(recorded: Any, now: dict[str, Any]) -> list[str]:
    """The data's widths, lengths and sizes: what the model and the u-labels were built for."""
    if not isinstance(recorded, dict):
        return []
    return [f"data {key} {_show(recorded.get(key, _ABSENT))} (now {value!r})"
            for key, value in now.items() if recorded.get(key, value) != value]


def _recorded(out: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, what it recorded) of each seed of the run in `out`, then of its results.json."""
    for seed_dir in sorted(out.glob("seed-*")):
        config = seed_dir / CONFIG
        try:
            saved = read_seed_config(seed_dir)
            yield config, saved
            continue
        except SelfMMError as exc:
            damaged = str(exc) if config.exists() else None
        # No readable config.json: the newest checkpoint still records the configuration.
        state, _ = checkpoint.load_newest(seed_dir)
        if state is not None:
            yield checkpoint.epoch_path(seed_dir, state["epoch"]), {"config": state.get("config")}
        elif damaged is not None and (seed_dir / METRICS).exists():
            raise SelfMMError(f"{damaged}, and no checkpoint records the seed's configuration; "
                              f"remove {seed_dir} to train the seed again")
    with contextlib.suppress(SelfMMError):  # rewritten at the end of the run anyway
        results = read_json(out / RESULTS, None)
        if isinstance(results, dict) and isinstance(results.get("config"), dict):
            yield out / RESULTS, results


def check_resume(out: Path, config: dict[str, Any], spec: dict[str, Any], data: dict[str, Any],
                 model_class: str) -> None:
    """Refuse to continue the run in `out` unless it was made with `config` (Config.to_dict()),
    data of this `spec` (DataSpec.to_dict()) and these data files (provenance.data_provenance)
    and `model_class`; RESUMABLE settings may change. Reads only."""
    if not out.is_dir():
        return
    for source, saved in _recorded(out):
        try:
            found = config_differences(saved.get("config"), config)
        except SelfMMError as exc:
            raise SelfMMError(f"{source}: {exc}") from None
        found += data_differences((saved.get("provenance") or {}).get("data"), data)
        found += spec_differences(saved.get("data"), {k: v for k, v in spec.items() if k != "path"})
        if saved.get("model_class") not in (None, model_class):
            found.append(f"model class {saved['model_class']} (now {model_class})")
        if found:
            raise SelfMMError(f"cannot resume {out}: {source} records another setup: {'; '.join(found)}; "
                              "resume with the run's settings and data, or choose another `out`")


# ---------------------------------------------------------------------------------------------
# A finished seed


def _readable_weights(path: Path) -> None:
    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        raise SelfMMError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None


_CHECKS: dict[str, Callable[[Path], Any]] = {
    BEST_WEIGHTS: _readable_weights,
    HISTORY: lambda path: read_history(path.parent),
    ULABELS: lambda path: read_ulabels(path.parent),
    CONFIG: lambda path: read_seed_config(path.parent),
}


def damaged(seed_dir: Path) -> dict[str, str]:
    """{file name: what is wrong} for each file a finished seed must hold that is missing or unreadable."""
    found = {}
    for name, check in _CHECKS.items():
        path = seed_dir / name
        if not path.is_file():
            found[name] = "missing"
            continue
        try:
            check(path)
        except SelfMMError as exc:
            found[name] = str(exc)
    return found


def _checkpoint_of_epoch(seed_dir: Path, epoch: int) -> dict[str, Any] | None:
    if epoch not in checkpoint.saved_epochs(seed_dir):
        return None
    with contextlib.suppress(checkpoint.CheckpointError):
        return checkpoint.load(checkpoint.epoch_path(seed_dir, epoch))
    return None


def finished_seed(seed_dir: Path, train_ids: list[str], write_config: Callable[[], None],
                  log: Callable[[str], None]) -> dict[str, float] | None:
    """The test metrics of a finished seed, once its best weights, history, u-labels and
    config.json are checked; each missing or damaged one is rebuilt from the seed's checkpoints
    where they hold it. None when metrics.json itself is damaged but a checkpoint remains: the
    caller resumes from it and tests the best weights again. Otherwise an unrecoverable seed is
    a SelfMMError naming its files."""
    try:
        metrics = read_metrics(seed_dir)
        if metrics is None:
            raise SelfMMError("missing")
        test, best_epoch = metrics["test"], metrics["best_epoch"]
    except SelfMMError as exc:
        if checkpoint.saved_epochs(seed_dir):
            log(f"{seed_dir / METRICS} is damaged ({exc}); testing the best weights again")
            return None
        raise SelfMMError(f"{seed_dir / METRICS} is damaged ({exc}) and the seed has no checkpoint; "
                          f"remove {seed_dir} to train the seed again") from None
    problems = damaged(seed_dir)
    if not problems:
        return test
    newest, _ = checkpoint.load_newest(seed_dir)
    rebuilt, lost = [], []
    for name, reason in problems.items():
        if name == BEST_WEIGHTS:
            state = _checkpoint_of_epoch(seed_dir, best_epoch)
            if state is not None:
                weights = {k: v.detach().cpu().contiguous() for k, v in state["model"].items()}
                write_bytes(seed_dir / BEST_WEIGHTS, save_safetensors(weights))
                rebuilt.append(name)
                continue
        elif newest is not None:
            if name == HISTORY:
                write_json(seed_dir / HISTORY, newest["history"])
            elif name == ULABELS:
                write_ulabels(seed_dir / ULABELS, train_ids, newest["label_history"])
            else:
                write_config()
            rebuilt.append(name)
            continue
        lost.append(f"{name} ({reason})")
    if rebuilt:
        log(f"{seed_dir}: rebuilt {', '.join(rebuilt)} from its checkpoints")
    if lost:
        raise SelfMMError(f"{seed_dir} is finished but {'; '.join(lost)}, and no checkpoint holds it; "
                          f"remove {seed_dir} to train the seed again")
    return test
