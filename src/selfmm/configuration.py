"""Typed configuration: one frozen dataclass per concern; each dataset's published defaults
come from its entry in selfmm.datasets.

What the data tells (feature widths, number of clips) is read from the data, never written here.
Each field carries its validity rule beside it (`setting(default, rule)`). Overrides are flat
keys (`lr_audio`) or dotted paths (`optim.lr_audio`); unknown keys, wrong types and values out
of range are errors that say what is valid.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import datasets
from .checks import Wrong
from .errors import ConfigError
from .io import check_file

# The paper's ablation: the multimodal task always, plus any unimodal subset.
TASKS = ("M", "MT", "MA", "MV", "MTA", "MTV", "MAV", "MTAV")
PRECISIONS = ("fp32", "bf16")  # see selfmm.precision
DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)
# Seeds must fit every generator they seed unchanged (numpy's legacy seed takes 32 bits) and
# name a folder (seed-N): non-negative, below 2^32.
SEED_LIMIT = 2**32
# Worker processes of any kind (data loading, extraction, serving): more than this is never
# faster here, and a mistyped 100000 forks until the kernel kills the process.
MAX_WORKERS = 64
# Widths of the model's layers: the published ones are at most 128; an LSTM of width 4096
# already holds 270 MB of weights, and a mistyped 10^9 would fail allocating terabytes.
MAX_WIDTH = 4096
# A configuration file is a few kilobytes and a few levels deep (MMSA's: four).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 16

# --- validity rules: value -> None when valid, else what a valid value is ----------------------

Rule = Callable[[Any], "str | None"]


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else f"one of {', '.join(choices)}"


def known_dataset(v: Any) -> str | None:
    """A dataset of selfmm.datasets, read when checked: one registered later counts."""
    known = datasets.names()
    return None if v in known else f"one of {', '.join(known)}"


def at_least(low: int | float) -> Rule:
    return lambda v: None if v >= low else f">= {low}"


def positive(v: float) -> str | None:
    return None if v > 0 else "> 0"


def probability(v: float) -> str | None:
    return None if 0 <= v < 1 else "in [0, 1)"


def between(low: int, high: int) -> Rule:
    return lambda v: None if low <= v <= high else f"in [{low}, {high}]"


def non_empty(v: str) -> str | None:
    return None if v else "a non-empty hub name or path"


def setting(default: Any, rule: Rule | None = None) -> Any:
    """A dataclass field with its validity rule beside it."""
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class ModelConfig:
    """SPEC 3. Widths of the inputs come from the data; `text_out` from the encoder's config."""

    text_model: str = setting("bert-base-uncased", non_empty)
    freeze_encoder: bool = setting(False)
    audio_hidden: int = setting(16, between(1, MAX_WIDTH))
    vision_hidden: int = setting(32, between(1, MAX_WIDTH))
    audio_out: int = setting(16, between(1, MAX_WIDTH))
    vision_out: int = setting(32, between(1, MAX_WIDTH))
    post_fusion_dim: int = setting(128, between(1, MAX_WIDTH))
    post_text_dim: int = setting(32, between(1, MAX_WIDTH))
    post_audio_dim: int = setting(16, between(1, MAX_WIDTH))
    post_vision_dim: int = setting(32, between(1, MAX_WIDTH))
    post_fusion_dropout: float = setting(0.0, probability)
    post_text_dropout: float = setting(0.1, probability)
    post_audio_dropout: float = setting(0.1, probability)
    post_vision_dropout: float = setting(0.0, probability)


@dataclass(frozen=True)
class OptimConfig:
    """SPEC 5: Adam with five parameter groups; the encoder's biases and LayerNorms undecayed."""

    batch_size: int = setting(16, at_least(1))
    lr_text: float = setting(5e-5, positive)
    lr_audio: float = setting(5e-3, positive)
    lr_vision: float = setting(5e-3, positive)
    lr_other: float = setting(1e-3, positive)
    weight_decay_text: float = setting(1e-3, at_least(0))
    weight_decay_audio: float = setting(1e-3, at_least(0))
    weight_decay_vision: float = setting(1e-3, at_least(0))
    weight_decay_other: float = setting(1e-3, at_least(0))
    # One optimizer step per this many batches (MMSA's `update_epochs`); the epoch's last
    # partial window is stepped too.
    accumulation_steps: int = setting(4, at_least(1))


