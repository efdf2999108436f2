"""Where each command writes, and what it may replace there: one policy every writing command
goes through before its handler runs (docs/cli.md lists it command by command).

- A file output that exists is refused unless `--force`, or unless it is the command's own
  earlier output that the command is documented to append to or refresh; a folder is never
  taken for a file.
- A folder output may be new or empty; a non-empty folder must hold only what this command
  writes (its own earlier output), and continuing that may need a flag (`--resume`, `--force`).
  A folder that holds anything else is refused, whatever the flags.
- An output never replaces one of the command's inputs, and its names must fit the file system.

- `--force` replaces only a regular file, never a FIFO, a device node or a socket.
- One command per output: the command holds the output's lock (selfmm.rundir.OutputLock) while
  it runs, so a second command on the same output is refused while the first writes it; the
  holder removes the temporary files that a killed writer of the output left.

A command opts in with `output=Output(...)` where the parser declares it; the parser then adds
`--force` where the policy allows replacing. Commands that write nothing are listed in
READ_ONLY, so that a new command has to choose one or the other (tests/robustness/test_outputs.py).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import enum
import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..configuration import TASKS
from ..data.cache import MANIFEST, default_out
from ..data.layout import SPLITS
from ..errors import SelfMMError
from ..extract.overlay import is_video_path
from ..io import BROKEN, LOOP, MISSING, not_a_file
from ..rundir import LOCK, OutputLock, remove_temporaries

# Commands that write no file of their own (they print, or serve).
READ_ONLY = ("evaluate", "inspect", "predict", "serve")
# What an atomic writer adds to a name for its temporary file (or folder): "." + name +
# ".XXXXXXXX.tmp"; the lock beside an output adds less ("." + name + LOCK).
_TEMPORARY_EXTRA = 14
# Names our writers may leave behind in any folder: the locks and an interrupted write.
_ALWAYS = (LOCK, f".*{LOCK}", ".*.tmp", ".selfmm.probe")
# An atomic writer's temporary file, of any name (selfmm.io).
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


class Reuse(enum.Enum):
    """What a command may do with an earlier output of its own that it finds."""

    FREE = "free"  # append to it, continue it or refresh it: no flag needed
    RESUME = "resume"  # continue it with --resume
    FORCE = "force"  # replace it with --force
    NEVER = "never"  # never: choose another path


# (path, parsed arguments) -> how the command may reuse what is at `path`, or None when it is
# not this command's own output.
Own = Callable[[Path, argparse.Namespace], "Reuse | None"]


@dataclass(frozen=True)
class Output:
    """One path a command writes, named by the argument `flag` (or `default` when it is absent)."""

    flag: str
    folder: bool
    what: str  # in messages: "run directory", "feature file", ...
    own: Own | None = None
    default: Callable[[argparse.Namespace], str | None] | None = None
    force: bool = True  # --force may replace an existing file that is not the command's own
    inputs: tuple[str, ...] = ()  # arguments naming input paths the output must never replace
    # Paths beside the output that the command also writes: (suffix appended to the output's
    # path, its own Output rules).
    companions: tuple[tuple[str, Output], ...] = field(default_factory=tuple)
    policy: str = ""  # one line for docs/cli.md and --help: the documented reuse target


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not any(fnmatch.fnmatch(p.name, pat) for pat in _ALWAYS)]


def _only(folder: Path, files: Sequence[str] = (), folders: Sequence[str] = ()) -> bool:
    """Whether every entry of `folder` matches one of the file or folder name patterns."""
    for entry in _entries(folder):
        patterns = folders if entry.is_dir() and not entry.is_symlink() else files
        if not any(fnmatch.fnmatch(entry.name, pat) for pat in patterns):
            return False
    return True


# --- what each command writes --------------------------------------------------------------

RUN_FILES = ("results.json", "results.csv", "reproduction.md", "reproduction.json", "report.html")
RUN_FOLDERS = ("seed-*", "labels")


def run_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    """A run directory of `train`, `reproduce` (and `labels`/`report` output inside it)."""
    return Reuse.RESUME if _only(path, RUN_FILES, RUN_FOLDERS) else None


def ablation_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    return Reuse.RESUME if _only(path, ("ablation.json", "ablation.csv", "report.html"), TASKS) else None


def tuning_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    # Rerunning `tune` with the same --out continues the search: no flag.
    files = ("tune.json", "study.db", "study.db-journal", "best_config.json", "best_trial.json")
    return Reuse.FREE if (path / "tune.json").is_file() and _only(path, files, ("trial-*",)) else None


def imported_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    # An import is not resumable: any earlier one is kept.
    return Reuse.NEVER if _only(path, ("config.json", "best.safetensors"), ("encoder",)) else None


def cache_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    files = (MANIFEST, *(f"{split}.*.npy" for split in SPLITS), *(f"{split}.strings.json" for split in SPLITS))
    if not _only(path, files):
        return None
    # A cache may be memory-mapped by a running job: rewriting a complete one takes --force;
    # one without its manifest was interrupted and is simply rewritten.
    return Reuse.FORCE if (path / MANIFEST).exists() else Reuse.FREE


def labels_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    """`labels` draws again into a folder of its own earlier plots (one subfolder per seed)."""
    files = ("*.png", "summary.txt")
    if not _only(path, files, ("seed-*",)):
        return None
    subfolders = [p for p in _entries(path) if p.is_dir()]
    return Reuse.FREE if all(_only(p, files) for p in subfolders) else None


def default_report(path: Path, args: argparse.Namespace) -> Reuse | None:
    """RUN/report.html, the default, is the report's own place and is refreshed."""
    return Reuse.FREE if _same_file(path, Path(args.run) / "report.html") else None


