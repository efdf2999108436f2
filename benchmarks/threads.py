"""The CPU LSTMs' thread switch (selfmm.model.LSTM_THREADS): on, off, idle and under load.

    python benchmarks/threads.py --work /tmp/bench            # about 3 minutes on 2 cores
    python benchmarks/threads.py --json threads.json --precision bf16

benchmarks/run.py's `phases` measurement (training steps of the mosi-profile file x1, MiniLM,
batch 16, dynamic padding, forward and backward of each part timed apart) in three settings:

  switch on         torch on 2 threads, the LSTMs' forward and backward on 1 (the default)
  switch off        everything on 2 threads
  1 thread          torch on 1 thread throughout (the switch has nothing to change)

each on an idle machine and with the other core loaded by a busy-loop process (as when another
job shares the machine). The figures: the LSTMs' ms per batch (forward and backward of both)
and the whole step's samples/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from run import PHASES, build, quiet_load, synthetic, time_phases

from selfmm import configuration as config
from selfmm import model as model_module
from selfmm.io import write_json

# name: (torch threads, LSTM_THREADS)
SETTINGS = {"switch on": (2, 1), "switch off": (2, None), "1 thread": (1, 1)}


@contextlib.contextmanager
def busy_core(loaded: bool) -> Iterator[None]:
    """A process spinning on one core while inside, when `loaded`."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/selfmm-bench", help="folder for the synthetic file (reused)")
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--precision", choices=config.PRECISIONS, default="fp32")
    parser.add_argument("--text-model", default="minilm")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = quiet_load(synthetic(work, "mosi", 1.0))
    cfg = config.with_values(config.defaults_for("mosi"), {"text_model": args.text_model,
                                                           "precision": args.precision})
    results: dict[str, Any] = {"precision": args.precision, "batches": args.batches,
                               "load_average_start": os.getloadavg()[0], "figures": {}}
    print(f"{'machine':<8}{'setting':<16}{'lstms ms':>10}{'step ms':>10}{'samples/s':>11}")
    for loaded in (False, True):
        for name, (threads, lstm_threads) in SETTINGS.items():
            torch.set_num_threads(threads)
            model_module.LSTM_THREADS = lstm_threads
            model = build(cfg, data, args.text_model)
            with busy_core(loaded):
                t = time_phases(model, data, cfg, args.batches, pad_to_max=False)
            batches = t["samples"] / cfg.optim.batch_size
            total = sum(t[p] for p in PHASES)
            row = {"lstms_ms": 1e3 * t["lstms"] / batches, "step_ms": 1e3 * total / batches,
                   "samples_per_s": t["samples"] / total, "phases": t}
            machine = "loaded" if loaded else "idle"
            results["figures"][f"{machine}, {name}"] = row
            print(f"{machine:<8}{name:<16}{row['lstms_ms']:>10.1f}{row['step_ms']:>10.1f}"
                  f"{row['samples_per_s']:>11.1f}", flush=True)
    results["load_average_end"] = os.getloadavg()[0]
    print(f"load average {results['load_average_start']:.2f} at start, {results['load_average_end']:.2f} at end")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
