"""Shared fixtures: a tiny BERT encoder on disk and cached synthetic feature files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
# Data-file digests (selfmm.provenance) are remembered here, never in the user's home.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="selfmm-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU, skipped without one (benchmarks/gpu_check.sh runs "
                                       "them: pytest -m cuda)")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT of width 32 with bert-base-uncased's vocabulary and MiniLM's tokenizer,
    saved like a hub model, so `--text-model PATH` works offline and fast."""
    import torch
    from transformers import BertConfig, BertModel

    from selfmm.encoder import minilm_path

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, path / name)
    return path


@pytest.fixture(scope="session")
def synth_path(tmp_path_factory) -> Callable[..., Path]:
    """`synth_path(profile="mosi", scale=0.03, aligned=False, seed=0)`: a cached synthetic file."""
    from selfmm.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    made: dict[tuple, Path] = {}

    def make(profile: str = "mosi", scale: float = 0.03, aligned: bool = False, seed: int = 0) -> Path:
        key = (profile, scale, aligned, seed)
        if key not in made:
            path = root / f"{profile}-{scale}-{'al' if aligned else 'un'}-{seed}.pkl"
            write_synthetic(path, profile, scale=scale, seed=seed, aligned=aligned)
            made[key] = path
        return made[key]

    return make
