"""What several commands share: reading the data and the configuration from their flags."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..api import config
from ..configuration import Config, check_seeds, parse_assignments
from ..data.mmsa import load_features
from ..data.types import FeatureData
from ..encoder import load_encoder_config
from ..errors import SelfMMError
from ..io import BROKEN, LOOP, check_file, not_a_file
from ..precision import check_precision
from ..rundir import RunDirectory
from ..runtime import resolve_device


def config_from_args(args: argparse.Namespace) -> Config:
    """Dataset defaults, then --config, then --set, then the flags that name a setting."""
    overrides: dict[str, object] = dict(parse_assignments(args.set))
    flags = {"text_model": args.text_model, "tasks": args.tasks, "max_epochs": args.max_epochs,
             "deterministic": args.deterministic, "precision": args.precision}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.freeze_encoder:
        overrides["freeze_encoder"] = True
    return config(args.dataset, args.config, **overrides)


def data_from_args(args: argparse.Namespace, dataset: str | None) -> FeatureData:
    return load_features(args.data, dataset, text_file=args.text_file, audio_file=args.audio_file,
                         vision_file=args.vision_file)


def training_inputs(args: argparse.Namespace, out: RunDirectory | None = None) -> tuple[Config, FeatureData]:
    """The configuration and the data of a training command, cheapest checks first: settings
    (the precision on this device among them), the output directory, that the data files
    exist, that the text model loads; then the data."""
    cfg = config_from_args(args)
    check_precision(cfg.train.precision, resolve_device(args.device))
    if getattr(args, "seeds", None) is not None:
        check_seeds(args.seeds)
    if out is not None:
        out.check()
    for path in (args.data, args.text_file, args.audio_file, args.vision_file):
        if path is not None and not Path(path).is_dir():  # a folder is a cache
            check_file(path, "data file", "feature file")
    load_encoder_config(cfg.model.text_model)
    return cfg, data_from_args(args, cfg.dataset)


# A text file's suffix, or one word with a path separator, names a file; said words do not.
_FILE_NAME = re.compile(r"^(\S*[/\\]\S*|.*\.(txt|text|srt|vtt|sbv|csv|tsv|json|md|rtf|docx?))$", re.IGNORECASE)


def read_transcript(value: str) -> str:
    """`value` itself, or the content of the file it names. A value that looks like a file name
    but names no file is refused rather than taken for the words said; so is an empty one."""
    said = ("give the words said in the clip, or the path of a UTF-8 text file that holds them")
    if not value.strip():
        raise SelfMMError(f"--transcript is empty: {said} (or leave --transcript out: the words "
                          "are then recognised)")
    path = Path(value)
    try:
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            if not text:
                raise SelfMMError(f"--transcript {value}: the file is empty; {said}")
            return text
    except OSError:  # a long sentence is not a valid path on every system
        pass
    except UnicodeDecodeError:
        raise SelfMMError(f"{path}: the transcript file is not UTF-8 text") from None
    why = not_a_file(path)
    if why in (LOOP, BROKEN) or (why or "").startswith("is a "):  # a folder, a FIFO, a device...
        raise SelfMMError(f"--transcript {value}: {why.removeprefix('is ')}, not a text file")
    if _FILE_NAME.match(value.strip()):
        raise SelfMMError(f"--transcript {value}: no such file (a transcript given as text is the "
                          "words said, not a file name)")
    return value.strip()
