"""Typed configuration: one frozen dataclass per concern, per-dataset defaults in one table.

What the data tells (feature widths, number of clips) is read from the data, never written here.
Overrides come from a JSON file and then `key=value` strings; a key is a field name
(`lr_audio`) or a dotted path (`optim.lr_audio`). Unknown keys, wrong types and values out of
range are errors that list what is valid.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

DATASETS = ("mosi", "mosei", "sims", "simsv2")
# The paper's ablation: the multimodal task always, plus any unimodal subset.
TASKS = ("M", "MT", "MA", "MV", "MTA", "MTV", "MAV", "MTAV")
LABEL_RANGE = {"mosi": (-3.0, 3.0), "mosei": (-3.0, 3.0), "sims": (-1.0, 1.0), "simsv2": (-1.0, 1.0)}
DEFAULT_TEXT_MODEL = {
    "mosi": "bert-base-uncased",
    "mosei": "bert-base-uncased",
    "sims": "bert-base-chinese",
    "simsv2": "bert-base-chinese",
}
DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)


@dataclass(frozen=True)
class ModelConfig:
    """SPEC 3. Widths of the inputs come from the data; `text_out` from the encoder's config."""

    text_model: str = "bert-base-uncased"
    freeze_encoder: bool = False
    audio_hidden: int = 16
    vision_hidden: int = 32
    audio_out: int = 16
    video_out: int = 32
    post_fusion_dim: int = 128
    post_text_dim: int = 32
    post_audio_dim: int = 16
    post_video_dim: int = 32
    post_fusion_dropout: float = 0.0
    post_text_dropout: float = 0.1
    post_audio_dropout: float = 0.1
    post_video_dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """SPEC 5: Adam with five parameter groups; the encoder's biases and LayerNorms undecayed."""

    batch_size: int = 16
    lr_text: float = 5e-5
    lr_audio: float = 5e-3
    lr_video: float = 5e-3
    lr_other: float = 1e-3
    weight_decay_text: float = 1e-3
    weight_decay_audio: float = 1e-3
    weight_decay_video: float = 1e-3
    weight_decay_other: float = 1e-3
    # One optimizer step per this many batches (MMSA's `update_epochs`); the epoch's last
    # partial window is stepped too.
    accumulation_steps: int = 4


@dataclass(frozen=True)
class LabelConfig:
    """SPEC 4: the unimodal label generator."""

    H: float = 3.0
    exclude_zero: bool = True
    centres: str = "incremental"


@dataclass(frozen=True)
class TrainConfig:
    tasks: str = "MTAV"
    early_stop: int = 8
    max_epochs: int = 0  # 0: no limit, early stopping alone ends training (as MMSA)
    num_workers: int = 0


@dataclass(frozen=True)
class Config:
    dataset: str = "mosi"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# MMSA's published self_mm settings (SPEC 3), as overrides of the dataclass defaults above,
# which are MOSI's. The only place per-dataset numbers live.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mosi": {},
    "mosei": {
        "batch_size": 32, "lr_video": 1e-4,
        "weight_decay_audio": 0.0, "weight_decay_video": 0.0, "weight_decay_other": 1e-2,
        "post_fusion_dropout": 0.1, "post_text_dropout": 0.0, "post_audio_dropout": 0.0,
    },
    "sims": {
        "batch_size": 32, "weight_decay_audio": 1e-2, "weight_decay_video": 1e-2,
        "vision_hidden": 64, "post_text_dim": 64, "H": 1.0,
    },
    "simsv2": {
        "lr_audio": 1e-3, "lr_video": 1e-3,
        "weight_decay_text": 1e-2, "weight_decay_audio": 0.0, "weight_decay_video": 0.0,
        "vision_hidden": 64, "post_text_dim": 64, "post_audio_dim": 32,
        "post_text_dropout": 0.0,
    },
}

# MMSA's tuning space for self_mm (SPEC 3): what `selfmm tune` searches.
TUNING_SPACE: dict[str, tuple[Any, ...]] = {
    "batch_size": (16, 32),
    "lr_audio": (1e-4, 1e-3, 5e-3),
    "lr_video": (1e-4, 1e-3, 5e-3),
    "lr_other": (1e-4, 1e-3),
    "weight_decay_text": (1e-3, 1e-2),
    "weight_decay_audio": (0.0, 1e-3, 1e-2),
    "weight_decay_video": (0.0, 1e-3, 1e-2),
    "weight_decay_other": (1e-3, 1e-2),
    "audio_hidden": (16, 32),
    "vision_hidden": (32, 64),
    "post_fusion_dim": (64, 128),
    "post_text_dim": (32, 64),
    "post_audio_dim": (16, 32),
    "post_video_dim": (16, 32),
    "post_fusion_dropout": (0.0, 0.1),
    "post_text_dropout": (0.0, 0.1),
    "post_audio_dropout": (0.0, 0.1),
    "post_video_dropout": (0.0, 0.1),
}

