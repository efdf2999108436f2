"""selfmm on one GPU: training samples/s, peak memory and host syncs per step.

    python benchmarks/gpu.py --json gpu.json      # about 4 minutes on one H200
    bash benchmarks/gpu_check.sh                   # the CUDA-marked tests, then this

Full-size mosi- and mosei-profile synthetic files (selfmm's generator; a word-level stand-in
for MiniLM's tokenizer, so a bare GPU machine needs no model package: the synthetic sentences
use single-token words, so text lengths match), a bert-base-sized encoder built from a config
(random weights, no download), the published batch sizes (mosi 16, mosei 32). Each variant
times `train.train_epoch` itself over the first STEPS batches after an untimed pass over
WARMUP batches, with torch.cuda.synchronize() before each clock reading:

  precision  the `precision` setting: fp32 (TF32 matrix products) or bf16 (autocast for the
             encoder's matrix products; LSTMs and heads in float32, see selfmm.precision)
  attention  ours-sdpa (selfmm.bert: packed tokens, [CLS]-only last layer, fused attention),
             ours-eager (the same, attention as two matrix products), hf-sdpa (Hugging Face's
             whole forward with its SDPA attention)
  determinism  on (the default: deterministic kernels) or off

Host syncs per step: a separate pass over the same batches under
torch.cuda.set_sync_debug_mode("warn"), which warns at every operation that makes the host
wait (reads of device values and blocking copies alike). Then one whole mosei-profile epoch
(16,326 clips, bf16, the defaults), against the target of 20 seconds on an H200.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pickle
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, BertConfig

from selfmm import bert, runtime, train
from selfmm import configuration as config
from selfmm.data import synth
from selfmm.data.mmsa import load_features
from selfmm.data.types import FeatureData, Split
from selfmm.io import atomic_writer, write_json
from selfmm.model import SelfMM
from selfmm.optim import make_optimizer
from selfmm.ulgm import UnimodalLabelGenerator

BATCH = {"mosi": 16, "mosei": 32}
STEPS, WARMUP = 40, 8
ENCODER: dict[str, Any] = {}  # BertConfig's defaults: bert-base (12 layers of width 768)
TARGET_SECONDS = 20.0  # a mosei-profile epoch, bert-base size, bf16, one H200


class WordTokenizer:
    """MiniLM's tokenizer stand-in: [CLS], one id per word or comma, [SEP], right-padded."""

    def __call__(self, sentences: list[str], padding: str, truncation: bool, max_length: int,
                 return_tensors: str) -> dict[str, np.ndarray]:
        ids = np.zeros((len(sentences), max_length), np.int64)
        for i, sentence in enumerate(sentences):
            words = [1000 + zlib.crc32(w.encode()) % 28000 for w in sentence.replace(",", " ,").split()]
            tokens = [101, *words[: max_length - 2], 102]
            ids[i, : len(tokens)] = tokens
        return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}


