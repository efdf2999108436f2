"""selfmm's speed, memory and scale benchmark: one command, one table, optional JSON.

    python benchmarks/run.py                  # full run (about 10 minutes on 2 CPU cores)
    python benchmarks/run.py --quick          # smoke run: tiny files, few batches
    python benchmarks/run.py --json out.json  # also write every figure as JSON
    python benchmarks/run.py --device cuda    # the same sections on a GPU
    python benchmarks/run.py --sections phases train --precision fp32 bf16   # both precisions

Sections (README.md beside this file explains each measurement and records the figures):
  phases     training step split by phase, dynamic vs full padding, on a mosi-profile file
  train      samples/s of whole training epochs through fit_seed (what `selfmm train` runs)
  (both once per --precision: fp32, bf16 or both; bf16 on the CPU needs native bf16)
  ulgm       one ULGM step at N = 1e3 .. 1e6, incremental centres beside full recomputation
  load       peak RSS and wall time to open mosi/mosei-profile files, pickle and cache
  inference  latency per clip at batch 1 and per clip at batch 64

On CUDA every timing is taken after `torch.cuda.synchronize()`: kernels run after the host
queues them, so the clock alone would time the queueing. benchmarks/gpu.py measures what only
a GPU has (precisions, attention kernels, host syncs, peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfmm import checkpoint, train
from selfmm import configuration as config
from selfmm.data.batch import Collator
from selfmm.data.mmsa import load_features
from selfmm.data.synth import write_synthetic
from selfmm.data.types import FeatureData
from selfmm.encoder import load_encoder
from selfmm.errors import SelfMMError
from selfmm.inference import predict
from selfmm.io import write_json
from selfmm.model import Heads, SelfMM
from selfmm.models import selfmm_builder
from selfmm.optim import make_optimizer
from selfmm.precision import autocast, check_precision
from selfmm.runtime import resolve_device, seed_everything
from selfmm.train import fit_seed, task_losses
from selfmm.ulgm import UnimodalLabelGenerator

SECTIONS = ("phases", "train", "ulgm", "load", "inference")
PHASES = ("data", "encoder", "lstms", "heads+loss", "ulgm", "optimizer")
ULGM_DIMS = {"m": 128, "t": 32, "a": 16, "v": 32}  # MOSI's post dims (SPEC 3)
CPU = torch.device("cpu")

# Runs in a fresh interpreter after its imports; Linux resets the peak-RSS mark (VmHWM) on
# writing 5 to clear_refs, so the figure is the peak the load adds over the RSS before it.
_LOAD_PROBE = """
import json, sys, time, warnings
from selfmm.data.mmsa import load_features

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
base = rss("VmRSS:")
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = load_features(sys.argv[1])
seconds = time.perf_counter() - t
peak = rss("VmHWM:") - base
keys = ("text_bert", "audio", "vision", "audio_lengths", "vision_lengths", "labels")
arrays = sum(getattr(s, k).nbytes for s in data.splits.values() for k in keys)
print(json.dumps({"seconds": seconds, "peak_rss": peak, "array_bytes": arrays}))
"""


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock read next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device = CPU) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(),
           "load_average_start": os.getloadavg()[0], "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def synthetic(work: Path, profile: str, scale: float) -> Path:
    """A synthetic file kept in `work`, so repeated runs with --work reuse it."""
    path = work / f"{profile}-{scale}.pkl"
    if not path.exists():
        write_synthetic(path, profile, scale=scale, seed=0, aligned=False)
    return path


def quiet_load(path: Path) -> FeatureData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic files' -inf repairs are intended
        return load_features(path)


def build(cfg: config.Config, data: FeatureData, text_model: str, seed: int = 0,
          device: torch.device = CPU) -> SelfMM:
    seed_everything(seed)
    return SelfMM(load_encoder(text_model), data.audio_dim, data.vision_dim, cfg.model).to(device)


def new_ulgm(n: int, centres: str = "incremental", device: torch.device = CPU
             ) -> UnimodalLabelGenerator:
    return UnimodalLabelGenerator(num_samples=n, dims=ULGM_DIMS, H=3.0, exclude_zero=True,
                                  centres=centres, device=device)


# ---- phases ----------------------------------------------------------------------------------


def time_phases(model: SelfMM, data: FeatureData, cfg: config.Config, batches: int,
                pad_to_max: bool, device: torch.device = CPU) -> dict[str, float]:
    """Seconds per phase over `batches` training steps (after two untimed warm-up steps), the
    forward under `cfg.train.precision`'s autocast as in the training loop.

    Forward and backward of each part are timed apart by cutting the graph at the three
    modality vectors: the heads' backward stops at detached leaves, whose gradients are then
    pushed through the encoder and the LSTMs separately. The gradients equal one backward
    through the whole graph (chain rule), so every phase does exactly its real work.
    """
    split = data.splits["train"]
    loader = torch.utils.data.DataLoader(range(len(split)), batch_size=cfg.optim.batch_size,
                                         shuffle=True, collate_fn=Collator(split, pad_to_max),
                                         pin_memory=device.type == "cuda")
    optimizer = make_optimizer(model, cfg)
    ulgm = new_ulgm(len(split), device=device)
    ulgm.init_labels(torch.arange(len(split)), torch.as_tensor(np.array(split.labels)))
    model.train()
    times: dict[str, float] = defaultdict(float)
    rows = 0
    warmup = 2
    it = iter(loader)
    for i in range(warmup + batches):
        clock = time.perf_counter()

        def lap(phase: str, timed: bool = i >= warmup) -> None:
            nonlocal clock
            sync(device)
            now = time.perf_counter()
            if timed:
                times[phase] += now - clock
            clock = now

        try:
            host = next(it)
        except StopIteration:
            it = iter(loader)
            host = next(it)
        batch = host.to(device, non_blocking=True)
        lap("data")
        with autocast(device, cfg.train.precision):
            text = model.encode_text(batch.text, batch.text_lengths)  # (B, text_out)
        lap("encoder")
        with autocast(device, cfg.train.precision):
            audio = model.audio_net(batch.audio, batch.audio_lengths)
            vision = model.vision_net(batch.vision, batch.vision_lengths)
        lap("lstms")
        leaves = [x.detach().float().requires_grad_() for x in (text, audio, vision)]
        with autocast(device, cfg.train.precision):
            f_m, y_m = model.fusion_head(torch.cat(leaves, dim=-1))
            f_t, y_t = model.text_head(leaves[0])
            f_a, y_a = model.audio_head(leaves[1])
            f_v, y_v = model.vision_head(leaves[2])
        labels = {s: ulgm.labels[s][batch.index] for s in "mtav"}
        loss = sum(task_losses(Heads(y_m, y_t, y_a, y_v), labels, ulgm.weights(host.index),
                               cfg.train.tasks).values())
        loss.backward()
        lap("heads+loss")
        text.backward(leaves[0].grad.to(text.dtype))
        lap("encoder")
        torch.autograd.backward([audio, vision], [leaves[1].grad, leaves[2].grad])
        lap("lstms")
        features = {s: f.detach() for s, f in zip("mtav", (f_m, f_t, f_a, f_v), strict=True)}
        ulgm.step(host.index, features, epoch=2)  # epoch 2: label updates included
        lap("ulgm")
        if (i + 1) % cfg.optim.accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        lap("optimizer")
        if i >= warmup:
            rows += len(batch)
    times["samples"] = rows
    return dict(times)


def bench_phases(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """{precision: {padding: seconds per phase}}."""
    data = quiet_load(synthetic(work, "mosi", args.scale))
    out: dict[str, Any] = {}
    for precision in args.precision:
        cfg = config.with_values(config.defaults_for("mosi"),
                                 {"text_model": args.text_model, "precision": precision})
        out[precision] = {}
        for name, pad in (("dynamic padding", False), ("full padding", True)):
            model = build(cfg, data, args.text_model, device=args.device)
            out[precision][name] = time_phases(model, data, cfg, args.batches, pad, args.device)
    return out


# ---- whole epochs ----------------------------------------------------------------------------


def bench_train(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """{precision: figures}: fit_seed as `selfmm train` runs it, each epoch's loop timed."""
    return {precision: train_epochs(args, work, precision) for precision in args.precision}