def mmsa_results(path: Path, args: argparse.Namespace) -> Reuse | None:
    """An MMSA results CSV (first column `Model`) is appended to; the library checks its columns."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return Reuse.FREE if header and header[0] == "Model" else None


def overlay_frames(path: Path, args: argparse.Namespace) -> Reuse | None:
    """A folder of `extract --overlay` frames, drawn again with --force."""
    return Reuse.FORCE if _only(path, ("frame-*.png",)) else None


def overlay_output(value: str) -> Output:
    """`extract --overlay`'s output: a video file when the path has a video suffix, else a folder."""
    if is_video_path(value):
        return Output("overlay", folder=False, what="overlay video", inputs=("video", "out"))
    return Output("overlay", folder=True, what="overlay frame folder", own=overlay_frames,
                  inputs=("video", "out"))


def extraction_report(path: Path, args: argparse.Namespace) -> Reuse | None:
    """OUT.json of an earlier `extract-dataset`, rewritten with OUT."""
    try:
        return Reuse.FREE if "feature_version" in json.loads(path.read_text(encoding="utf-8")) else None
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return None


def parts_folder(path: Path, args: argparse.Namespace) -> Reuse | None:
    """OUT.parts/ holds finished clips: what a rerun after an interruption reuses."""
    return Reuse.FREE if _only(path, ("*.npz",)) else None


# --- the check -----------------------------------------------------------------------------


