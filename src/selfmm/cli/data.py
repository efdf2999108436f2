"""`selfmm synth`, `inspect` and `cache`."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ..data.cache import MANIFEST, default_out, write_cache
from ..data.mmsa import load_features
from ..data.summary import summarize
from ..data.synth import write_synthetic
from ..errors import SelfMMError
from ..io import check_file
from ..runs import read_json


def synth(args: argparse.Namespace) -> int:
    out = Path(args.out)
    write_synthetic(out, args.profile, scale=args.scale, seed=args.seed, aligned=args.aligned)
    print(f"wrote {out} ({args.profile} profile, scale {args.scale}, seed {args.seed}, "
          f"{'aligned' if args.aligned else 'unaligned'})")
    return 0


def inspect(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # repairs are listed in the summary itself
        data = load_features(args.file, args.dataset)
    print(summarize(data))
    return 0


def cache(args: argparse.Namespace) -> int:
    if Path(args.file).is_dir():
        raise SelfMMError(f"{args.file} is a folder: a cache already, or not a feature file")
    check_file(args.file, "feature file", "feature file")
    out = Path(args.out) if args.out else default_out(args.file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the repairs are reported below
        out = write_cache(load_features(args.file, args.dataset), out, force=args.force)
    size = sum(f.stat().st_size for f in out.iterdir())
    for line in read_json(out / MANIFEST)["repairs"]:
        print(f"repaired {line}")
    print(f"wrote {out} ({size / 1e6:.1f} MB); pass it as --data to train or evaluate")
    return 0