@dataclass(frozen=True)
class LabelConfig:
    """SPEC 4: the unimodal label generator."""

    H: float = setting(3.0, positive)
    exclude_zero: bool = setting(True)
    centres: str = setting("incremental", one_of("incremental", "full"))


@dataclass(frozen=True)
class TrainConfig:
    tasks: str = setting("MTAV", one_of(*TASKS))
    early_stop: int = setting(8, at_least(1))
    max_epochs: int = setting(0, at_least(0))  # 0: no limit, early stopping alone ends training (as MMSA)
    num_workers: int = setting(0, between(0, MAX_WORKERS))
    # On CUDA, deterministic kernels (cuBLAS workspace, cuDNN, PyTorch's deterministic
    # algorithms), so that reruns and resumed runs are bit-identical there too; the CPU path
    # always is. Off trades that for speed (benchmarks/gpu.py measures the cost).
    deterministic: bool = setting(True)
    # bf16 autocast for the text encoder's matrix products alone (selfmm.precision: the LSTMs,
    # heads, loss, ULGM and metrics stay float32), on CUDA and on CPUs with native bf16. fp32
    # everywhere by default until bf16 is shown to train as well on each (benchmarks/README.md).
    precision: str = setting("fp32", one_of(*PRECISIONS))


@dataclass(frozen=True)
class Config:
    dataset: str = setting("mosi", known_dataset)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# MMSA's tuning space for self_mm (SPEC 3): what `selfmm tune` searches.
TUNING_SPACE: dict[str, tuple[Any, ...]] = {
    "batch_size": (16, 32),
    "lr_audio": (1e-4, 1e-3, 5e-3),
    "lr_vision": (1e-4, 1e-3, 5e-3),
    "lr_other": (1e-4, 1e-3),
    "weight_decay_text": (1e-3, 1e-2),
    "weight_decay_audio": (0.0, 1e-3, 1e-2),
    "weight_decay_vision": (0.0, 1e-3, 1e-2),
    "weight_decay_other": (1e-3, 1e-2),
    "audio_hidden": (16, 32),
    "vision_hidden": (32, 64),
    "post_fusion_dim": (64, 128),
    "post_text_dim": (32, 64),
    "post_audio_dim": (16, 32),
    "post_vision_dim": (16, 32),
    "post_fusion_dropout": (0.0, 0.1),
    "post_text_dropout": (0.0, 0.1),
    "post_audio_dropout": (0.0, 0.1),
    "post_vision_dropout": (0.0, 0.1),
}

SECTIONS = ("model", "optim", "labels", "train")


@dataclass(frozen=True)
class _Field:
    section: str | None  # None: a top-level field of Config
    type: type
    rule: Rule | None


def _field_index() -> dict[str, _Field]:
    """Flat key -> where it lives, its type and its rule."""
    index: dict[str, _Field] = {}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            section_hints = typing.get_type_hints(hints[f.name])
            for g in dataclasses.fields(hints[f.name]):
                index[g.name] = _Field(f.name, section_hints[g.name], g.metadata.get("rule"))
        else:
            index[f.name] = _Field(None, hints[f.name], f.metadata.get("rule"))
    return index


FIELDS = _field_index()


def valid_keys() -> list[str]:
    return sorted(FIELDS)


def coerce(where: str, raw: Any, tp: type) -> Any:
    """Turn a string (from `--set`) or a JSON value into `tp` (bool, int, float, str), strictly;
    `where` names the setting in the error."""
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        try:
            return int(str(raw))
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if tp is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    return raw