_SECTIONS = ("model", "optim", "labels", "train")


def _check(key: str, value: Any) -> str | None:
    """Return what the valid range is when `value` is outside it, else None."""
    if key == "dataset":
        return None if value in DATASETS else f"one of {', '.join(DATASETS)}"
    if key == "tasks":
        return None if value in TASKS else f"one of {', '.join(TASKS)}"
    if key == "centres":
        return None if value in ("incremental", "full") else "'incremental' or 'full'"
    if key.startswith("lr_") or key == "H":
        return None if value > 0 else "> 0"
    if key.startswith("weight_decay_"):
        return None if value >= 0 else ">= 0"
    if key.endswith("_dropout"):
        return None if 0 <= value < 1 else "in [0, 1)"
    if key in ("max_epochs", "num_workers"):
        return None if value >= 0 else ">= 0"
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        return ">= 1"
    if key == "text_model" and not value:
        return "a non-empty hub name or path"
    return None


def _field_index() -> dict[str, tuple[str | None, type]]:
    """Flat key -> (section or None for top level, type)."""
    index: dict[str, tuple[str | None, type]] = {"dataset": (None, str)}
    for section in _SECTIONS:
        cls = typing.get_type_hints(Config)[section]
        for name, tp in typing.get_type_hints(cls).items():
            index[name] = (section, tp)
    return index


FIELDS = _field_index()


def valid_keys() -> list[str]:
    return sorted(FIELDS)


def _coerce(key: str, raw: Any, tp: type) -> Any:
    """Turn a string (from `--set`) or a JSON value into the field's type, strictly."""
    where = f"config key {key!r}"
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


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """Return `cfg` with `values` (flat or dotted keys) applied, every key and value checked."""
    per_section: dict[str | None, dict[str, Any]] = {}
    for key, raw in values.items():
        name = key.split(".", 1)[1] if "." in key else key
        if name not in FIELDS or ("." in key and key.split(".", 1)[0] != FIELDS[name][0]):
            raise ConfigError(
                f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}"
            )
        section, tp = FIELDS[name]
        value = _coerce(key, raw, tp)
        problem = _check(name, value)
        if problem:
            raise ConfigError(f"config key {key!r}: {value!r} is out of range; must be {problem}")
        per_section.setdefault(section, {})[name] = value
    top = per_section.pop(None, {})
    changes = {s: replace(getattr(cfg, s), **v) for s, v in per_section.items()}
    return replace(cfg, **top, **changes)


def defaults_for(dataset: str) -> Config:
    """The published configuration for `dataset` (SPEC 3)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    base = Config(dataset=dataset, model=ModelConfig(text_model=DEFAULT_TEXT_MODEL[dataset]))
    return with_values(base, DATASET_DEFAULTS[dataset])


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`["lr_audio=1e-3", ...]` -> `{"lr_audio": "1e-3"}`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """Nested `Config.to_dict()` form (or an already flat dict) -> flat keys."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def read_config_file(path: str | Path, dataset: str | None = None) -> dict[str, Any]:
    """Flat key -> value from a JSON config file written by `selfmm tune` or by hand, or from
    MMSA's config_regression.json (its self_mm section for `dataset`, see selfmm.interop)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path}: not readable JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"config file {path}: expected a JSON object at the top level")
    from .interop import is_mmsa_config, translate_mmsa_config

    if is_mmsa_config(obj):
        return translate_mmsa_config(obj, dataset, source=str(path))
    return flatten(obj)


def from_dict(obj: dict[str, Any]) -> Config:
    """Rebuild a saved configuration (the `to_dict` form), checking every value."""
    flat = flatten(obj)
    dataset = flat.pop("dataset", "mosi")
    return with_values(defaults_for(str(dataset)), flat)


def resolve(dataset: str, config_file: str | None = None, assignments: list[str] = ()) -> Config:
    """Dataset defaults, then the config file, then `--set` assignments."""
    cfg = defaults_for(dataset)
    if config_file:
        values = read_config_file(config_file, dataset=dataset)
        values.pop("dataset", None)
        cfg = with_values(cfg, values)
    return with_values(cfg, parse_assignments(list(assignments)))


def section_of(name: str) -> str | None:
    return FIELDS[name][0]


def get(cfg: Config, name: str) -> Any:
    section = section_of(name)
    return getattr(cfg if section is None else getattr(cfg, section), name)


__all__ = [
    "Config", "ModelConfig", "OptimConfig", "LabelConfig", "TrainConfig", "DATASETS", "TASKS",
    "LABEL_RANGE", "DATASET_DEFAULTS", "TUNING_SPACE", "DEFAULT_SEEDS", "defaults_for", "resolve",
    "with_values", "from_dict", "parse_assignments", "valid_keys",
]
