"""Per-clip extraction time by stage: faces (mesh and haar) and each acoustic set (the `video` extra).

    python benchmarks/extract.py                  # 2 s and 5 s clips, 7 repeats
    python benchmarks/extract.py --seconds 5 --repeats 3 --json out.json
    python benchmarks/extract.py --quality        # also the mesh's accuracy on the moving astronaut
    python benchmarks/extract.py --speech         # also speech recognition (the `asr` extra, espeak-ng)

Two kinds of clip, 640 x 480 at 30 fps, H.264 + AAC with a voiced tone, synthesized with
tests/media.py: a drawn cartoon face in every frame (the clip the haar figures were first taken
on), and scikit-image's astronaut photo moved, scaled and turned along a path (a real face).
Each clip is decoded once per frame format and timed stage by stage on the decoded data:

- decoding: grey frames at most 360 wide (haar), RGB frames at most 640 wide (mesh);
- haar: the Haar cascades and crop statistics on the grey frames;
- mesh: the face detector, the landmark model (each call timed inside the tracking), the rest
  of the tracking, and the geometry (pose fit, expression, landmarks: mesh_rows);
- each acoustic set; then `extract_media` end to end.

All stages of one repeat run back to back, so haar and mesh see the same load (A/B alternated);
every stage runs once untimed first (imports, model loading, openSMILE's Smile object,
librosa's numba kernels). OpenCV and LiteRT run on one thread, as in `extract-dataset`'s
workers: the figures are per core, CPU time (`time.process_time`).

With `--speech`, speech recognition on espeak-ng speech of each length (and 10 and 30 s) is
timed as benchmarks/speech.py times it: per clip, and per second of audio (the real-time
factor), Whisper tiny.en on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # media.py: the synthetic clips of the tests
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # speech.py: speech recognition's figures

from media import make_video, moving_face, tone, write_frames  # noqa: E402
from selfmm.extract import AUDIO_SETS, VISION_FPS, VISUAL_SETS, acoustic_frames, extract_media  # noqa: E402
from selfmm.extract.media import decode  # noqa: E402
from selfmm.extract.mesh_faces import mesh_rows  # noqa: E402
from selfmm.extract.visual import haar_describer, mesh_models  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def interleaved(stages: dict[str, Callable[[], dict[str, float] | None]], repeats: int) -> dict[str, float]:
    """Median CPU seconds of each stage over `repeats` rounds, each round running every stage
    once in turn, after one untimed round. A stage may return sub-timings of its own (seconds),
    whose medians are reported as `stage.part`."""
    for fn in stages.values():
        fn()
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in stages.items():
            start = time.process_time()
            parts = fn() or {}
            samples.setdefault(name, []).append(time.process_time() - start)
            for part, seconds in parts.items():
                samples.setdefault(f"{name}.{part}", []).append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def mesh_stage(frames: list[np.ndarray]) -> Callable[[], dict[str, float]]:
    """Tracking and geometry of decoded RGB frames, with the detector's and the landmark
    model's own time measured inside the tracking."""
    models = mesh_models()

    def run() -> dict[str, float]:
        spent: Counter[str] = Counter()
        detect, landmarks = models.detector.detect, models.landmarker.run

        def timed(name, fn):
            def call(*args):
                start = time.process_time()
                try:
                    return fn(*args)
                finally:
                    spent[name] += time.process_time() - start
            return call

        models.detector.detect = timed("detect", detect)
        models.landmarker.run = timed("landmarks", landmarks)
        try:
            start = time.process_time()
            track = models.track(frames)
            tracking = time.process_time() - start
        finally:
            del models.detector.detect, models.landmarker.run  # back to the class's methods
        start = time.process_time()
        mesh_rows(track)
        geometry = time.process_time() - start
        return {"detect": spent["detect"], "landmarks": spent["landmarks"],
                "tracking": tracking - spent["detect"] - spent["landmarks"], "geometry": geometry}

    return run


def discard(fn: Callable[..., object], *args, **kwargs) -> Callable[[], None]:
    def run() -> None:
        fn(*args, **kwargs)
    return run


def bench_clip(path: Path, repeats: int) -> dict[str, float]:
    grey_format = {"frame_format": "gray", "frame_width": VISUAL_SETS["haar"].frame_width}
    rgb_format = {"frame_format": "rgb24", "frame_width": VISUAL_SETS["mesh"].frame_width}
    grey = decode(path, VISION_FPS, **grey_format)
    rgb = decode(path, VISION_FPS, **rgb_format)
    haar = haar_describer()
    stages: dict[str, Callable[[], dict[str, float] | None]] = {
        "decode_grey": discard(decode, path, VISION_FPS, **grey_format),
        "decode_rgb": discard(decode, path, VISION_FPS, **rgb_format),
        "haar": discard(haar.describe, grey.frames),
        "mesh": mesh_stage(rgb.frames),
    }
    for name in AUDIO_SETS:
        stages[name] = discard(acoustic_frames, grey.audio, name)
    stages["total_haar"] = discard(extract_media, path, "egemaps", visual_features="haar")
    for name in AUDIO_SETS:
        stages[f"total_{name}"] = discard(extract_media, path, name, visual_features="mesh")
    out = interleaved(stages, repeats)
    out["seconds"] = len(rgb.frames) / VISION_FPS
    out["frames"] = len(rgb.frames)
    return out