def _name_max(path: Path) -> int:
    """The longest name the file system of `path`'s nearest existing folder allows."""
    for ancestor in (path, *path.parents):
        if ancestor.is_dir():
            try:
                return os.pathconf(ancestor, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def _check_names(path: Path, label: str, folder: bool) -> None:
    limit = _name_max(path.parent)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise SelfMMError(f"{label} {path}: the name {part[:40]}... is {len(os.fsencode(part))} bytes, "
                              f"longer than the file system allows ({limit})")
    if len(os.fsencode(path.name)) + _TEMPORARY_EXTRA > limit:
        raise SelfMMError(f"{label} {path}: the name is too long for the file system ({len(os.fsencode(path.name))} "
                          f"bytes; at most {limit - _TEMPORARY_EXTRA} for a {'folder' if folder else 'file'} "
                          "selfmm writes)")
    for ancestor in path.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise SelfMMError(f"{label} {path}: {ancestor} is a file, not a folder")
            break


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return False


def _check(spec: Output, path: Path, label: str, args: argparse.Namespace) -> None:
    _check_names(path, label, spec.folder)
    for name in spec.inputs:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and _same_file(path, Path(value)):
                raise SelfMMError(f"{label} {path} is also an input ({name.replace('_', '-')}); "
                                  "choose another output path")
    if not (path.exists() or path.is_symlink()):
        return
    force = bool(getattr(args, "force", False))
    if not spec.folder:
        if path.is_dir():
            raise SelfMMError(f"{label} {path} is a folder; name a file")
        why = not_a_file(path)
        # A link that leads nowhere is itself what a write replaces.
        if why not in (None, MISSING, LOOP, BROKEN):
            raise SelfMMError(f"{label} {path} {why}; selfmm replaces only regular files, --force or not")
        if (spec.own and spec.own(path, args) is Reuse.FREE) or force:
            return
        raise SelfMMError(f"{label} {path} exists; pass --force to replace it")
    if not path.is_dir():
        raise SelfMMError(f"{label} {path} exists and is not a directory")
    try:
        if not _entries(path):
            return
    except OSError as exc:
        raise SelfMMError(f"{label} {path}: cannot list the folder: {exc.strerror or exc}") from None
    reuse = spec.own(path, args) if spec.own else None
    if reuse is None:
        foreign = sorted(p.name for p in _entries(path))
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SelfMMError(f"{label} {path} holds files that are not part of {_a('selfmm ' + spec.what)} "
                          f"({listed}); choose a new or empty folder")
    if reuse is Reuse.FREE:
        return
    held = f"{label} {path} already holds {_a(spec.what)}"
    if reuse is Reuse.RESUME and not getattr(args, "resume", False):
        raise SelfMMError(f"{held}; pass --resume to continue it or choose another folder")
    if reuse is Reuse.FORCE and not force:
        raise SelfMMError(f"{held}; pass --force to rewrite it")
    if reuse is Reuse.NEVER:
        raise SelfMMError(f"{held}; choose another folder")


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def output_path(spec: Output, args: argparse.Namespace) -> Path | None:
    value = getattr(args, spec.flag, None)
    if value is None and spec.default is not None:
        value = spec.default(args)
    return Path(value) if value is not None else None


def check_output(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """Refuse, as one line, an output that would replace or mix with what the user did not ask
    to replace; nothing has been read or written yet. Returns the claim on the output that the
    command holds while it runs (`with check_output(args): ...`): entering it takes the
    output's lock, checks again under it, and clears what a killed writer left."""
    spec: Output | None = getattr(args, "output", None)
    path = output_path(spec, args) if spec is not None else None
    if spec is None or path is None:
        return contextlib.nullcontext()
    flag = getattr(args, spec.flag, None)
    label = f"--{spec.flag.replace('_', '-')}" if flag is not None else "output"
    _check_all(spec, path, label, args)
    return _claim(spec, path, label, args)


def _check_all(spec: Output, path: Path, label: str, args: argparse.Namespace) -> None:
    _check(spec, path, label, args)
    for suffix, companion in spec.companions:
        _check(companion, Path(f"{path}{suffix}"), f"{label} companion", args)
    overlay = getattr(args, "overlay", None)  # `extract --overlay`, a second output
    if overlay is not None:
        _check(overlay_output(overlay), Path(overlay), "--overlay", args)


@contextlib.contextmanager
def _claim(spec: Output, path: Path, label: str, args: argparse.Namespace) -> Iterator[None]:
    if int(os.environ.get("RANK", "0") or 0):
        # Under torchrun every process runs the command, and only rank 0 writes (selfmm.distributed).
        yield
        return
    with OutputLock(path, f"{label} {path}"):
        # Another command may have written the output between the first check and the lock.
        _check_all(spec, path, label, args)
        for each, folder in [(path, spec.folder), *((Path(f"{path}{suffix}"), c.folder)
                                                    for suffix, c in spec.companions)]:
            remove_temporaries(each)
            if folder and each.is_dir():
                for tmp in each.rglob(".*.tmp"):
                    if _TEMPORARY.fullmatch(tmp.name) and not tmp.is_dir():
                        tmp.unlink(missing_ok=True)
        yield


# --- the outputs of the commands, declared where the parser builds them ----------------------

RUN = Output("out", folder=True, what="run", own=run_folder, force=False,
             policy="its own run, continued with --resume")
OUTPUTS: dict[str, Output] = {
    "train": RUN,
    "reproduce": RUN,
    "ablate": Output("out", folder=True, what="run", own=ablation_folder, force=False,
                     policy="its own ablation, continued with --resume"),
    "tune": Output("out", folder=True, what="tuning run", own=tuning_folder, force=False,
                   policy="its own tuning directory, whose search a rerun continues"),
    "import-mmsa": Output("out", folder=True, what="run", own=imported_folder, force=False,
                          inputs=("weights",), policy="none: the folder must be new or empty"),
    "synth": Output("out", folder=False, what="feature file", policy="none"),
    "cache": Output("out", folder=True, what="cache", own=cache_folder, inputs=("file",),
                    default=lambda a: str(default_out(a.file)),
                    policy="its own cache, rewritten with --force; an interrupted one without "
                           "manifest.json is rewritten"),
    "labels": Output("out", folder=True, what="u-label plot folder", own=labels_folder, force=False,
                     default=lambda a: str(Path(a.run) / "labels"),
                     policy="its own earlier plots, drawn again"),
    "report": Output("out", folder=False, what="report", own=default_report, inputs=("data",),
                     default=lambda a: str(Path(a.run) / "report.html"),
                     policy="RUN/report.html, the default, is refreshed"),
    "export-mmsa": Output("out", folder=False, what="MMSA results CSV", own=mmsa_results,
                          policy="an MMSA results CSV (first column Model) is appended to; "
                                 "--force replaces any other file"),
    "extract": Output("out", folder=False, what="feature file", inputs=("video", "transcript"),
                      default=lambda a: str(Path(a.video).with_suffix(".pkl")), policy="none"),
    "extract-dataset": Output(
        "out", folder=False, what="feature file", inputs=("labels", "video_dir"),
        companions=((".json", Output("out", folder=False, what="extraction report", own=extraction_report)),
                    (".parts", Output("out", folder=True, what="folder of extracted parts", own=parts_folder))),
        policy="OUT.parts/, whose finished clips a rerun reuses"),
}