def feature_file(work: Path, profile: str) -> FeatureData:
    path = work / f"{profile}-x1.pkl"
    if not path.exists():
        synth._tokenizer = WordTokenizer  # called as synth._tokenizer()(sentences, ...)
        # Written beside its final name and renamed when whole: a run killed while writing (a
        # time-out) leaves no truncated file for the next run to trip on.
        with atomic_writer(path, "wb") as handle:
            pickle.dump(synth.make_synthetic(profile, scale=1.0, seed=0), handle, protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic files' -inf repairs are intended
        return load_features(path)


def first(split: Split, n: int) -> Split:
    """The first `n` clips of `split` (views)."""
    return dataclasses.replace(
        split, text_bert=split.text_bert[:n], audio=split.audio[:n], vision=split.vision[:n],
        audio_lengths=split.audio_lengths[:n], vision_lengths=split.vision_lengths[:n], labels=split.labels[:n],
        unimodal_labels={k: v[:n] for k, v in split.unimodal_labels.items()}, ids=split.ids[:n],
        raw_text=split.raw_text[:n], flags=split.flags[:n])


@contextlib.contextmanager
def variant(attention: str, deterministic: bool, device: torch.device):
    """The encoder's attention and determinism, for one run (the precision is a setting)."""
    saved = bert.supports, dict(bert.ATTENTION)
    if attention == "hf-sdpa":
        bert.supports = lambda encoder: False  # Hugging Face's own forward
    else:
        bert.ATTENTION["cuda"] = attention.removeprefix("ours-")
    runtime.configure_determinism(device, deterministic)
    try:
        yield
    finally:
        bert.supports = saved[0]
        bert.ATTENTION.update(saved[1])


def build(data: FeatureData, cfg: config.Config, attention: str, device: torch.device):
    torch.manual_seed(0)
    encoder = AutoModel.from_config(BertConfig(**ENCODER),
                                    attn_implementation="sdpa" if attention == "hf-sdpa" else "eager")
    model = SelfMM(encoder, data.audio_dim, data.vision_dim, cfg.model).to(device)
    split = data.splits["train"]
    ulgm = UnimodalLabelGenerator(len(split), model.feature_dims, H=3.0).to(device)
    ulgm.init_labels(torch.arange(len(split)), torch.as_tensor(split.labels))
    return model, make_optimizer(model, cfg), ulgm


def epoch_pass(model, optimizer, ulgm, split: Split, cfg: config.Config, device: torch.device,
               epoch: int) -> float:
    """Seconds of one `train_epoch` over `split`, the device's work included."""
    loader = train.train_loader(split, cfg, seed=0, epoch=epoch, pin=True)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    train.train_epoch(model, optimizer, loader, ulgm, epoch, cfg, device)
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def count_syncs(model, optimizer, ulgm, split: Split, cfg: config.Config, device: torch.device) -> float:
    """Operations per training step that made the host wait for the device."""
    loader = train.train_loader(split, cfg, seed=0, epoch=3, pin=True)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train.train_epoch(model, optimizer, loader, ulgm, 3, cfg, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / len(loader)


def measure(data: FeatureData, profile: str, precision: str, attention: str, deterministic: bool,
            device: torch.device) -> dict[str, Any]:
    cfg = config.with_values(config.defaults_for(profile), {"batch_size": BATCH[profile], "precision": precision})
    split = data.splits["train"]
    with variant(attention, deterministic, device):
        model, optimizer, ulgm = build(data, cfg, attention, device)
        epoch_pass(model, optimizer, ulgm, first(split, WARMUP * BATCH[profile]), cfg, device, epoch=1)
        timed = first(split, STEPS * BATCH[profile])
        torch.cuda.reset_peak_memory_stats(device)
        seconds = epoch_pass(model, optimizer, ulgm, timed, cfg, device, epoch=2)  # epoch 2: u-labels move
        peak = torch.cuda.max_memory_allocated(device)
        syncs = count_syncs(model, optimizer, ulgm, timed, cfg, device)
    del model, optimizer, ulgm
    torch.cuda.empty_cache()
    return {"profile": profile, "precision": precision, "attention": attention, "deterministic": deterministic,
            "samples_per_s": len(timed) / seconds, "ms_per_step": 1e3 * seconds / STEPS,
            "peak_gib": peak / 2**30, "syncs_per_step": syncs}


def whole_epoch(data: FeatureData, device: torch.device) -> dict[str, Any]:
    """One mosei-profile epoch in bf16 with the defaults otherwise (ours-sdpa, deterministic)."""
    cfg = config.with_values(config.defaults_for("mosei"), {"precision": "bf16"})
    split = data.splits["train"]
    with variant("ours-sdpa", True, device):
        model, optimizer, ulgm = build(data, cfg, "ours-sdpa", device)
        epoch_pass(model, optimizer, ulgm, first(split, WARMUP * cfg.optim.batch_size), cfg, device, epoch=1)
        seconds = epoch_pass(model, optimizer, ulgm, split, cfg, device, epoch=2)
    return {"clips": len(split), "seconds": seconds, "samples_per_s": len(split) / seconds,
            "target_seconds": TARGET_SECONDS, "met": seconds < TARGET_SECONDS}


def render(results: dict[str, Any]) -> str:
    lines = [f"device: {results['device']}, torch {results['torch']}", "",
             f"{'profile':<8}{'precision':<11}{'attention':<12}{'determ.':<9}{'samples/s':>10}{'ms/step':>9}"
             f"{'peak GiB':>10}{'syncs/step':>12}"]
    for r in results["variants"]:
        determinism = "on" if r["deterministic"] else "off"
        lines.append(f"{r['profile']:<8}{r['precision']:<11}{r['attention']:<12}{determinism:<9}"
                     f"{r['samples_per_s']:>10.0f}{r['ms_per_step']:>9.1f}{r['peak_gib']:>10.2f}"
                     f"{r['syncs_per_step']:>12.2f}")
    if "epoch" in results:
        e = results["epoch"]
        lines += ["", f"mosei-profile epoch ({e['clips']} clips, bf16): {e['seconds']:.1f} s, "
                      f"{e['samples_per_s']:.0f} samples/s; target < {e['target_seconds']:.0f} s: "
                      f"{'met' if e['met'] else 'NOT met'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--work", help="folder for the synthetic files, reused across runs")
    parser.add_argument("--profiles", nargs="+", default=["mosi", "mosei"], choices=sorted(BATCH))
    parser.add_argument("--no-epoch", action="store_true", help="skip the whole mosei-profile epoch")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU: this benchmark measures GPUs only (benchmarks/run.py covers the CPU)")
    device = runtime.resolve_device("cuda")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                               "steps": STEPS, "warmup": WARMUP, "variants": []}

    def save(results: dict[str, Any]) -> None:
        """What is measured so far, after every part: a time-out keeps it."""
        if args.json:
            write_json(args.json, results)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for profile in args.profiles:
            started = time.perf_counter()
            data = feature_file(work, profile)
            print(f"{profile}: data ready in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            runs = [(p, a, True) for p in ("fp32", "bf16") for a in ("ours-sdpa", "ours-eager", "hf-sdpa")]
            runs.append(("bf16", "ours-sdpa", False))
            for precision, attention, deterministic in runs:
                results["variants"].append(measure(data, profile, precision, attention, deterministic, device))
                print(json.dumps(results["variants"][-1]), file=sys.stderr, flush=True)
                save(results)
            if profile == "mosei" and not args.no_epoch:
                results["epoch"] = whole_epoch(data, device)
                save(results)
            del data
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
