"""Per-clip extraction time by stage and by acoustic feature set (the `video` extra).

    python benchmarks/extract.py                  # 2 s and 5 s clips, 7 repeats
    python benchmarks/extract.py --seconds 5 --repeats 3 --json out.json

Each clip is synthesized with tests/media.py (640 x 480, 30 fps, H.264 + AAC, a drawn face in
every frame, a voiced tone), decoded once, and timed stage by stage on the decoded data:
decoding, each acoustic set, face detection; then `extract_media` end to end per set. Every
stage runs once untimed first (imports, openSMILE's Smile object, librosa's numba kernels).
OpenCV runs on one thread, as in `extract-dataset`'s workers: the figures are per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # media.py: the synthetic clips of the tests
sys.path.insert(0, str(ROOT / "src"))

from media import make_video  # noqa: E402
from selfmm.extract import AUDIO_SETS, VISION_FPS, acoustic_frames, extract_media  # noqa: E402
from selfmm.extract.clip import _face_describer  # noqa: E402
from selfmm.extract.media import decode  # noqa: E402


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of `fn` over `repeats` runs, after one untimed run."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def bench_clip(path: Path, repeats: int) -> dict[str, dict[str, float]]:
    decoded = decode(path, VISION_FPS)
    faces = _face_describer()
    out = {"decode": timed(lambda: decode(path, VISION_FPS), repeats),
           "faces": timed(lambda: faces.describe(decoded.frames), repeats)}
    for name in AUDIO_SETS:
        out[name] = timed(lambda name=name: acoustic_frames(decoded.audio, name), repeats)
        out[f"total_{name}"] = timed(lambda name=name: extract_media(path, name), repeats)
    return out


def render(results: dict[str, dict[str, dict[str, float]]], load: tuple[str, str]) -> str:
    sets = list(AUDIO_SETS)
    lines = [
        "| clip | decode | faces | " + " | ".join(sets) + " | eGeMAPS / (decode + faces) | "
        + " | ".join(f"extract_media {s}: wall (CPU)" for s in sets) + " |",
        "|---" * (4 + 2 * len(sets)) + "|",
    ]
    for clip, r in results.items():
        base = r["decode"]["cpu"] + r["faces"]["cpu"]
        cells = [clip, *(f"{1000 * r[k]['cpu']:.0f}" for k in ("decode", "faces", *sets)),
                 f"{100 * r['egemaps']['cpu'] / base:.1f}%",
                 *(f"{1000 * r[f'total_{s}']['wall']:.0f} ({1000 * r[f'total_{s}']['cpu']:.0f})"
                   for s in sets)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Milliseconds per clip, median. Stages: CPU time of the stage alone. extract_media: wall "
                 "clock (CPU time of the process), with the acoustic frames computed in a thread while "
                 f"faces are detected. Load average {load[0]} at the start, {load[1]} at the end.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(args.threads)
    start = load_average()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for seconds in args.seconds:
            clip = make_video(Path(work) / f"clip-{seconds:g}s.mp4", seconds=seconds, fps=30,
                              width=640, height=480, face=True)
            results[f"{seconds:g} s"] = bench_clip(clip, args.repeats)
    end = load_average()
    print(render(results, (start, end)))
    if args.json:
        Path(args.json).write_text(json.dumps({"load": [start, end], "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
