"""`selfmm extract`, `extract-dataset` and `predict`: your own videos."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..configuration import check_workers
from ..encoder import load_tokenizer
from ..errors import SelfMMError
from ..extract.clip import check_lengths, extract_clip, flag_string, write_clip
from ..extract.dataset import extract_dataset as extract_all
from ..predict import ClipScore, Predictor, parse_input, scores_table
from .common import read_transcript


def extract(args: argparse.Namespace) -> int:
    check_lengths(args.text_len, args.audio_len, args.vision_len)
    video = Path(args.video)
    out = Path(args.out) if args.out else video.with_suffix(".pkl")
    clip = extract_clip(video, read_transcript(args.transcript), load_tokenizer(args.text_model),
                        text_len=args.text_len, audio_len=args.audio_len, vision_len=args.vision_len,
                        audio_features=args.audio_features)
    write_clip(out, clip, clip_id=f"{video.stem}$_$0")
    flags = flag_string(clip.flags)
    print(f"{out}: audio ({clip.audio_features}) {clip.audio_length} frames x {clip.audio.shape[1]}, "
          f"vision {clip.vision_length} frames x {clip.vision.shape[1]}"
          + (f", flags: {flags}" if flags else ""))
    return 0


def extract_dataset(args: argparse.Namespace) -> int:
    check_lengths(args.text_len, args.audio_len, args.vision_len)
    check_workers(args.workers)
    report = extract_all(args.video_dir, args.labels, args.out, tokenizer_name=args.text_model,
                         workers=args.workers, text_len=args.text_len, audio_len=args.audio_len,
                         vision_len=args.vision_len, progress=not args.no_progress, strict=args.strict,
                         audio_features=args.audio_features)
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    flags = ", ".join(f"{name} {n}" for name, n in report.flag_counts.items() if n)
    print(f"{report.out}: {counts} (extracted {report.extracted}, reused {report.reused})"
          + (f"; flagged clips: {flags}" if flags else ""))
    if report.failures:
        print(f"warning: {len(report.failures)} clip(s) left out:", file=sys.stderr)
        for clip_id, message in report.failures:
            print(f"  {clip_id}: {message}", file=sys.stderr)
    return 0


def predict(args: argparse.Namespace) -> int:
    inputs = [parse_input(value) for value in args.inputs]
    videos = sum(kind == "video" for kind, _, _ in inputs)
    if len(args.transcript) != videos:
        raise SelfMMError(f"{videos} video input(s) but {len(args.transcript)} --transcript; "
                          "give one --transcript per video, in the order of the videos")
    predictor = Predictor(args.run, seed=args.seed, device=args.device, text_model=args.text_model,
                          audio_features=args.audio_features)
    transcripts = iter(args.transcript)
    scores: list[ClipScore] = []
    for kind, path, split in inputs:
        if kind == "video":
            scores += predictor.score_video(path, read_transcript(next(transcripts)))
        else:
            scores += predictor.score_features(path, split or args.split)
    if args.json:
        print(json.dumps([asdict(s) for s in scores], indent=2))
    else:
        print(f"run {predictor.run} ({predictor.cfg.dataset})", file=sys.stderr)
        print(scores_table(scores, predictor.band))
    return 0