def astronaut_clip(path: Path, seconds: float) -> Path:
    """The astronaut along tests/media.py's face path, at 30 fps, with a tone."""
    from fractions import Fraction

    import av

    frames, _ = moving_face(WIDTH, HEIGHT, n=int(seconds * FPS), still=0)
    silent = write_frames(path.with_suffix(".video.mp4"), frames, fps=FPS)
    # Mux a tone beside the frames: the same audio as the drawn clips.
    with av.open(str(silent)) as src, av.open(str(path), "w") as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        aout = out.add_stream("aac", rate=16_000, layout="mono")
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
        wave = tone(seconds)
        for start in range(0, wave.size, 1024):
            frame = av.AudioFrame.from_ndarray(wave[start:start + 1024][None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16_000, start, Fraction(1, 16_000)
            for packet in aout.encode(frame):
                out.mux(packet)
        for packet in aout.encode():
            out.mux(packet)
    silent.unlink()
    return path


def quality(work: Path) -> dict[str, float]:
    """The mesh on the moving astronaut (tests/test_faces.py's clip, 256 x 192, 33 frames): share
    of frames with a face, head_roll's error against the applied turn, face_x/face_y's error
    against the applied path (as fractions of the frame), face_size's against the scale."""
    width, height = 256, 192
    frames, truth = moving_face(width, height)
    rows = extract_media(write_frames(work / "moving.mp4", frames), "egemaps", visual_features="mesh").vision
    col = {name: i for i, name in enumerate(VISUAL_SETS["mesh"].columns)}
    present = rows[:, col["face_present"]] == 1
    ref = np.array([rows[2, col["face_x"]] * width, rows[2, col["face_y"]] * height, 1.0])
    photo = np.linalg.solve(np.vstack([truth[2][4], [0, 0, 1]]), ref)
    expected = np.array([t[4] @ photo for t in truth])
    roll = np.abs(rows[:, col["head_roll"]] - rows[2, col["head_roll"]] - [t[2] for t in truth])[3:][present[3:]]
    pos = np.maximum(np.abs(rows[:, col["face_x"]] - expected[:, 0] / width),
                     np.abs(rows[:, col["face_y"]] - expected[:, 1] / height))[3:][present[3:]]
    size = np.abs(rows[:, col["face_size"]] / rows[2, col["face_size"]] / [t[3] for t in truth] - 1)[present]
    return {"frames": len(rows), "with_face": float(present.mean()), "roll_max": float(roll.max()),
            "roll_mean": float(roll.mean()), "position_max": float(pos.max()), "position_mean": float(pos.mean()),
            "size_max": float(size.max())}


def render(results: dict[str, dict[str, float]], load: tuple[str, str]) -> str:
    ms = lambda v: f"{1000 * v:.0f}"  # noqa: E731
    lines = [
        "| clip | decode grey / RGB | haar | mesh: detect | landmarks | tracking | geometry | mesh | "
        "per s of video: haar / mesh | haar / mesh |",
        "|---" * 10 + "|",
    ]
    for clip, r in results.items():
        mesh = r["mesh"]  # the whole stage: tracking (with detect and landmarks) and geometry
        lines.append("| " + " | ".join([
            clip, f"{ms(r['decode_grey'])} / {ms(r['decode_rgb'])}", ms(r["haar"]), ms(r["mesh.detect"]),
            ms(r["mesh.landmarks"]), ms(r["mesh.tracking"]), ms(r["mesh.geometry"]), ms(mesh),
            f"{ms(r['haar'] / r['seconds'])} / {ms(mesh / r['seconds'])}", f"{r['haar'] / mesh:.1f}x"]) + " |")
    sets = list(AUDIO_SETS)
    lines += ["", "| clip | " + " | ".join(sets) + " | extract_media egemaps + haar | "
              + " | ".join(f"extract_media {s} + mesh" for s in sets) + " |",
              "|---" * (2 + 2 * len(sets)) + "|"]
    for clip, r in results.items():
        lines.append("| " + " | ".join([clip, *(ms(r[s]) for s in sets), ms(r["total_haar"]),
                                        *(ms(r[f"total_{s}"]) for s in sets)]) + " |")
    lines.append("")
    lines.append("CPU milliseconds per clip, median. mesh = detect + landmarks + tracking (the warp "
                 "into the landmark model's input, the region for the next frame) + geometry. "
                 f"Load average {load[0]} at the start, {load[1]} at the end.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1)")
    parser.add_argument("--quality", action="store_true", help="also the mesh's accuracy on the moving astronaut")
    parser.add_argument("--speech", action="store_true",
                        help="also speech recognition per clip and per second of audio (asr extra, espeak-ng)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(args.threads)
    start = load_average()
    results, measured = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for seconds in args.seconds:
            drawn = make_video(Path(work) / f"drawn-{seconds:g}s.mp4", seconds=seconds, fps=FPS,
                               width=WIDTH, height=HEIGHT, face=True)
            results[f"drawn {seconds:g} s"] = bench_clip(drawn, args.repeats)
            real = astronaut_clip(Path(work) / f"astronaut-{seconds:g}s.mp4", seconds)
            results[f"astronaut {seconds:g} s"] = bench_clip(real, args.repeats)
        if args.quality:
            measured = quality(Path(work))
    words = {}
    if args.speech:
        from speech import bench_speech, render_speech

        words = bench_speech(sorted({*args.seconds, 10.0, 30.0}), args.repeats)
    end = load_average()
    print(render(results, (start, end)))
    if words:
        print("\n" + render_speech(words, (start, end)))
    if measured:
        print(f"\nmesh on the moving astronaut ({measured['frames']} frames): face in "
              f"{100 * measured['with_face']:.0f}% of frames; head_roll error max {measured['roll_max']:.2f}, "
              f"mean {measured['roll_mean']:.2f} degrees; face_x/face_y error max "
              f"{100 * measured['position_max']:.2f}%, mean {100 * measured['position_mean']:.2f}% of the frame; "
              f"face_size error max {100 * measured['size_max']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": [start, end], "results": results, "quality": measured,
                                               "speech": words}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
