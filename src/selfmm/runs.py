"""Run directories on disk: their layout, and reading and writing what they hold.

A run directory holds `results.json` and `results.csv` (per-seed test metrics, mean, std, the
provenance) and one `seed-<seed>/` per seed:
  config.json             resolved configuration, data spec, seed, model class, provenance
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
        chosen = [p for p in found if read_json(p / CONFIG).get("seed") == seed]
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
        loss = read_json(d / METRICS, {}).get("best_valid_loss")
        if loss is not None and math.isfinite(loss):
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
            return {key: npz[key] for key in ("ids", "m", "t", "a", "v")}
    except (OSError, ValueError, KeyError) as exc:
        raise SelfMMError(f"{path} cannot be read: {exc}") from None


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
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
