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
from ..extract.clip import RECOGNISED, check_lengths, extract_clip, flag_string, write_clip
from ..extract.dataset import extract_dataset as extract_all
from ..extract.overlay import draw_overlay
from ..extract.speech import SpeechSettings, speech_settings
from ..predict import ClipScore, Predictor, parse_input, scores_table
from .common import read_transcript


def _speech(args: argparse.Namespace) -> SpeechSettings:
    """The speech recognition settings the options name (the model is found and checked)."""
    return speech_settings(args.asr_model, args.language, args.asr_threads)


def _needs_speech(args: argparse.Namespace, needed: bool) -> SpeechSettings | None:
    if needed:
        return _speech(args)
    if args.asr_model is not None or args.language is not None:
        print("note: --asr-model and --language apply only where words are recognised (no "
              "transcript, --transcribe, --aligned); ignored", file=sys.stderr)
    return None


def recognised_line(name: str, speech: dict) -> str:
    """One line telling what speech recognition heard in a clip."""
    if not speech.get("model"):
        return ""
    words = " ".join(w[0] for w in speech.get("words", []))
    said = "no speech" if speech.get("no_speech") else f'"{words}"'
    unsure = (", unsure (mean word probability "
              f"{speech.get('word_probability', 0):.2f}; another language?)") if speech.get("unsure") else ""
    return f"{name}: recognised by {speech['model']}: {said}{unsure}"


def extract(args: argparse.Namespace) -> int:
    check_lengths(args.text_len, args.audio_len, args.vision_len)
    video = Path(args.video)
    out = Path(args.out) if args.out else video.with_suffix(".pkl")
    if args.overlay and args.visual_features == "haar":
        raise SelfMMError("--overlay draws face landmarks, which the haar visual set has none of; "
                          "use --visual-features mesh or mesh-raw")
    transcript = read_transcript(args.transcript) if args.transcript is not None else None
    speech = _needs_speech(args, transcript is None or args.aligned)
    clip = extract_clip(video, transcript, load_tokenizer(args.text_model),
                        text_len=args.text_len, audio_len=args.audio_len, vision_len=args.vision_len,
                        audio_features=args.audio_features, speech=speech, aligned=args.aligned,
                        visual_features=args.visual_features)
    write_clip(out, clip, clip_id=f"{video.stem}$_$0")
    flags = flag_string(clip.flags)
    steps = (f"aligned, {clip.audio_length} tokens: audio x {clip.audio.shape[1]}, vision x {clip.vision.shape[1]}"
             if clip.aligned else
             f"audio ({clip.audio_features}) {clip.audio_length} frames x {clip.audio.shape[1]}, "
             f"vision ({clip.visual_features}) {clip.vision_length} frames x {clip.vision.shape[1]}")
    print(f"{out}: {steps}" + (f", flags: {flags}" if flags else ""))
    if clip.speech["text_source"] == RECOGNISED:
        print(recognised_line(str(video), clip.speech))
    if args.overlay:
        # The words with their times, when speech recognition ran: the text's own words as
        # aligned (a given transcript), else the recognised ones.
        words = [(w[0], w[1], w[2]) for w in clip.speech.get("aligned") or clip.speech.get("words", [])]
        written = draw_overlay(video, clip.faces, args.overlay, words=words)
        print(f"{args.overlay}: {written} frames with landmarks, head pose"
              + (" and the recognised words" if words else ""))
    return 0


def extract_dataset(args: argparse.Namespace) -> int:
    check_lengths(args.text_len, args.audio_len, args.vision_len)
    check_workers(args.workers)
    # The model is resolved (and checked) only if some row needs it; extract_all decides.
    speech = _needs_speech(args, args.transcribe is not None or args.aligned)
    report = extract_all(args.video_dir, args.labels, args.out, tokenizer_name=args.text_model,
                         workers=args.workers, text_len=args.text_len, audio_len=args.audio_len,
                         vision_len=args.vision_len, progress=not args.no_progress, strict=args.strict,
                         audio_features=args.audio_features, transcribe=args.transcribe,
                         aligned=args.aligned, speech=speech, visual_features=args.visual_features)
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    flags = ", ".join(f"{name} {n}" for name, n in report.flag_counts.items() if n)
    recognised = report.text_sources.get(RECOGNISED, 0)
    print(f"{report.out}: {counts} (extracted {report.extracted}, reused {report.reused})"
          + (f"; text recognised in {recognised}" if recognised else "")
          + (f"; flagged clips: {flags}" if flags else ""))
    if report.failures:
        print(f"warning: {len(report.failures)} clip(s) left out:", file=sys.stderr)
        for clip_id, message in report.failures:
            print(f"  {clip_id}: {message}", file=sys.stderr)
    return 0


def predict(args: argparse.Namespace) -> int:
    inputs = [parse_input(value) for value in args.inputs]
    videos = sum(kind == "video" for kind, _, _ in inputs)
    if args.transcript and len(args.transcript) != videos:
        raise SelfMMError(f"{videos} video input(s) but {len(args.transcript)} --transcript; "
                          "give one --transcript per video, in the order of the videos (an empty "
                          "one to recognise that video's words), or none to recognise them all")
    # An empty --transcript stands for a video whose words are to be recognised.
    given = [read_transcript(t) if t.strip() else None for t in args.transcript] or [None] * videos
    predictor = Predictor(args.run, seed=args.seed, device=args.device, text_model=args.text_model,
                          audio_features=args.audio_features, visual_features=args.visual_features)
    if videos and (None in given or predictor.aligned):
        predictor.speech = _speech(args)  # found and checked before the first video
    transcripts = iter(given)
    scores: list[ClipScore] = []
    for kind, path, split in inputs:
        if kind == "video":
            scores += predictor.score_video(path, next(transcripts))
        else:
            scores += predictor.score_features(path, split or args.split)
    if args.json:
        print(json.dumps([asdict(s) for s in scores], indent=2))
    else:
        print(f"run {predictor.run} ({predictor.cfg.dataset})", file=sys.stderr)
        print(scores_table(scores, predictor.band))
        for score in scores:
            if score.split == "video" and score.speech.get("text_source") == RECOGNISED:
                print(recognised_line(score.input, score.speech), file=sys.stderr)
    return 0
