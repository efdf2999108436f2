"""Seeds side by side: `selfmm train --jobs N` for 5 seeds, whole process, N alternated.

    python benchmarks/jobs.py --work /tmp/jobs-bench                 # jobs 1 and 2, 2 rounds
    python benchmarks/jobs.py --work /tmp/jobs-bench --jobs 1 2 3 --rounds 3 --json jobs.json

Each run is `selfmm train --dataset mosi --data FILE --text-model minilm --seeds 1111 ... 1115
--max-epochs EPOCHS --device cpu --jobs N` in a fresh process, timed from start to exit, on the
mosi-profile file at --scale (default 0.25: 321 training clips; made in --work with `selfmm
synth --profile mosi --seed 0`). The rounds alternate the order of N, so that a change in the
machine's load hits every N. torch's threads are the machine's cores unless --threads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selfmm.io import write_json

SEEDS = ("1111", "1112", "1113", "1114", "1115")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the feature file (reused) and the runs")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, help="torch threads of the command (OMP_NUM_THREADS; default: cores)")
    parser.add_argument("--json", help="also write every timing as JSON")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"mosi-{args.scale}.pkl"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "selfmm", "synth", "--profile", "mosi", "--scale", str(args.scale),
                        "--seed", "0", "--out", str(data)], check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    selfmm_cli = shutil.which("selfmm") or sys.exit("the `selfmm` command is not on PATH")
    seconds: dict[int, list[float]] = {n: [] for n in args.jobs}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for r in range(args.rounds):
            for n in args.jobs if r % 2 == 0 else args.jobs[::-1]:
                out = Path(tmp) / f"jobs{n}-{r}"
                command = [selfmm_cli, "train", "--dataset", "mosi", "--data", str(data), "--out", str(out),
                           "--text-model", "minilm", "--seeds", *SEEDS, "--max-epochs", str(args.epochs),
                           "--device", "cpu", "--precision", args.precision, "--jobs", str(n)]
                start = time.perf_counter()
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    sys.exit(f"--jobs {n} exited with {done.returncode}:\n{done.stderr[-3000:]}")
                seconds[n].append(time.perf_counter() - start)
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}: --jobs {n}: {seconds[n][-1]:.1f} s (load {loads[-1]:.2f})",
                      file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)
    median = {n: statistics.median(t) for n, t in seconds.items()}
    base = median[args.jobs[0]]
    print(f"5 seeds, mosi profile x{args.scale}, MiniLM, {args.epochs} epochs + test each, {args.precision}, "
          f"{os.cpu_count()} cores; {args.rounds} alternated rounds; load average {min(loads):.2f}-{max(loads):.2f}")
    print(f"{'jobs':>5}{'median s':>10}{'runs s':>24}{'speed-up':>10}")
    for n in args.jobs:
        runs = ", ".join(f"{t:.1f}" for t in seconds[n])
        print(f"{n:>5}{median[n]:>10.1f}{runs:>24}{base / median[n]:>9.2f}x")
    if args.json:
        write_json(args.json, {"seconds": {str(n): t for n, t in seconds.items()}, "loads": loads,
                               "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
