"""MMSA interoperability: its config file, its trained self_mm weights, its results CSV.

- `config_regression.json`: the self_mm section (commonParams, then datasetParams[dataset])
  becomes our flat config keys; `read_config_file` reads ours and MMSA's alike.
- A `.pth` state_dict saved by MMSA's SELF_MM (keys `Model.text_model.model.*`,
  `Model.audio_model.rnn.*`, `Model.post_fusion_layer_1.*`, ...) becomes a run directory that
  `selfmm evaluate` reloads (the weights become our model in selfmm.models).
- Results over seeds in MMSA's CSV layout: one row per model, one column per metric, each cell
  the text of a `(mean, std)` tuple of x100 values rounded to 2 decimals.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

from .checks import checked, instance, path
from .configuration import Config, coerce, flatten, read_json_object, to_bool
from .configuration import seed as seed_rule
from .encoder import load_encoder
from .errors import ConfigError, SelfMMError, warn
from .io import atomic_writer, write_bytes
from .model import SelfMM
from .models import class_path, mmsa_to_selfmm, read_mmsa_weights, save_encoder_files, weights_bytes
from .results import PerSeed, summarize
from .rundir import RunDirectory
from .runs import BEST_WEIGHTS, ENCODER, write_seed_config

MMSA_MODEL = "self_mm"

# MMSA's self_mm setting -> our config key, same meaning and unit.
_RENAMED = {
    "batch_size": "batch_size",
    "learning_rate_bert": "lr_text",
    "learning_rate_audio": "lr_audio",
    "learning_rate_video": "lr_vision",
    "learning_rate_other": "lr_other",
    "weight_decay_bert": "weight_decay_text",
    "weight_decay_audio": "weight_decay_audio",
    "weight_decay_video": "weight_decay_vision",
    "weight_decay_other": "weight_decay_other",
    "a_lstm_hidden_size": "audio_hidden",
    "v_lstm_hidden_size": "vision_hidden",
    "audio_out": "audio_out",
    "video_out": "vision_out",
    "post_fusion_dim": "post_fusion_dim",
    "post_text_dim": "post_text_dim",
    "post_audio_dim": "post_audio_dim",
    "post_video_dim": "post_vision_dim",
    "post_fusion_dropout": "post_fusion_dropout",
    "post_text_dropout": "post_text_dropout",
    "post_audio_dropout": "post_audio_dropout",
    "post_video_dropout": "post_vision_dropout",
    "H": "H",
    "excludeZero": "exclude_zero",
    "update_epochs": "accumulation_steps",
    "early_stop": "early_stop",
    "pretrained": "text_model",
}
# Settings that would change the model or its inputs and that selfmm fixes (SPEC 3): a file
# may state them only at that value, so a config we cannot honour is refused, not half-used.
_FIXED: dict[str, Any] = {
    "a_lstm_layers": 1,
    "v_lstm_layers": 1,
    "a_lstm_dropout": 0.0,
    "v_lstm_dropout": 0.0,
    "use_bert": True,
    "need_model_aligned": False,
    "need_normalized": False,
}
# Settings with no counterpart that do not change what is trained: alignment and widths are
# read from the data file, `text_out` from the encoder, the architecture from `pretrained`;
# MMSA's text encoder never reads t_bert_dropout; save_labels only writes a file.
_IGNORED = {"need_data_aligned", "save_labels", "text_out", "t_bert_dropout", "transformers"}


def is_mmsa_config(obj: dict[str, Any]) -> bool:
    """Whether a parsed JSON config is MMSA's config_regression.json rather than ours."""
    return "datasetCommonParams" in obj or (
        isinstance(obj.get(MMSA_MODEL), dict) and "datasetParams" in obj[MMSA_MODEL]
    )


def read_config_file(path: str | Path, dataset: str | None = None) -> dict[str, Any]:
    """Flat key -> value from a JSON config file: ours (written by `selfmm tune` or by hand,
    flat or nested) or MMSA's config_regression.json (its self_mm section for `dataset`)."""
    obj = read_json_object(path)
    if is_mmsa_config(obj):
        return translate_mmsa_config(obj, dataset, source=str(path))
    return flatten(obj)


