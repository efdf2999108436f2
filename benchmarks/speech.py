"""Speech recognition time per clip and per second of audio (the `asr` extra), on one core.

    python benchmarks/speech.py                       # 2, 5, 10 and 30 s of speech, 5 repeats
    python benchmarks/speech.py --seconds 5 --repeats 3 --json out.json
    python benchmarks/speech.py --quality             # also what it hears: word error rate, word times

The speech is espeak-ng's (a Debian package; tests/speech_media.py) reading the test sentences
one after another with 0.3 s pauses, cut to each length, at 16 kHz mono: what `extract_media`
hands the recogniser. Timed: `SpeechRecogniser.transcribe` (Silero VAD, Whisper tiny.en int8
on CTranslate2 with one thread, word times, their refinement) after one untimed run; the
median CPU time (`time.process_time`) and wall time of the repeats, and the real-time factor
(CPU seconds per second of audio). `benchmarks/extract.py --speech` runs the same measurement
beside the other stages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # speech_media.py: espeak-ng speech
sys.path.insert(0, str(ROOT / "src"))

RATE = 16_000


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def speech(seconds: float) -> np.ndarray:
    """`seconds` of espeak-ng speech: the test sentences in turn, 0.3 s apart."""
    import speech_media

    sentences = speech_media.SENTENCES
    parts, total, i = [], 0, 0
    while total < seconds * RATE:
        part = np.concatenate([speech_media.say(sentences[i % len(sentences)]), speech_media.silence(0.3)])
        parts.append(part)
        total += part.size
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)]


def bench_speech(lengths: list[float], repeats: int, threads: int = 1) -> dict[str, dict[str, float]]:
    """Per length: median CPU and wall seconds of one transcription, words, real-time factor;
    and the model's loading time."""
    from selfmm.extract.speech import speech_settings

    started = time.process_time()
    recogniser = speech_settings(asr_threads=threads).recogniser()
    out = {"load": {"cpu": time.process_time() - started}}
    for seconds in lengths:
        samples = speech(seconds)
        words = len(recogniser.transcribe(samples).words)  # untimed: the first call warms up
        cpu, wall = [], []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            recogniser.transcribe(samples)
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        out[f"{seconds:g} s"] = {"seconds": seconds, "words": words, "cpu": statistics.median(cpu),
                                 "wall": statistics.median(wall),
                                 "rtf": statistics.median(cpu) / seconds}
    return out


def render_speech(results: dict[str, dict[str, float]], load: tuple[str, str]) -> str:
    lines = ["| speech | words | CPU ms per clip | wall ms per clip | real-time factor (CPU s per s) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        if name == "load":
            continue
        lines.append(f"| {name} | {r['words']} | {1000 * r['cpu']:.0f} | {1000 * r['wall']:.0f} | {r['rtf']:.3f} |")
    lines += ["", f"Whisper tiny.en (int8, one thread), Silero VAD and word times; median of the repeats. "
              f"Loading the model: {1000 * results['load']['cpu']:.0f} ms CPU, once per process. "
              f"Load average {load[0]} at the start, {load[1]} at the end."]
    return "\n".join(lines)


def quality(threads: int = 1) -> str:
    """tests/test_speech.py's two measurements, with their figures: the word error rate over the
    test sentences spoken whole, and the word centres of sentences spoken word by word."""
    import speech_media
    from selfmm.extract.speech import speech_settings

    recogniser = speech_settings(asr_threads=threads).recogniser()
    wer, _ = speech_media.word_error_rate(recogniser)
    errors, matched, total = speech_media.centre_errors(recogniser)
    return (f"word error rate over {len(speech_media.SENTENCES)} sentences spoken whole: {100 * wer:.1f}%; "
            f"words spoken one by one: {matched} of {total} matched, their centres off by "
            f"{1000 * float(np.mean(errors)):.0f} ms on average, {1000 * max(errors):.0f} ms at most")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0, 10.0, 30.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (default 1)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--quality", action="store_true", help="also the word error rate and the word times")
    args = parser.parse_args(argv)
    start = load_average()
    results = bench_speech(args.seconds, args.repeats, args.threads)
    end = load_average()
    print(render_speech(results, (start, end)))
    if args.quality:
        print(quality(args.threads))
    if args.json:
        Path(args.json).write_text(json.dumps({"load": [start, end], "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