def train_epochs(args: argparse.Namespace, work: Path, precision: str) -> dict[str, Any]:
    data = quiet_load(synthetic(work, "mosi", args.scale))
    cfg = config.with_values(config.defaults_for("mosi"), {"text_model": args.text_model,
                                                           "max_epochs": args.epochs, "precision": precision})
    loops: list[float] = []
    saves: list[float] = []  # what the epoch waits for: copying its files' contents
    writes: list[float] = []  # what the writer thread does meanwhile: the checkpoint's hash, write, fsync

    real_epoch, real_save, real_write = train.train_epoch, train.save_epoch, checkpoint.write

    def timed_epoch(*epoch_args, **kwargs) -> float:
        sync(args.device)
        start = time.perf_counter()
        loss = real_epoch(*epoch_args, **kwargs)
        sync(args.device)
        loops.append(time.perf_counter() - start)
        return loss

    def timed(real, times: list[float]):
        def call(*call_args, **kwargs):
            start = time.perf_counter()
            result = real(*call_args, **kwargs)
            times.append(time.perf_counter() - start)
            return result
        return call

    train.train_epoch, train.save_epoch = timed_epoch, timed(real_save, saves)
    checkpoint.write = timed(real_write, writes)
    try:
        with tempfile.TemporaryDirectory(dir=work) as out:
            start = time.perf_counter()
            fit_seed(cfg, data, Path(out) / "seed-1111", 1111, args.device,
                     selfmm_builder(cfg), log=lambda line: None)
            total = time.perf_counter() - start
            history = json.loads((Path(out) / "seed-1111" / "history.json").read_text())
    finally:
        train.train_epoch, train.save_epoch, checkpoint.write = real_epoch, real_save, real_write
    n = len(data.splits["train"])
    return {"train_clips": n, "samples_per_s": [n / s for s in loops],
            "epoch_seconds": [h["seconds"] for h in history], "checkpoint_seconds": saves,
            "checkpoint_write_seconds": writes,
            "total_seconds": total}


