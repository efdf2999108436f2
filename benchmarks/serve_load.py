"""Load test of `selfmm serve` on loopback: concurrent clients posting one synthesized clip.

    python benchmarks/serve_load.py                        # 200 requests, 16 clients, 2 workers
    python benchmarks/serve_load.py --workers 1 2 --json serve.json
    python benchmarks/serve_load.py --run runs/mine        # your own run instead of a fresh one
    python benchmarks/serve_load.py --visual-features haar # a fresh run on the older face set

Without --run, a run is made first (bounded: 12 synthesized one-second clips, `selfmm
extract-dataset`, one epoch of `selfmm train` with --text-model). For each --workers value the
server is started in its own process (`selfmm.serve.serve`), warmed up with 2 requests per
worker, timed on 10 requests from one client (latency without a queue), and then sent
--requests requests from --clients concurrent clients, each with its own keep-alive connection.
Reported: errors (any status but 200), latency p50/p95/max, throughput, and the resident memory
of the server's whole process tree (server, fork server, workers) after the warm-up, at its peak
(sampled every 0.5 s) and at the end. RSS counts pages shared between the processes once per
process; PSS splits them, so its sum is what the tree really holds.
README.md beside this file records the figures.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic clips of the test suite

from media import make_video  # noqa: E402
from servers import start_serve, stop_serve  # noqa: E402


def run_selfmm(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "selfmm", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"selfmm {args[0]} failed:\n{done.stdout}{done.stderr}")


def make_run(work: Path, text_model: str, visual_features: str) -> Path:
    """12 one-second clips (half with a face; pitch follows the label), extracted with the
    visual set `visual_features` (the server extracts uploads with it too), one epoch."""
    rows = ["video_id,clip_id,text,label,mode"]
    for i in range(12):
        label = (1 if i % 3 else -1) * (0.5 + (i % 4) * 0.6)
        make_video(work / "Raw" / f"vid{i}" / "0.mp4", seconds=1.0, face=i % 2 == 0,
                   freq=260.0 + 40.0 * label)
        text = "a wonderful and happy film" if label > 0 else "a boring and sad film"
        rows.append(f"vid{i},0,{text},{label:.2f},{'train' if i < 8 else 'valid' if i < 10 else 'test'}")
    (work / "label.csv").write_text("\n".join(rows) + "\n")
    run_selfmm("extract-dataset", str(work / "Raw"), "--labels", str(work / "label.csv"), "--out",
               str(work / "feats.pkl"), "--workers", "1", "--no-progress", "--text-model", text_model,
               "--visual-features", visual_features)
    run_selfmm("train", "--dataset", "mosi", "--data", str(work / "feats.pkl"), "--out", str(work / "run"),
               "--text-model", text_model, "--seeds", "1", "--max-epochs", "1", "--device", "cpu")
    return work / "run"


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def memory(pid: int) -> dict[str, float]:
    """Summed RSS and PSS of the process tree, in MiB."""
    total = {"rss_mib": 0.0, "pss_mib": 0.0}
    for member in tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    total[f"{key.lower()}_mib"] += int(value.split()[0]) / 1024
        except OSError:
            continue  # a process that ended in between
    return total


def load(url: str, clip: bytes, requests: int, clients: int, timeout: float) -> tuple[list[float], list[str]]:
    """`requests` POSTs from `clients` threads, each with its own connection; (latencies, errors)."""
    latencies: list[float] = []
    errors: list[str] = []
    todo = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=timeout) as session:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                started = time.perf_counter()
                try:
                    response = session.post(f"{url}/predict", files={"video": ("clip.mp4", clip)},
                                            data={"transcript": "what a wonderful and happy day"})
                    ok = response.status_code == 200
                    failure = None if ok else f"{response.status_code} {response.text}"
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if failure:
                        errors.append(failure)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return latencies, errors


def measure(run: Path, workers: int, clip: bytes, args: argparse.Namespace, work: Path) -> dict:
    server, url = start_serve(run, work / f"server-{workers}.log", "--workers", str(workers), "--device", "cpu",
                              within=300)
    try:
        load(url, clip, 2 * workers, workers, args.timeout)  # every worker has scored once
        alone, _ = load(url, clip, 10, 1, args.timeout)  # latency without a queue
        warm = memory(server.pid)
        peak = dict(warm)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                for key, value in memory(server.pid).items():
                    peak[key] = max(peak[key], value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load_start = os.getloadavg()[0]
        started = time.perf_counter()
        latencies, errors = load(url, clip, args.requests, args.clients, args.timeout)
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
        end = memory(server.pid)
    finally:
        stop_serve(server)
    ordered = sorted(latencies)
    return {
        "workers": workers, "requests": len(latencies), "clients": args.clients, "errors": len(errors),
        "first_errors": errors[:3], "alone_p50_s": statistics.median(alone),
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)], "max_s": ordered[-1],
        "seconds": elapsed, "throughput_per_s": len(latencies) / elapsed,
        "memory_warm": warm, "memory_peak": peak, "memory_end": end,
        "rss_growth_pct": 100 * (end["rss_mib"] / warm["rss_mib"] - 1),
        "load_start": load_start, "load_end": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: make a small one)")
    parser.add_argument("--text-model", default="minilm", help="text model of the run made (default minilm)")
    parser.add_argument("--visual-features", default="mesh", help="visual set of the run made (default mesh)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="worker counts to test (default 2)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--work", type=Path, help="folder for the run, the clip and server logs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="selfmm-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run = args.run or make_run(work, args.text_model, args.visual_features)
    clip = make_video(work / "clip.mp4", seconds=args.clip_seconds, face=True, freq=300.0).read_bytes()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; run {run}; clip {args.clip_seconds:g} s, {len(clip) / 1024:.0f} KiB")
    results = [measure(run, workers, clip, args, work) for workers in args.workers]
    print("workers  alone p50 s  requests  clients  errors  p50 s  p95 s  max s  req/s  "
          "RSS warm/peak/end MiB  growth  PSS warm/end MiB  load")
    for r in results:
        m = (r["memory_warm"], r["memory_peak"], r["memory_end"])
        print(f"{r['workers']:7d}  {r['alone_p50_s']:11.2f}  {r['requests']:8d}  {r['clients']:7d}  "
              f"{r['errors']:6d}  "
              f"{r['p50_s']:5.2f}  {r['p95_s']:5.2f}  {r['max_s']:5.2f}  {r['throughput_per_s']:5.2f}  "
              f"{m[0]['rss_mib']:6.0f}/{m[1]['rss_mib']:4.0f}/{m[2]['rss_mib']:4.0f}          "
              f"{r['rss_growth_pct']:+5.1f}%  {m[0]['pss_mib']:6.0f}/{m[2]['pss_mib']:4.0f}      "
              f"{r['load_start']:.1f}->{r['load_end']:.1f}")
        for error in r["first_errors"]:
            print(f"  error: {error}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
