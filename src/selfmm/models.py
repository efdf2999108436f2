"""The one place a model is built or loaded: Self-MM from a configuration, a model of your own
(its protocol below), a trained run's model rebuilt from its folder, MMSA's self_mm weights.

A model of your own trains with the ULGM exactly as Self-MM does (docs/custom-model.md):

    class MyModel(torch.nn.Module):
        feature_dims = {"m": 64, "t": 32, "a": 16, "v": 16}  # widths of F_m, F_t, F_a, F_v
        def __init__(self, data: DataSpec, cfg: Config): ...
        def forward(self, batch: Batch) -> SelfMMOutput: ...
        # optional: parameter_groups(lr, weight_decay) -> Adam parameter groups

A run records the class as `module:QualName` (class_path) and is rebuilt from it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from .checks import Wrong
from .configuration import Config
from .data.types import DataSpec
from .encoder import load_encoder, load_tokenizer
from .errors import SelfMMError
from .model import SelfMM
from .runs import BEST_WEIGHTS, ENCODER
from .runtime import resolve_device
from .ulgm import MODALITIES

# Builds the model of a seed from what the data tells (called after seeding).
ModelBuilder = Callable[[DataSpec], torch.nn.Module]


def selfmm_builder(cfg: Config) -> ModelBuilder:
    """Self-MM (SPEC 3) with the configured pretrained encoder."""
    return lambda spec: SelfMM(load_encoder(cfg.model.text_model), spec.audio_dim, spec.vision_dim,
                               cfg.model)


def model_builder(cfg: Config, model_class: type[torch.nn.Module] | None = None) -> ModelBuilder:
    """Self-MM, or `model_class(spec, cfg)` for a model of your own."""
    if model_class is None:
        return selfmm_builder(cfg)
    return lambda spec: model_class(spec, cfg)


# ---------------------------------------------------------------------------------------------
# A model of your own: the protocol, and the import path a run records


def class_path(cls: type) -> str:
    """`module:QualName`, what a run records to rebuild its model."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: str, untrusted: Sequence[str | os.PathLike] = ()) -> type[torch.nn.Module]:
    """The model class a run recorded with `class_path`, imported by module name from what is
    installed: never from the current directory (sys.path's '' or its path) nor from the
    `untrusted` folders (the run's), so that a run folder that names a module it ships cannot
    make its reader run that code. ImportError when the class is not importable so (or is not
    a torch Module class), AttributeError when the module has no such name."""
    module, _, name = path.partition(":")
    obj: Any = _import_installed(module, [Path.cwd(), *map(Path, untrusted)])
    for part in name.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ImportError(f"{path} is not a torch.nn.Module class")
    return obj


def _import_installed(module: str, untrusted: list[Path]) -> Any:
    if module in sys.modules:  # imported already: importing it again runs nothing
        return sys.modules[module]
    banned = [folder.resolve() for folder in untrusted]

    def trusted(entry: str) -> bool:
        where = Path(entry or ".").resolve()
        return where != banned[0] and not any(where == b or b in where.parents for b in banned[1:])

    saved = list(sys.path)
    try:
        sys.path[:] = [entry for entry in saved if trusted(entry)]
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise ImportError(f"no installed module {module!r}")
        origin = Path(spec.origin).resolve() if spec.origin and spec.has_location else None
        if origin is not None and any(b in origin.parents for b in banned[1:]):
            raise ImportError(f"module {module!r} would come from the run's own folder ({origin})")
        return importlib.import_module(module)
    finally:
        sys.path[:] = saved


def model_class(value: Any) -> type[torch.nn.Module]:
    """A rule of selfmm.checks: a class of your own (see the protocol above)."""
    if not (isinstance(value, type) and issubclass(value, torch.nn.Module)):
        hint = " (the class itself, not an instance of it)" if isinstance(value, torch.nn.Module) else ""
        raise Wrong(f"a class of your own, a subclass of torch.nn.Module{hint}", kind=True)
    return value


