"""The text encoder's forward and backward per training batch: fp32, bf16 with shape buckets,
bf16 without them, and (with --compile) bf16 under torch.compile; variants alternated.

    python benchmarks/encoder.py --work /tmp/bench                 # 1 thread, 4 rounds of 10 batches
    python benchmarks/encoder.py --work /tmp/bench --threads 2 --rounds 6
    python benchmarks/encoder.py --work /tmp/bench --compile       # adds "bf16-compiled" (slow to start)

MiniLM in train mode (dropout on) through selfmm.bert.cls_vector, on the dynamically padded
batches of 16 that training sees (mosi profile x1, shuffled, every batch new: the shapes recur
only as often as they do in training). Each round runs every variant on its own fresh batches,
so that a change of the machine's load hits all of them. Figures: CPU milliseconds per batch
(`time.process_time`, which another process's load disturbs far less than wall time on one
thread) and wall milliseconds. "bf16-compiled" wraps selfmm.bert's layer function in
`torch.compile(dynamic=True)` (inductor); its first batches, which compile, are timed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from run import quiet_load, synthetic

from selfmm import bert
from selfmm.data.batch import Collator
from selfmm.encoder import load_encoder
from selfmm.io import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/selfmm-bench", help="folder for the synthetic file (reused)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=10, help="batches per variant and round")
    parser.add_argument("--compile", action="store_true", help="also bf16 under torch.compile")
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    split = quiet_load(synthetic(work, "mosi", 1.0)).splits["train"]
    collate = Collator(split)
    torch.manual_seed(0)
    encoder = load_encoder("minilm").train()
    order = torch.randperm(len(split)).tolist()
    batches = [collate(order[i:i + 16]) for i in range(0, len(order), 16)]
    needed = args.rounds * args.batches * (4 if args.compile else 3) + 3
    batches = (batches * (needed // len(batches) + 1))[:needed]

    eager_layer, buckets = bert._layer, bert.buckets_shapes
    variants = {"fp32": (False, buckets, eager_layer), "bf16": (True, buckets, eager_layer),
                "bf16-no-buckets": (True, lambda device: False, eager_layer)}
    results = {"threads": args.threads, "load_average_start": os.getloadavg()[0], "cpu_ms": {}, "wall_ms": {}}
    if args.compile:
        variants["bf16-compiled"] = (True, buckets, torch.compile(eager_layer, dynamic=True))

    def step(batch, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = bert.cls_vector(encoder, batch.text[:, 0], batch.text[:, 1], batch.text[:, 2], batch.text_lengths)
        out.float().sum().backward()
        encoder.zero_grad(set_to_none=True)

    it = iter(batches)
    if args.compile:
        bert._layer = variants["bf16-compiled"][2]
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(3):
            step(next(it), True)
        results["compile_first_3_batches_s"] = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    for name in variants:
        results["cpu_ms"][name], results["wall_ms"][name] = [], []
    for _ in range(args.rounds):
        for name, (bf16, bucketing, layer) in variants.items():
            bert.buckets_shapes, bert._layer = bucketing, layer
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.batches):
                step(next(it), bf16)
            results["cpu_ms"][name].append(1e3 * (time.process_time() - cpu) / args.batches)
            results["wall_ms"][name].append(1e3 * (time.perf_counter() - wall) / args.batches)
    bert.buckets_shapes, bert._layer = buckets, eager_layer
    results["load_average_end"] = os.getloadavg()[0]

    print(f"MiniLM forward+backward per batch of 16 (mosi profile x1, dynamic padding, train mode), "
          f"{args.threads} thread(s), {args.rounds} rounds x {args.batches} batches; load average "
          f"{results['load_average_start']:.2f} -> {results['load_average_end']:.2f}")
    if "compile_first_3_batches_s" in results:
        c = results["compile_first_3_batches_s"]
        print(f"torch.compile: first 3 batches (compiling) {c['wall']:.1f} s wall, "
              f"{c['cpu']:.1f} s CPU in this process")
    fp32 = statistics.median(results["cpu_ms"]["fp32"])
    print(f"{'variant':<18}{'CPU ms (median)':>16}{'wall ms (median)':>18}{'fp32 / it (CPU)':>17}")
    for name in variants:
        cpu = statistics.median(results["cpu_ms"][name])
        print(f"{name:<18}{cpu:>16.1f}{statistics.median(results['wall_ms'][name]):>18.1f}{fp32 / cpu:>16.2f}x")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
