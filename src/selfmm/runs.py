"""Run directories on disk: their layout, and reading and writing what they hold.

A run directory holds `results.json` and `results.csv` (per-seed test metrics, mean, std, the
provenance) and one `seed-<seed>/` per seed:
  config.json             resolved configuration, data spec, seed, model class, provenance,
                          torch_threads (CPU sums may depend on the thread count)
  encoder/                the encoder's config and tokenizer (the run reloads without a hub)
  best.safetensors        weights with the lowest validation loss
  checkpoint-epochNNNN.pt everything needed to resume (the two newest are kept)
  history.json            losses per epoch
  ulabels.npz             u-labels of every training clip after every epoch
  test_predictions.csv    all four heads per test clip
  metrics.json            test metrics of the best weights; its presence marks the seed done
A seed directory alone is also a run (of one seed) wherever a run is read.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SelfMMError
from .io import atomic_writer, write_bytes, write_json

CONFIG = "config.json"
RESULTS = "results.json"
METRICS = "metrics.json"
HISTORY = "history.json"
ULABELS = "ulabels.npz"
PREDICTIONS = "test_predictions.csv"
BEST_WEIGHTS = "best.safetensors"
ENCODER = "encoder"
HEADS = ("m", "t", "a", "v")
PREDICTION_COLUMNS = ("id", "label", "pred_m", "pred_t", "pred_a", "pred_v")


def read_json(path: Path, default: Any = ...) -> Any:
    """A JSON file of a run; `default` when it is absent (if given), else a one-line error."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if default is not ...:
            return default
        raise SelfMMError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SelfMMError(f"{path} cannot be read: {exc}") from None
    except RecursionError:
        raise SelfMMError(f"{path} cannot be read: nested too deeply; the file is damaged") from None


def _damaged(path: Path, problem: str) -> SelfMMError:
    return SelfMMError(f"{path}: {problem}; the file is damaged (resume or retrain the run to rewrite it)")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_seed_config(directory: Path) -> dict[str, Any]:
    """A seed's config.json, checked for what readers of a run use."""
    path = directory / CONFIG
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise _damaged(path, "not a JSON object")
    data = saved.get("data")
    for key, ok, what in (
        ("seed", _is_int(saved.get("seed")), "an integer"),
        ("config", isinstance(saved.get("config"), dict), "an object"),
        ("data", isinstance(data, dict) and _is_int(data.get("audio_dim")) and _is_int(data.get("vision_dim")),
         "an object with integer audio_dim and vision_dim"),
        ("model_class", isinstance(saved.get("model_class"), str | None), "a string"),
        ("provenance", isinstance(saved.get("provenance"), dict | None), "an object"),
    ):
        if not ok:
            raise _damaged(path, f"{key!r} is not {what}")
    return saved


def read_metrics(directory: Path) -> dict[str, Any] | None:
    """A seed's metrics.json (None while the seed is unfinished), checked."""
    path = directory / METRICS
    metrics = read_json(path, None)
    if metrics is None:
        return None
    if not (isinstance(metrics, dict) and isinstance(metrics.get("test"), dict)
            and all(_is_number(v) for v in metrics["test"].values())
            and _is_number(metrics.get("best_valid_loss")) and _is_int(metrics.get("best_epoch"))):
        raise _damaged(path, "expected an object with test metrics, best_valid_loss and best_epoch")
    return metrics


def read_history(directory: Path) -> list[dict[str, Any]]:
    """A seed's history.json ([] before its first epoch), checked."""
    path = directory / HISTORY
    history = read_json(path, [])
    if not (isinstance(history, list) and all(
            isinstance(h, dict) and _is_int(h.get("epoch"))
            and all(_is_number(h.get(k)) for k in ("train_loss", "valid_loss")) for h in history)):
        raise _damaged(path, "expected a list of epochs with train_loss and valid_loss")
    return history


def read_results(run: Path, default: Any = ...) -> dict[str, Any]:
    """A run's results.json, checked; `default` when it is absent (if given)."""
    path = run / RESULTS
    results = read_json(path, default)
    if results is default and default is not ...:
        return results
    seeds = results.get("seeds") if isinstance(results, dict) else None
    if not (isinstance(seeds, dict) and all(
            str(k).isdigit() and isinstance(m, dict) and all(_is_number(v) for v in m.values())
            for k, m in seeds.items())):
        raise _damaged(path, "expected an object whose 'seeds' maps each seed to its test metrics")
    return results