def _section(obj: dict[str, Any], key: str, name: str, source: str) -> dict[str, Any]:
    """A section of MMSA's file that must be an object (absent: empty)."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: MMSA section {name} must be an object of settings, "
                          f"got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _leaf_names(obj: Any) -> set[str]:
    """Setting names anywhere below a datasetCommonParams entry (flat, or aligned/unaligned)."""
    if not isinstance(obj, dict):
        return set()
    names: set[str] = set()
    for key, value in obj.items():
        names |= _leaf_names(value) if isinstance(value, dict) else {key}
    return names


def translate_mmsa_config(obj: dict[str, Any], dataset: str | None, source: str = "config") -> dict[str, Any]:
    """Our flat config keys from MMSA's config_regression.json, for `dataset`.

    As MMSA does, the dataset's settings override the common ones. Settings that only describe
    the data file are ignored and listed in one warning; unknown settings are errors.
    """
    section = obj.get(MMSA_MODEL)
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: an MMSA config without a {MMSA_MODEL!r} section "
                          f"(it has: {', '.join(sorted(obj))})")
    if dataset is None:
        raise ConfigError(f"{source}: an MMSA config holds one section per dataset; name the dataset")
    per_dataset = _section(section, "datasetParams", f"{MMSA_MODEL}.datasetParams", source)
    if dataset not in per_dataset:
        raise ConfigError(f"{source}: MMSA's {MMSA_MODEL} section has no datasetParams for "
                          f"{dataset!r} (it has: {', '.join(sorted(per_dataset)) or 'none'})")
    merged = {**_section(section, "commonParams", f"{MMSA_MODEL}.commonParams", source),
              **_section(per_dataset, dataset, f"{MMSA_MODEL}.datasetParams.{dataset}", source)}
    values: dict[str, Any] = {}
    common = _section(obj, "datasetCommonParams", "datasetCommonParams", source)
    ignored = _leaf_names(common.get(dataset))
    unknown = []
    for key, value in merged.items():
        if key in _RENAMED:
            values[_RENAMED[key]] = value
        elif key == "use_finetune":
            values["freeze_encoder"] = not to_bool(f"MMSA setting {key}", value)
        elif key in _FIXED:
            # Read as strictly as our own settings: "no" is false, "1" is 1.
            if coerce(f"MMSA setting {key}", value, type(_FIXED[key])) != _FIXED[key]:
                raise ConfigError(f"{source}: MMSA setting {key}={value!r} is not supported; "
                                  f"selfmm fixes it at {_FIXED[key]!r} (SPEC 3)")
        elif key in _IGNORED:
            ignored.add(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{source}: unknown MMSA {MMSA_MODEL} settings: {', '.join(sorted(unknown))}")
    if ignored:
        warn(f"{source}: ignoring MMSA settings that the data file and the encoder "
             f"determine: {', '.join(sorted(ignored))}")
    return values


# ---------------------------------------------------------------------------------------------
# Weights


@checked(weights=path, cfg=instance(Config, "a selfmm.Config (from selfmm.config)"), out=path, seed=seed_rule)
def import_mmsa(weights: Path, cfg: Config, out: Path, seed: int = 0) -> Path:
    """Write a run directory from MMSA's self_mm weights: config.json, encoder/,
    best.safetensors. No metrics.json: nothing was trained or tested here."""
    run_dir = RunDirectory(out)
    run_dir.check()
    state = read_mmsa_weights(weights)
    encoder = load_encoder(cfg.model.text_model)
    model = mmsa_to_selfmm(state, cfg, encoder, source=str(weights))
    with run_dir as path:
        save_encoder_files(model, cfg.model.text_model, path / ENCODER)
        write_bytes(path / BEST_WEIGHTS, weights_bytes(model))
        write_seed_config(
            path, config=cfg.to_dict(), seed=seed, model_class=class_path(SelfMM),
            data={"path": None, "audio_dim": model.audio_net.rnn.input_size,
                  "vision_dim": model.vision_net.rnn.input_size},
            imported_from={"format": "MMSA self_mm state_dict", "path": str(weights.resolve()),
                           "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()})
    return out


# ---------------------------------------------------------------------------------------------
# Results


def mmsa_results_row(model_name: str, per_seed: PerSeed) -> tuple[list[str], list[str]]:
    """MMSA's header and row: `Model`, then per metric the text of (mean, std), x100, 2 decimals."""
    summary = summarize(per_seed)
    names = list(summary["mean"])
    # MMSA writes a Python tuple through pandas: str((83.44, 0.52)) -> "(83.44, 0.52)".
    cells = [str((round(summary["mean"][k] * 100, 2), round(summary["std"][k] * 100, 2)))
             for k in names]
    return ["Model", *names], [model_name, *cells]


def write_mmsa_results(out: str | Path, model_name: str, per_seed: PerSeed, *, replace: bool = False) -> None:
    """Append one model's row to the MMSA results CSV `out` (created if absent), as MMSA's run
    does. `replace`: a file that is not such a CSV is replaced instead of refused."""
    path = Path(out)
    header, row = mmsa_results_row(model_name, per_seed)
    rows: list[list[str]] = []
    if path.exists():
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                existing = list(csv.reader(handle))
        except (UnicodeDecodeError, csv.Error) as exc:
            if not replace:
                raise SelfMMError(f"{path} is not a CSV file ({exc}); choose another `out` "
                                  "or pass `replace=True` to replace it") from None
            existing = []
        if existing and existing[0] != header and replace:
            existing = []
        if existing and existing[0] != header:
            raise SelfMMError(f"{path} has columns {', '.join(existing[0])}, not "
                              f"{', '.join(header)}: choose another `out` for this dataset")
        rows = existing[1:]
    with atomic_writer(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerows([header, *rows, row])