# ---- ULGM ------------------------------------------------------------------------------------


def time_ulgm(n: int, centres: str, steps: int, batch: int = 32,
              device: torch.device = CPU) -> float:
    """Median seconds of one step (epoch 2, so label updates included) over N samples."""
    gen = torch.Generator().manual_seed(0)
    ulgm = new_ulgm(n, centres, device)
    ulgm.init_labels(torch.arange(n), torch.rand(n, generator=gen) * 6 - 3)
    # Drawn before timing: randperm(1e6) runs on every thread, and their spinning after it
    # would slow the step that follows on a 2-core machine.
    batches = [(torch.randperm(n, generator=gen)[:batch],
                {s: torch.rand(batch, d, generator=gen).to(device) for s, d in ULGM_DIMS.items()})
               for _ in range(steps + 1)]
    times = []
    for k, (idx, feats) in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        ulgm.step(idx, feats, epoch=2)
        sync(device)
        if k:  # the first step pays one-off allocation
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ulgm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000, 1_000_000)
    out: dict[str, Any] = {}
    for n in sizes:
        out[str(n)] = {mode: time_ulgm(n, mode, 5 if args.quick else (100 if mode == "incremental" else 30),
                                       device=args.device)
                       for mode in ("incremental", "full")}
    return out


# ---- loading ---------------------------------------------------------------------------------


def probe_load(path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(path)], capture_output=True,
                          text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from selfmm.data.cache import write_cache

    scales = {"mosi": args.scale, "mosei": 0.02 if args.quick else 0.25}
    out: dict[str, Any] = {}
    for profile, scale in scales.items():
        path = synthetic(work, profile, scale)
        cache = Path(f"{path}.selfmm-cache")
        if not cache.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write_cache(load_features(path), cache)
        out[f"{profile} x{scale} pickle"] = {**probe_load(path), "file_bytes": path.stat().st_size}
        out[f"{profile} x{scale} cache"] = probe_load(cache)
    return out


# ---- inference -------------------------------------------------------------------------------