def to_bool(where: str, raw: Any) -> bool:
    return coerce(where, raw, bool)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """Return `cfg` with `values` (flat or dotted keys) applied, every key and value checked."""
    per_section: dict[str | None, dict[str, Any]] = {}
    for key, raw in values.items():
        section, _, name = key.rpartition(".")
        spec = FIELDS.get(name)
        if spec is None or (section and section != spec.section):
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
        value = coerce(f"config key {key!r}", raw, spec.type)
        problem = spec.rule(value) if spec.rule else None
        if problem:
            raise ConfigError(f"config key {key!r}: {value!r} is out of range; must be {problem}")
        per_section.setdefault(spec.section, {})[name] = value
    top = per_section.pop(None, {})
    changes = {s: replace(getattr(cfg, s), **v) for s, v in per_section.items()}
    return replace(cfg, **top, **changes)


def defaults_for(dataset: str) -> Config:
    """The published configuration for `dataset` (SPEC 3): its entry's text model and defaults
    over the dataclass defaults (MOSI's)."""
    entry = datasets.get(dataset)
    base = Config(dataset=dataset, model=ModelConfig(text_model=entry.text_model))
    return with_values(base, dict(entry.defaults))


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`["lr_audio=1e-3", ...]` -> `{"lr_audio": "1e-3"}`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`assignments` expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """Nested `Config.to_dict()` form (or an already flat dict) -> flat keys."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config section {key!r}: expected an object of settings, got {value!r}")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, level + 1) for v in item]
    return deepest


def read_json_object(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A JSON file whose top level is an object, or a ConfigError naming the file. Only a
    regular file of at most MAX_CONFIG_BYTES, nested at most MAX_CONFIG_DEPTH deep."""
    path = Path(path)
    try:
        check_file(path, what, error=ConfigError)
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                              "not a configuration file")
        obj = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path}: not readable JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {path}: expected a JSON object at the top level")
    if _depth(obj) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"{what} {path}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    return obj


def check_workers(value: int | None, what: str = "`workers`") -> None:
    """A count of worker processes (None: the command's default)."""
    if value is not None and not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{what} must be in [1, {MAX_WORKERS}], got {value}")


def check_seeds(seeds: list[int] | tuple[int, ...], what: str = "`seeds`") -> None:
    """Each seed once, each an integer in [0, 2^32)."""
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise ConfigError(f"{what}: {seed!r} is not an integer in [0, 2^32)")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise ConfigError(f"{what}: {', '.join(map(str, repeated))} given more than once; give each seed once")


# Rules of selfmm.checks for the library's parameters that name these.
dataset_name = datasets.dataset_name
SEEDS = "a non-empty list of seeds, integers in [0, 2^32), each once"


def seed(value: Any) -> int:
    """A rule: one seed."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Wrong("an integer in [0, 2^32)", kind=True)
    if not 0 <= value < SEED_LIMIT:
        raise Wrong("an integer in [0, 2^32)")
    return value


def seed_list(value: Any) -> list[int]:
    """A rule: the seeds of a run (check_seeds names the one that is wrong)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise Wrong(SEEDS, kind=True)
    if not value:
        raise Wrong(SEEDS)
    check_seeds(value)
    return list(value)


def from_dict(obj: dict[str, Any]) -> Config:
    """Rebuild a saved configuration (the `to_dict` form), checking every value."""
    flat = flatten(obj)
    dataset = flat.pop("dataset", "mosi")
    return with_values(defaults_for(str(dataset)), flat)


def resolve(dataset: str, values: dict[str, Any] | None = None,
            assignments: list[str] = ()) -> Config:
    """Dataset defaults, then `values` (flat keys, e.g. from a config file), then `key=value`
    assignments. A config file's own `dataset` key never overrides the dataset asked for."""
    cfg = defaults_for(dataset)
    values = {k: v for k, v in (values or {}).items() if k != "dataset"}
    return with_values(with_values(cfg, values), parse_assignments(list(assignments)))


def get(cfg: Config, name: str) -> Any:
    section = FIELDS[name].section
    return getattr(cfg if section is None else getattr(cfg, section), name)
