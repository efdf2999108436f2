"""The library's verbs: what `selfmm train` and `selfmm evaluate` do, from Python.

    data = selfmm.load_features("mosi.pkl", dataset="mosi")
    cfg = selfmm.config("mosi", text_model="minilm", max_epochs=4)
    run = selfmm.fit(cfg, data, "runs/nb", seeds=[1111, 1112], device="cpu")
    r = selfmm.load_run("runs/nb")
    r.seeds[1111].ulabels, r.evaluate(data), r.predict(data)
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import distributed, provenance
from .configuration import DEFAULT_SEEDS, DEFAULT_TEXT_MODEL, Config, check_seeds, from_dict, resolve
from .data.mmsa import DataSpec, FeatureData
from .encoder import load_encoder_config
from .errors import SelfMMError
from .interop import read_config_file
from .jobs import SeedTask, fit_seeds, threads_per_job
from .metrics import regression_metrics
from .model import SelfMM
from .precision import check_precision
from .reproduction import check_labels, compare
from .reproduction import write as write_reproduction
from .results import write_results
from .resume import check_resume
from .rundir import RunDirectory
from .runs import (
    BEST_WEIGHTS,
    CONFIG,
    ENCODER,
    best_seed_dir,
    read_history,
    read_metrics,
    read_results,
    read_seed_config,
    read_ulabels,
    seed_dirs,
)
from .train import class_path, fit_seed, predict, resolve_device, selfmm_builder


def config(dataset: str, file: str | Path | None = None, **overrides: Any) -> Config:
    """The published configuration of `dataset` (SPEC 3), then a config file (ours, `selfmm
    tune`'s best_config.json or MMSA's config_regression.json), then `overrides`: any
    `--set` key (`lr_audio=1e-3`, `max_epochs=4`), checked the same way."""
    values = read_config_file(file, dataset) if file is not None else {}
    return resolve(dataset, {**values, **overrides})


def _api_call(out: Path, seeds: list[int], device: str, resume: bool, model: type | None) -> str:
    extra = f", model={class_path(model)}" if model is not None else ""
    return f"selfmm.fit(cfg, data, {str(out)!r}, seeds={seeds}, device={device!r}, resume={resume}{extra})"


def fit(cfg: Config, data: FeatureData, out: str | Path, seeds: list[int] | None = None, *,
        device: str = "auto", resume: bool = False, progress: bool = True,
        model: type[torch.nn.Module] | None = None, invocation: str | None = None, jobs: int = 1) -> Run:
    """Train one model per seed into the run directory `out`, test each seed's best weights,
    and write results.json; what `selfmm train` does (`resume=True` is `--resume`).

    `model`: a class of your own (see selfmm.train) trained with the ULGM instead of Self-MM
    (with `jobs` > 1 it must be importable by name, not defined in a notebook).
    `jobs`: seeds trained side by side, each in its own process on its share of torch's
    threads (selfmm.jobs); each seed's results equal a one-job run with that many threads.
    Under torchrun every process calls this and trains its shard; only rank 0 writes files.
    """
    out = Path(out)
    seeds = list(seeds) if seeds is not None else list(DEFAULT_SEEDS)
    check_seeds(seeds)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SelfMMError(f"jobs: expected a whole number of processes of at least 1, got {jobs!r}")
    if jobs > 1 and distributed.processes_from_env() > 1:
        raise SelfMMError("jobs: under torchrun every process already trains a shard of each seed; "
                          "run seeds side by side (jobs > 1) without torchrun")
    torch_device = resolve_device(device)
    check_precision(cfg.train.precision, torch_device)
    run_dir = RunDirectory(out, resume=resume)
    run_dir.check()  # every rank, before rank 0 creates the directory
    if model is None:
        load_encoder_config(cfg.model.text_model)  # fail fast, before any directory is made
        build = selfmm_builder(cfg)
    else:
        build = lambda spec: model(spec, cfg)  # noqa: E731
    dist, torch_device = distributed.init_from_env(torch_device)
    record = provenance.record(torch_device, data.path, data.overrides,
                               invocation or _api_call(out, seeds, device, resume, model))
    if dist.enabled:
        record["processes"] = dist.world_size
    if resume:
        check_resume(out, cfg.to_dict(), data.spec.to_dict(), record["data"],
                     class_path(model or SelfMM))

    log = (lambda s: print(s, file=sys.stderr)) if dist.is_main else (lambda s: None)
    per_seed: dict[int, dict[str, float]] = {}
    try:
        with run_dir if dist.is_main else contextlib.nullcontext(out) as path:
            distributed.barrier(dist)
            if jobs > 1 and len(seeds) > 1:
                task = SeedTask(cfg, Path(path), torch_device, model, resume, record)
                per_seed = fit_seeds(data, task, seeds, jobs, threads_per_job(min(jobs, len(seeds))))
            for seed in seeds if not per_seed else ():
                per_seed[seed] = fit_seed(cfg, data, path / f"seed-{seed}", seed, torch_device, build,
                                          resume=resume, dist=dist, log=log,
                                          progress=progress and dist.is_main,
                                          provenance=record)
            if dist.is_main:
                write_results(path, cfg.to_dict(), per_seed, record)
    finally:
        distributed.shutdown(dist)
    return load_run(out, model=model) if dist.is_main else Run(out, {}, None)


def reproduce(dataset: str, data: FeatureData, out: str | Path, seeds: list[int] | None = None, *,
              text_model: str | None = None, device: str = "auto", max_epochs: int | None = None,
              precision: str | None = None, resume: bool = False, progress: bool = True,
              invocation: str | None = None, jobs: int = 1) -> dict[str, Any]:
    """The paper's protocol: the published configuration of `dataset` (SPEC 3), seeds 1111-1115
    (SPEC 5), then the comparison with the published numbers (SPEC 7), written beside the run
    as OUT/reproduction.md and OUT/reproduction.json with the run's provenance; returns it.

    Other seeds, another text model, `max_epochs` (a quick look) or `precision="bf16"` are
    allowed and flagged as not the protocol. `resume=True` continues an interrupted reproduction.
    Under torchrun with K processes each trains batch / K clips of every batch, so the global
    batch stays the protocol's; a K that does not divide it is refused. `jobs`: as in `fit`.
    """
    check_labels(data, dataset)
    overrides: dict[str, Any] = {}
    notes = []
    if text_model is not None:
        overrides["text_model"] = text_model
        if text_model != DEFAULT_TEXT_MODEL[dataset]:
            notes.append(f"text model {text_model} instead of {DEFAULT_TEXT_MODEL[dataset]}")
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
        notes.append(f"at most {max_epochs} epoch(s) instead of early stopping alone")
    if precision is not None:
        overrides["precision"] = precision
        if precision != "fp32":  # the published runs trained in float32
            notes.append(f"{precision} autocast instead of float32")
    processes = distributed.processes_from_env()
    if processes > 1:
        # Under torchrun each process takes its share of every batch: the protocol's batch is
        # the global one, so each process gets batch / K (the gathered batches are then exactly
        # one process's, see selfmm.distributed).
        batch = config(dataset).optim.batch_size
        if batch % processes:
            raise SelfMMError(f"reproduce under torchrun with {processes} processes: the protocol's batch of "
                              f"{batch} does not split into {processes} equal parts; start a number of "
                              f"processes that divides {batch}")
        overrides["batch_size"] = batch // processes
    run = fit(config(dataset, **overrides), data, out, seeds, device=device, resume=resume,
              progress=progress, invocation=invocation, jobs=jobs)
    if run.results is None:  # a torchrun process other than rank 0
        return {}
    comparison = compare(run.results["seeds"], dataset, protocol=not notes, notes=notes)
    write_reproduction(out, comparison, run.results["provenance"])
    return comparison


# ---------------------------------------------------------------------------------------------
# Reading a run back


def _import_class(path: str) -> type:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


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

    def model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model with its best weights, in eval mode."""
        cfg, spec = self.config, self.spec
        if self.model_class is None:
            raise SelfMMError(f"{self.path}: its model class {self.model_class_name} cannot be imported; "
                              "pass model= to load_run")
        if self.model_class is SelfMM:
            from transformers import AutoConfig, AutoModel  # heavy; only to rebuild a model

            try:
                encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(self.path / ENCODER)))
            except (OSError, ValueError) as exc:
                raise SelfMMError(f"{self.path / ENCODER}: cannot rebuild the text encoder: {exc}") from None
            net: torch.nn.Module = SelfMM(encoder, spec.audio_dim, spec.vision_dim, cfg.model)
        else:
            net = self.model_class(spec, cfg)
        weights = self.path / BEST_WEIGHTS
        if not weights.exists():
            raise SelfMMError(f"{weights} does not exist: the run never finished an epoch")
        try:
            net.load_state_dict(load_file(str(weights)))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise SelfMMError(f"{weights}: cannot load the weights: {str(exc).splitlines()[0]}") from None
        return net.to(resolve_device(device)).eval()

    def check_data(self, data: FeatureData) -> None:
        """The data must have the widths the model was built for; other changes are warned of."""
        spec = self.spec
        for key in ("audio_dim", "vision_dim"):
            if getattr(spec, key) != getattr(data, key):
                raise SelfMMError(f"{data.path}: {key} is {getattr(data, key)}, but the run at {self.path} "
                                  f"was trained with {getattr(spec, key)}")
        changed = provenance.differences(self.provenance, data.path, data.overrides)
        if changed:
            warnings.warn(f"{self.path}: {'; '.join(changed)}", stacklevel=3)