@torch.inference_mode()
def bench_inference(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = quiet_load(synthetic(work, "mosi", args.scale))
    cfg = config.with_values(config.defaults_for("mosi"), {"text_model": args.text_model})
    device = args.device
    model = build(cfg, data, args.text_model, device=device).eval()
    split = data.splits["test"]
    collate = Collator(split)
    clips = min(len(split), 10 if args.quick else 100)
    model(collate([0]).to(device))  # warm-up
    single = []
    for row in range(clips):
        sync(device)
        start = time.perf_counter()
        model(collate([row]).to(device))
        sync(device)
        single.append(time.perf_counter() - start)
    sync(device)
    start = time.perf_counter()
    predict(model, split, device, batch_size=64)
    sync(device)
    batched = (time.perf_counter() - start) / len(split)
    return {"batch1_median_ms": 1e3 * statistics.median(single), "batch64_ms_per_clip": 1e3 * batched,
            "clips": clips}


# ---- report ----------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    if "gpu" in m:
        lines.append(f"device: {m['gpu']}")
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with "
                 f"{m['torch_threads']} threads; load average {m['load_average_start']:.2f} at start, "
                 f"{m.get('load_average_end', float('nan')):.2f} at end")
    if "phases" in results:
        lines.append("")
        lines.append(f"training step by phase, mosi profile x{results['args']['scale']}, "
                     f"{results['args']['text_model']}, batch 16 (ms per batch)")
        header = (f"{'precision':<10}{'padding':<16}" + "".join(f"{p:>12}" for p in PHASES)
                  + f"{'total':>10}{'samples/s':>11}")
        lines.append(header)
        for precision, paddings in results["phases"].items():
            for name, t in paddings.items():
                n_batches = t["samples"] / 16
                total = sum(t[p] for p in PHASES)
                lines.append(f"{precision:<10}{name:<16}" + "".join(f"{1e3 * t[p] / n_batches:>12.1f}" for p in PHASES)
                             + f"{1e3 * total / n_batches:>10.1f}{t['samples'] / total:>11.1f}")
    for precision, t in results.get("train", {}).items():
        lines.append("")
        lines.append(f"whole epochs through fit_seed, {precision} ({t['train_clips']} training clips)")
        for e, (sps, sec) in enumerate(zip(t["samples_per_s"], t["epoch_seconds"], strict=True), start=1):
            save, write = (t[key][e - 1] if e <= len(t.get(key, ())) else float("nan")
                           for key in ("checkpoint_seconds", "checkpoint_write_seconds"))
            lines.append(f"  epoch {e}: {sps:6.1f} samples/s in the training loop; "
                         f"{sec:6.1f} s with validation; checkpoint {save:5.2f} s "
                         f"(+ {write:4.2f} s written behind the next epoch)")
    for name, ratio in speedups(results).items():
        lines.append(f"bf16 / fp32 samples/s, {name}: {ratio:.2f}x")
    if "ulgm" in results:
        lines.append("")
        lines.append("ULGM step, batch 32, dims m128 t32 a16 v32 (ms, median)")
        lines.append(f"{'N':>10}{'incremental':>14}{'full':>12}")
        for n, t in results["ulgm"].items():
            lines.append(f"{int(n):>10}{1e3 * t['incremental']:>14.3f}{1e3 * t['full']:>12.3f}")
    if "load" in results:
        lines.append("")
        lines.append("opening a feature file (fresh process)")
        lines.append(f"{'file':<26}{'arrays MB':>11}{'peak RSS MB':>13}{'ratio':>8}{'seconds':>9}")
        for name, t in results["load"].items():
            lines.append(f"{name:<26}{t['array_bytes'] / 1e6:>11.1f}{t['peak_rss'] / 1e6:>13.1f}"
                         f"{t['peak_rss'] / t['array_bytes']:>8.2f}{t['seconds']:>9.2f}")
    if "inference" in results:
        t = results["inference"]
        lines.append("")
        lines.append(f"inference: {t['batch1_median_ms']:.1f} ms per clip at batch 1 (median of "
                     f"{t['clips']}), {t['batch64_ms_per_clip']:.2f} ms per clip at batch 64")
    return "\n".join(lines)


def speedups(results: dict[str, Any]) -> dict[str, float]:
    """bf16's samples/s over fp32's, per section that ran both."""
    out = {}
    phases = results.get("phases", {})
    if {"fp32", "bf16"} <= set(phases):
        for name in phases["fp32"]:
            rate = {p: phases[p][name]["samples"] / sum(phases[p][name][k] for k in PHASES) for p in ("fp32", "bf16")}
            out[f"phases, {name}"] = rate["bf16"] / rate["fp32"]
    runs = results.get("train", {})
    if {"fp32", "bf16"} <= set(runs):
        best = {p: statistics.median(runs[p]["samples_per_s"]) for p in ("fp32", "bf16")}
        out["train (median epoch)"] = best["bf16"] / best["fp32"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny files, few batches")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--text-model", default="minilm", help="encoder name or path (default minilm)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu); every "
                        "timing on CUDA waits for the device first")
    parser.add_argument("--epochs", type=int, help="epochs of the train section (default 2; quick 1)")
    parser.add_argument("--precision", nargs="+", choices=config.PRECISIONS, default=["fp32"],
                        help="the phases and train sections in each of these (default fp32)")
    parser.add_argument("--work", help="folder for the synthetic files, reused across runs "
                        "(default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    args.scale = 0.05 if args.quick else 1.0
    args.batches = 3 if args.quick else 20
    args.epochs = args.epochs or (1 if args.quick else 2)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.device = resolve_device(args.device)
        for precision in args.precision:
            check_precision(precision, args.device)
    except SelfMMError as exc:
        parser.error(str(exc))  # never measure the CPU in place of a missing GPU

    results: dict[str, Any] = {"machine": machine(args.device),
                               "args": {"quick": args.quick, "scale": args.scale,
                                        "text_model": args.text_model, "threads": args.threads,
                                        "device": str(args.device), "precision": args.precision}}
    benches = {"phases": bench_phases, "train": bench_train, "ulgm": bench_ulgm,
               "load": bench_load, "inference": bench_inference}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.sections:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = benches[name](args, work)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    results["speedup"] = speedups(results)
    print(render(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