def check_model(model: Any) -> None:
    """A model must be a torch Module with feature_dims for m, t, a and v."""
    name = class_path(type(model))
    if not isinstance(model, torch.nn.Module):
        raise SelfMMError(f"model {name} is not a torch.nn.Module")
    dims = getattr(model, "feature_dims", None)
    if not isinstance(dims, dict) or set(dims) != set(MODALITIES) or not all(
            isinstance(d, int) and d > 0 for d in dims.values()):
        raise SelfMMError(f"model {name}: feature_dims must map each of m, t, a, v to a positive "
                          f"width, got {dims!r}")


# ---------------------------------------------------------------------------------------------
# A trained run's model: its weights and encoder files in the seed folder, and back


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's state as a safetensors file."""
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def save_encoder_files(model: torch.nn.Module, name: str, directory: Path) -> None:
    """Self-MM's encoder config, and its tokenizer when it has one, so the run reloads offline."""
    if not isinstance(model, SelfMM):
        return
    model.text_encoder.config.save_pretrained(str(directory))
    try:
        load_tokenizer(name).save_pretrained(str(directory))
    except (SelfMMError, OSError, ValueError):
        # An encoder without a tokenizer (e.g. one built from a config in a test) can still be
        # trained and evaluated on feature files; only scoring raw transcripts needs one.
        pass


def _rebuild(seed_dir: Path, model_class: type[torch.nn.Module], spec: DataSpec, cfg: Config) -> torch.nn.Module:
    """The architecture a seed trained, without its weights: Self-MM's encoder from the
    config saved in the folder (no download), a model of your own from `model_class`."""
    if model_class is not SelfMM:
        return model_class(spec, cfg)
    from transformers import AutoConfig, AutoModel  # heavy; only to rebuild a model

    try:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(seed_dir / ENCODER)))
    except (OSError, ValueError) as exc:
        raise SelfMMError(f"{seed_dir / ENCODER}: cannot rebuild the text encoder: {exc}") from None
    return SelfMM(encoder, spec.audio_dim, spec.vision_dim, cfg.model)


def load_seed_model(seed_dir: Path, model_class: type[torch.nn.Module], spec: DataSpec, cfg: Config,
                    device: str | torch.device = "cpu") -> torch.nn.Module:
    """A seed folder's model with its best weights, on `device`, in eval mode."""
    net = _rebuild(seed_dir, model_class, spec, cfg)
    weights = seed_dir / BEST_WEIGHTS
    if not weights.exists():
        raise SelfMMError(f"{weights} does not exist: the run never finished an epoch")
    try:
        net.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise SelfMMError(f"{weights}: cannot load the weights: {str(exc).splitlines()[0]}") from None
    return net.to(resolve_device(device)).eval()


# ---------------------------------------------------------------------------------------------
# MMSA's self_mm weights (selfmm.interop.import_mmsa writes them into a run folder)

# MMSA's SELF_MM module path -> ours (selfmm.model); BertTextEncoder wraps the BertModel in
# `.model`, AuViSubNet names its linear layer `linear_1`.
_PREFIXES = (
    ("text_model.model.", "text_encoder."),
    ("audio_model.rnn.", "audio_net.rnn."),
    ("audio_model.linear_1.", "audio_net.linear."),
    ("video_model.rnn.", "vision_net.rnn."),
    ("video_model.linear_1.", "vision_net.linear."),
    ("post_fusion_layer_", "fusion_head.layer_"),
    ("post_text_layer_", "text_head.layer_"),
    ("post_audio_layer_", "audio_head.layer_"),
    ("post_video_layer_", "vision_head.layer_"),
)
# MMSA's AMIO wrapper holds the model as `self.Model`.
_WRAPPER = "Model."
# Config widths and the weight whose shape tells them: (key, dimension).
_WIDTHS = {
    "audio_hidden": ("audio_net.rnn.weight_hh_l0", 1),
    "vision_hidden": ("vision_net.rnn.weight_hh_l0", 1),
    "audio_out": ("audio_net.linear.weight", 0),
    "vision_out": ("vision_net.linear.weight", 0),
    "post_fusion_dim": ("fusion_head.layer_1.weight", 0),
    "post_text_dim": ("text_head.layer_1.weight", 0),
    "post_audio_dim": ("audio_head.layer_1.weight", 0),
    "post_vision_dim": ("vision_head.layer_1.weight", 0),
}


