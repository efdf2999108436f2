"""The library's verbs: what `selfmm train` and `selfmm reproduce` do, from Python; `load_run`
(selfmm.trained) reads what they wrote.

    data = selfmm.load_features("mosi.pkl", dataset="mosi")
    cfg = selfmm.config("mosi", text_model="minilm", max_epochs=4)
    run = selfmm.fit(cfg, data, "runs/nb", seeds=[1111, 1112], device="cpu")
    r = selfmm.load_run("runs/nb")
    r.seeds[1111].ulabels, r.evaluate(data), r.predict(data)
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from . import datasets, distributed, provenance
from .checks import boolean, checked, instance, integer, one_of, optional, path, text
from .configuration import DEFAULT_SEEDS, MAX_WORKERS, PRECISIONS, Config, dataset_name, resolve, seed_list
from .data.mmsa import feature_data
from .data.types import FeatureData
from .encoder import load_encoder_config
from .errors import SelfMMError
from .inference import check_outputs, check_text
from .interop import read_config_file
from .jobs import SeedTask, fit_seeds, threads_per_job
from .model import SelfMM
from .models import class_path, model_builder, model_class
from .precision import check_precision
from .reproduction import check_labels, compare
from .reproduction import write as write_reproduction
from .results import write_results
from .resume import check_resume
from .rundir import RunDirectory
from .runtime import configure_determinism, device_name, resolve_device, restored_settings
from .train import check_data, fit_seed
from .trained import Run, load_run


@checked(dataset=dataset_name, file=optional(path))
def config(dataset: str, file: str | Path | None = None, **overrides: Any) -> Config:
    """The published configuration of `dataset` (SPEC 3), then a config file (ours, `selfmm
    tune`'s best_config.json or MMSA's config_regression.json), then `overrides`: any
    `--set` key (`lr_audio=1e-3`, `max_epochs=4`), checked the same way."""
    values = read_config_file(file, dataset) if file is not None else {}
    return resolve(dataset, {**values, **overrides})


def _api_call(out: Path, seeds: list[int], device: str, resume: bool, model: type | None) -> str:
    extra = f", model={class_path(model)}" if model is not None else ""
    return f"selfmm.fit(cfg, data, {str(out)!r}, seeds={seeds}, device={device!r}, resume={resume}{extra})"


# The rules of the parameters that fit and reproduce share (selfmm.checks).
RUN_ARGUMENTS = {"data": feature_data, "out": path, "seeds": optional(seed_list), "device": device_name,
                 "resume": boolean, "progress": boolean, "invocation": optional(text),
                 "jobs": integer(1, MAX_WORKERS)}


def _check_data(cfg: Config, data: FeatureData, own_model: bool) -> None:
    """What training needs of the data, before any directory is made: clips in every split,
    labels in range, and (for Self-MM) token ids and lengths the text model can read."""
    check_data(cfg, data)
    if not own_model:
        text = load_encoder_config(cfg.model.text_model)
        for name, split in data.splits.items():
            check_text(split.text_bert, text, f"{data.path}: split {name!r}: key 'text_bert'")


@checked(cfg=instance(Config, "a selfmm.Config (from selfmm.config)"), model=optional(model_class),
         **RUN_ARGUMENTS)
@restored_settings()  # TF32, determinism, threads: as the caller had them, once fit returns
def fit(cfg: Config, data: FeatureData, out: str | Path, seeds: list[int] | None = None, *,
        device: str = "auto", resume: bool = False, progress: bool = True,
        model: type[torch.nn.Module] | None = None, invocation: str | None = None, jobs: int = 1) -> Run:
    """Train one model per seed into the run directory `out`, test each seed's best weights,
    and write results.json; what `selfmm train` does (`resume=True` is `--resume`).

    `model`: a class of your own (see selfmm.models) trained with the ULGM instead of Self-MM
    (with `jobs` > 1 it must be importable by name, not defined in a notebook).
    `jobs`: seeds trained side by side, each in its own process on its share of torch's
    threads (selfmm.jobs); each seed's results equal a one-job run with that many threads,
    which its config.json records (`torch_threads`).
    The global torch settings a run changes (TF32 and the determinism flags on CUDA) are
    restored when it returns.
    Under torchrun every process calls this and trains its shard; only rank 0 writes files.
    """
    out = Path(out)
    seeds = list(seeds) if seeds is not None else list(DEFAULT_SEEDS)
    if jobs > 1 and distributed.processes_from_env() > 1:
        raise SelfMMError("`jobs`: under torchrun every process already trains a shard of each seed; "
                          "run seeds side by side (`jobs` > 1) without torchrun")
    torch_device = resolve_device(device)
    check_precision(cfg.train.precision, torch_device)
    run_dir = RunDirectory(out, resume=resume)
    run_dir.check()  # every rank, before rank 0 creates the directory
    _check_data(cfg, data, own_model=model is not None)
    build = model_builder(cfg, model)
    dist, torch_device = distributed.init_from_env(torch_device)
    record = provenance.record(torch_device, data.path, data.overrides,
                               invocation or _api_call(out, seeds, device, resume, model))
    if dist.enabled:
        record["processes"] = dist.world_size
    if resume:
        check_resume(out, cfg.to_dict(), data.spec.to_dict(), record["data"],
                     class_path(model or SelfMM))
    if model is not None:
        # Before its first cuBLAS call (see configure_determinism); fit_seed seeds afresh.
        configure_determinism(torch_device, cfg.train.deterministic)
        check_outputs(build(data.spec).to(torch_device), data.splits["train"], cfg.optim.batch_size,
                      torch_device)

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
        distributed.barrier(dist)  # gloo aborts a rank that tears down while rank 0 still tests
    finally:
        distributed.shutdown(dist)
    return load_run(out, model=model) if dist.is_main else Run(out, {}, None)


@checked(dataset=dataset_name, text_model=optional(text), max_epochs=optional(integer(0)),
         precision=optional(one_of(*PRECISIONS)), **RUN_ARGUMENTS)
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
        published = datasets.get(dataset).text_model
        if text_model != published:
            notes.append(f"text model {text_model} instead of {published}")
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
        if max_epochs:  # 0: no limit, early stopping alone, as the protocol trains
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