@dataclass
class Run:
    """A run directory (or a single seed directory) as written by `fit` / `selfmm train`."""

    path: Path
    seeds: dict[int, SeedRun]
    results: dict[str, Any] | None  # results.json: "seeds", "mean", "std", "config", "provenance"

    def select(self, seed: int | None = None) -> SeedRun:
        """Seed `seed`, or the finished seed with the lowest validation loss."""
        if seed is not None:
            if seed not in self.seeds:
                raise SelfMMError(f"{self.path} holds no seed {seed} (seeds: {', '.join(map(str, self.seeds))})")
            return self.seeds[seed]
        best = best_seed_dir([s.path for s in self.seeds.values()])
        return next(s for s in self.seeds.values() if s.path == best)

    def evaluate(self, data: FeatureData, split: str = "test", device: str = "auto") -> dict[int, dict[str, float]]:
        """{seed: metrics} of every seed's best weights on `split` of `data`, each computed in
        the precision its seed was trained in (its config's `precision`), on any device."""
        return {seed: self._evaluate(s, data, split, device)[0] for seed, s in self.seeds.items()}

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
        preds = predict(seed_run.model(torch_device), data.splits[split], torch_device,
                        precision=seed_run.config.train.precision)
        return regression_metrics(preds.heads["m"], preds.labels, seed_run.config.dataset), preds.rows()


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
                cls = _import_class(recorded)
            except (ImportError, AttributeError) as exc:
                warnings.warn(f"{directory}: its model class {recorded} cannot be imported here "
                              f"({type(exc).__name__}: {exc}); pass model= to load_run to rebuild it",
                              stacklevel=2)
        seeds[int(saved["seed"])] = SeedRun(directory, int(saved["seed"]), saved, cls)
    results = read_results(path, None) if not (path / CONFIG).exists() else None
    return Run(path, seeds, results)