def seed_dirs(run: str | Path, seed: int | None = None) -> list[Path]:
    """The seed directories of a run directory, or the seed directory itself; only `seed`'s
    when given."""
    run = Path(run)
    if not run.exists():
        raise SelfMMError(f"run {run} does not exist")
    if (run / CONFIG).exists():
        found = [run]
    else:
        found = sorted((p for p in run.glob("seed-*") if (p / CONFIG).exists()),
                       key=lambda p: (len(p.name), p.name))
    if not found:
        raise SelfMMError(f"{run} holds no selfmm run (no {CONFIG}, no seed-*/{CONFIG})")
    if seed is not None:
        chosen = [p for p in found if read_seed_config(p)["seed"] == seed]
        if not chosen:
            names = ", ".join(p.name for p in found)
            raise SelfMMError(f"{run} holds no seed {seed} (seed directories: {names})")
        return chosen
    return found


def best_seed_dir(dirs: list[Path]) -> Path:
    """The finished seed whose best validation loss is lowest: the test split never picks
    the model. A lone seed directory is its own choice."""
    if len(dirs) == 1:
        return dirs[0]
    finished = []
    for d in dirs:
        metrics = read_json(d / METRICS, {})
        if not isinstance(metrics, dict):
            raise _damaged(d / METRICS, "not a JSON object")
        loss = metrics.get("best_valid_loss")
        if _is_number(loss) and math.isfinite(loss):
            finished.append((loss, d))
    if not finished:
        raise SelfMMError(f"{dirs[0].parent} holds no finished seed (no seed-*/{METRICS}); "
                          "choose one seed")
    return min(finished, key=lambda item: item[0])[1]


def write_seed_config(directory: Path, *, config: dict[str, Any], seed: int, data: dict[str, Any],
                      model_class: str, provenance: dict[str, Any] | None = None,
                      **extra: Any) -> None:
    """A seed's config.json: everything needed to rebuild its model and to check a rerun."""
    write_json(directory / CONFIG, {"config": config, "seed": seed, "data": data,
                                    "model_class": model_class, "provenance": provenance, **extra})


def write_ulabels(path: Path, ids: list[str], history: list[dict[str, Any]]) -> None:
    """u-labels after initialisation (row 0) and after every epoch (row e): compact npz."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=np.asarray(ids), m=np.asarray(history[0]["m"]),
                        **{s: np.stack([np.asarray(h[s]) for h in history]) for s in "tav"})
    write_bytes(path, buffer.getvalue())


def read_ulabels(seed_dir: Path) -> dict[str, np.ndarray]:
    """{"ids": (N,), "m": (N,), "t"/"a"/"v": (epochs + 1, N)} of a seed directory."""
    path = seed_dir / ULABELS
    if not path.exists():
        raise SelfMMError(f"{path} does not exist: the run never finished an epoch")
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {key: npz[key] for key in ("ids", "m", "t", "a", "v")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise SelfMMError(f"{path} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          "; the file is damaged") from None
    n = labels["ids"].shape[0] if labels["ids"].ndim == 1 else -1
    rows = {labels[s].shape if labels[s].ndim == 2 else None for s in "tav"}
    if n < 0 or labels["m"].shape != (n,) or len(rows) != 1 or None in rows or next(iter(rows))[1] != n:
        raise _damaged(path, "its arrays do not have matching shapes (ids (N,), m (N,), t/a/v (epochs + 1, N))")
    return labels


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_writer(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for row in rows:
            writer.writerow([row["id"], *(f"{row[k]:.6g}" for k in PREDICTION_COLUMNS[1:])])


def read_predictions(seed_dir: Path) -> list[dict[str, str]]:
    path = seed_dir / PREDICTIONS
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _damaged(path, f"not a CSV file ({exc})") from None
    if rows and not all(isinstance(r.get(c), str) for r in rows for c in PREDICTION_COLUMNS):
        raise _damaged(path, f"expected the columns {', '.join(PREDICTION_COLUMNS)}")
    return rows
