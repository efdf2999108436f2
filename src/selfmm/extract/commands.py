"""The `extract` and `extract-dataset` subcommands; the main CLI registers them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SelfMMError


def add_commands(subparsers) -> None:
    """Register `extract` and `extract-dataset` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "extract",
        help="features of one video clip, written as a one-clip MMSA feature file",
        description="Compute text tokens, acoustic frames (openSMILE eGeMAPS by default) and "
        "visual frames (OpenCV face) of one clip. The file holds the clip as the only row of the "
        "test split.",
    )
    p.add_argument("video", help="the video file (anything FFmpeg reads: mp4, mkv, avi, ...)")
    p.add_argument(
        "--transcript", required=True,
        help="what is said in the clip: the text itself, or the path of a UTF-8 text file",
    )
    p.add_argument("--out", help="output pickle (default: VIDEO with suffix .pkl)")
    _common(p)
    p.set_defaults(func=run_extract)

    p = subparsers.add_parser(
        "extract-dataset",
        help="an MMSA feature file from a folder of videos and MMSA's label.csv",
        description="Extract every clip of label.csv (columns video_id, clip_id, text, label, "
        "mode, optional label_T/label_A/label_V) from VIDEO_DIR/video_id/clip_id.EXT or "
        "VIDEO_DIR/video_id$_$clip_id.EXT. Finished clips are cached in OUT.parts/, so "
        "rerunning the command after an interruption resumes.",
    )
    p.add_argument("video_dir", help="folder of the videos")
    p.add_argument("--labels", required=True, help="MMSA label.csv")
    p.add_argument("--out", required=True, help="output pickle")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--strict", action="store_true", help="fail if any clip fails")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=run_extract_dataset)


def add_audio_features(p: argparse.ArgumentParser, default: str | None, text: str) -> None:
    from .audio import AUDIO_SETS

    p.add_argument("--audio-features", choices=list(AUDIO_SETS), default=default, help=text)


def _common(p: argparse.ArgumentParser) -> None:
    from .audio import DEFAULT_AUDIO_FEATURES

    add_audio_features(
        p, DEFAULT_AUDIO_FEATURES,
        "acoustic set: egemaps (openSMILE eGeMAPSv02, 25 values / 10 ms; default), compare "
        "(openSMILE ComParE_2016, 65 / 10 ms) or librosa (34 / 20 ms)",
    )
    p.add_argument(
        "--text-model", default="minilm",
        help="tokenizer: 'minilm' (bert-base-uncased vocabulary, offline), a hub name or a path",
    )
    p.add_argument("--text-len", type=int, default=50, help="tokens per clip (default 50)")
    p.add_argument("--audio-len", type=int, default=None,
                   help="pad/truncate audio to N frames of the chosen set")
    p.add_argument("--vision-len", type=int, default=None, help="pad/truncate vision to N frames")


def read_transcript(value: str) -> str:
    """`value` itself, or the content of the file it names."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    except OSError:  # a long sentence is not a valid path on every system
        pass
    except UnicodeDecodeError as exc:
        raise SelfMMError(f"{path}: the transcript file is not UTF-8 text") from exc
    return value.strip()


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SelfMMError(f"{name} must be at least 1, got {value}")


def run_extract(args: argparse.Namespace) -> int:
    from ..encoder import load_tokenizer
    from .clip import extract_clip, flag_string, write_clip

    for name in ("text_len", "audio_len", "vision_len"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    video = Path(args.video)
    out = Path(args.out) if args.out else video.with_suffix(".pkl")
    if out.resolve() == video.resolve():
        raise SelfMMError(f"--out {out} would overwrite the video")
    tokenizer = load_tokenizer(args.text_model)
    clip = extract_clip(
        video, read_transcript(args.transcript), tokenizer,
        text_len=args.text_len, audio_len=args.audio_len, vision_len=args.vision_len,
        audio_features=args.audio_features,
    )
    write_clip(out, clip, clip_id=f"{video.stem}$_$0")
    flags = flag_string(clip.flags)
    print(
        f"{out}: audio ({clip.audio_features}) {clip.audio_length} frames x {clip.audio.shape[1]}, "
        f"vision {clip.vision_length} frames x {clip.vision.shape[1]}"
        + (f", flags: {flags}" if flags else "")
    )
    return 0


def run_extract_dataset(args: argparse.Namespace) -> int:
    from .dataset import extract_dataset

    for name in ("text_len", "audio_len", "vision_len", "workers"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    report = extract_dataset(
        args.video_dir, args.labels, args.out,
        tokenizer_name=args.text_model, workers=args.workers, text_len=args.text_len,
        audio_len=args.audio_len, vision_len=args.vision_len,
        progress=not args.no_progress, strict=args.strict, audio_features=args.audio_features,
    )
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    flags = ", ".join(f"{name} {n}" for name, n in report.flag_counts.items() if n)
    print(
        f"{report.out}: {counts} (extracted {report.extracted}, reused {report.reused})"
        + (f"; flagged clips: {flags}" if flags else "")
    )
    if report.failures:
        print(f"warning: {len(report.failures)} clip(s) left out:", file=sys.stderr)
        for clip_id, message in report.failures:
            print(f"  {clip_id}: {message}", file=sys.stderr)
    return 0