def rename_mmsa_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(our name -> tensor, our name -> MMSA name, MMSA names with no counterpart)."""
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        name = key[len(_WRAPPER):] if key.startswith(_WRAPPER) else key
        for theirs, ours in _PREFIXES:
            if name.startswith(theirs):
                target = ours + name[len(theirs):]
                renamed[target], origin[target] = tensor, key
                break
        else:
            unmapped.append(key)
    return renamed, origin, unmapped


def read_mmsa_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict saved with torch.save; weights_only, so a crafted file cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SelfMMError(f"{path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise SelfMMError(f"{path}: not a readable PyTorch state_dict: {exc}") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SelfMMError(f"{path}: expected a state_dict (a mapping of names to tensors), "
                          f"as MMSA saves with torch.save(model.state_dict())")
    return state


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def mmsa_to_selfmm(state: dict[str, torch.Tensor], cfg: Config, encoder: torch.nn.Module,
                   source: str = "weights") -> SelfMM:
    """Our SelfMM with MMSA's weights loaded. Every MMSA key must map to one of ours, every one of
    ours must be given, and every shape must match what `cfg` and the encoder build."""
    renamed, origin, unmapped = rename_mmsa_state_dict(state)
    if unmapped:
        raise SelfMMError(f"{source}: keys with no counterpart in selfmm's model: {', '.join(unmapped)}")
    anchors = ("audio_net.rnn.weight_ih_l0", "vision_net.rnn.weight_ih_l0")
    absent = [a for a in anchors if a not in renamed]
    if absent:
        raise SelfMMError(f"{source}: missing keys: "
                          + ", ".join(_WRAPPER + _to_mmsa(a) for a in absent))
    audio_dim, vision_dim = (int(renamed[a].shape[1]) for a in anchors)
    model = SelfMM(encoder, audio_dim, vision_dim, cfg.model)
    expected = model.state_dict()
    # BERT's position_ids are an arange buffer; older transformers saved it, newer ones do not.
    extra = [origin[k] for k in renamed if k not in expected and not k.endswith("position_ids")]
    missing = [_WRAPPER + _to_mmsa(k) for k in expected if k not in renamed]
    if extra or missing:
        raise SelfMMError(f"{source}: does not fit selfmm's model"
                          + (f"; missing keys: {', '.join(missing)}" if missing else "")
                          + (f"; unexpected keys: {', '.join(extra)}" if extra else ""))
    wrong = [f"{origin[k]} is {_shape(renamed[k])} in the file but {_shape(v)} here"
             for k, v in expected.items() if renamed[k].shape != v.shape]
    if wrong:
        hints = [f"{key}={renamed[name].shape[dim]}" for key, (name, dim) in _WIDTHS.items()
                 if renamed[name].shape[dim] != getattr(cfg.model, key)]
        width = renamed["text_encoder.embeddings.word_embeddings.weight"].shape[1] \
            if "text_encoder.embeddings.word_embeddings.weight" in renamed else None
        if width is not None and width != encoder.config.hidden_size:
            hints.append(f"a text model of width {width} (`text_model`; "
                         f"{cfg.model.text_model!r} has {encoder.config.hidden_size})")
        raise SelfMMError(f"{source}: shapes do not match the {cfg.dataset} configuration: "
                          + "; ".join(wrong)
                          + (f". The weights imply {', '.join(hints)} (set them in the configuration: "
                             "`overrides` or `file` of selfmm.config)"
                             if hints else ""))
    model.load_state_dict({k: v for k, v in renamed.items() if k in expected})
    return model


def _to_mmsa(ours: str) -> str:
    for theirs, mine in _PREFIXES:
        if ours.startswith(mine):
            return theirs + ours[len(mine):]
    return ours
