"""A trained run read back from its folder: `load_run`, `Run`, `SeedRun`.

What `selfmm evaluate`, `selfmm predict` and `selfmm serve` start from. It imports nothing of
training: scoring a clip never loads the training loop.

    r = selfmm.load_run("runs/nb")
    r.seeds[1111].ulabels, r.evaluate(data), r.predict(data)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import provenance
from .checks import checked, one_of, optional, path
from .configuration import Config, from_dict, seed
from .data.layout import SPLITS
from .data.mmsa import feature_data
from .data.types import DataSpec, FeatureData
from .errors import SelfMMError, warn
from .inference import check_text, predict
from .metrics import regression_metrics
from .model import SelfMM
from .models import class_path, import_class, load_seed_model, model_class
from .runs import (
    CONFIG,
    best_seed_dir,
    read_history,
    read_metrics,
    read_results,
    read_seed_config,
    read_ulabels,
    seed_dirs,
)
from .runtime import device_name, resolve_device


@dataclass
class SeedRun:
    """One seed's directory: its configuration, history, u-labels and best weights."""

    path: Path
    seed: int
    saved: dict[str, Any]  # config.json
    model_class: type[torch.nn.Module] | None  # SelfMM, your own, or None when not importable

    @property
    def model_class_name(self) -> str:
        return self.saved.get("model_class") or class_path(SelfMM)

    @cached_property
    def config(self) -> Config:
        try:
            return from_dict(self.saved["config"])
        except SelfMMError as exc:
            raise SelfMMError(f"{self.path / CONFIG}: {exc}") from None

    @property
    def spec(self) -> DataSpec:
        return DataSpec.from_dict(self.saved["data"])

    @cached_property
    def metrics(self) -> dict[str, Any] | None:
        """metrics.json (best epoch, best validation loss, test metrics); None while unfinished."""
        return read_metrics(self.path)

    @cached_property
    def history(self) -> list[dict[str, float]]:
        return read_history(self.path)

    @cached_property
    def ulabels(self) -> dict[str, np.ndarray]:
        """{"ids": (N,), "m": (N,), "t"/"a"/"v": (epochs + 1, N)}: row 0 the initial labels."""
        return read_ulabels(self.path)

    @property
    def provenance(self) -> dict[str, Any] | None:
        return self.saved.get("provenance")

    @checked(device=device_name)
    def model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model with its best weights, in eval mode."""
        cfg, spec = self.config, self.spec
        if self.model_class is None:
            raise SelfMMError(f"{self.path}: its model class {self.model_class_name} cannot be imported "
                              "from the installed modules; pass `model` to load_run")
        return load_seed_model(self.path, self.model_class, spec, cfg, device)

    @checked(data=feature_data)
    def check_data(self, data: FeatureData) -> None:
        """The data must have the widths the model was built for; other changes are warned of."""
        spec = self.spec
        for key in ("audio_dim", "vision_dim"):
            if getattr(spec, key) != getattr(data, key):
                raise SelfMMError(f"{data.path}: {key} is {getattr(data, key)}, but the run at {self.path} "
                                  f"was trained with {getattr(spec, key)}")
        changed = provenance.differences(self.provenance, data.path, data.overrides)
        if changed:
            warn(f"{self.path}: {'; '.join(changed)}")


@dataclass
class Run:
    """A run directory (or a single seed directory) as written by `fit` / `selfmm train`."""

    path: Path
    seeds: dict[int, SeedRun]
    results: dict[str, Any] | None  # results.json: "seeds", "mean", "std", "config", "provenance"

    @checked(seed=optional(seed))
    def select(self, seed: int | None = None) -> SeedRun:
        """Seed `seed`, or the finished seed with the lowest validation loss."""
        if seed is not None:
            if seed not in self.seeds:
                raise SelfMMError(f"{self.path} holds no seed {seed} (seeds: {', '.join(map(str, self.seeds))})")
            return self.seeds[seed]
        best = best_seed_dir([s.path for s in self.seeds.values()])
        return next(s for s in self.seeds.values() if s.path == best)

    @checked(data=feature_data, split=one_of(*SPLITS), device=device_name)
    def evaluate(self, data: FeatureData, split: str = "test", device: str = "auto") -> dict[int, dict[str, float]]:
        """{seed: metrics} of every seed's best weights on `split` of `data`, each computed in
        the precision its seed was trained in (its config's `precision`), on any device."""
        return {seed: self._evaluate(s, data, split, device)[0] for seed, s in self.seeds.items()}

    @checked(data=feature_data, split=one_of(*SPLITS), device=device_name, seed=optional(seed))
    def predict(self, data: FeatureData, split: str = "test", device: str = "auto",
                seed: int | None = None) -> list[dict[str, Any]]:
        """One row per clip of `split`: id, label, pred_m (the prediction), pred_t, pred_a,
        pred_v, from the seed with the lowest validation loss (or `seed`)."""
        return self._evaluate(self.select(seed), data, split, device)[1]

    def _evaluate(self, seed_run: SeedRun, data: FeatureData, split: str, device: str):
        if split not in data.splits or not len(data.splits[split]):
            raise SelfMMError(f"{data.path}: split {split!r} has no clips")
        seed_run.check_data(data)
        torch_device = resolve_device(device)
        model = seed_run.model(torch_device)
        if isinstance(model, SelfMM):  # else the embedding fails half-way with an IndexError
            check_text(data.splits[split].text_bert, model.text_encoder.config,
                       f"{data.path}: split {split!r}: key 'text_bert'")
        preds = predict(model, data.splits[split], torch_device, precision=seed_run.config.train.precision)
        return regression_metrics(preds.heads["m"], preds.labels, seed_run.config.dataset), preds.rows()


@checked(path=path, model=optional(model_class))
def load_run(path: str | Path, *, model: type[torch.nn.Module] | None = None) -> Run:
    """Read a run directory (or one seed directory) written by `fit` or `selfmm train`.

    A run of a model of your own rebuilds it from the recorded import path; pass `model` when
    that class lives elsewhere now.
    """
    path = Path(path)
    seeds: dict[int, SeedRun] = {}
    for directory in seed_dirs(path):
        saved = read_seed_config(directory)
        recorded = saved.get("model_class") or class_path(SelfMM)
        cls = model or (SelfMM if recorded == class_path(SelfMM) else None)
        if cls is None:
            try:
                cls = import_class(recorded, untrusted=[path, directory])
            except (ImportError, AttributeError) as exc:
                warn(f"{directory}: its model class {recorded} cannot be imported from the "
                     f"installed modules ({type(exc).__name__}: {exc}); pass `model` to "
                     "load_run to rebuild it")
        seeds[int(saved["seed"])] = SeedRun(directory, int(saved["seed"]), saved, cls)
    results = read_results(path, None) if not (path / CONFIG).exists() else None
    return Run(path, seeds, results)

