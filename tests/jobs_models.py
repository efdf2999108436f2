"""A model for tests/test_jobs.py, importable by name from a job's fresh process."""

from __future__ import annotations

import torch

from selfmm.encoder import load_encoder
from selfmm.errors import SelfMMError
from selfmm.model import SelfMM


class FailsOnSeed2(SelfMM):
    """Self-MM, except that building it under seed 2 fails (the model is built after seeding)."""

    def __init__(self, spec, cfg):
        if torch.initial_seed() == 2:
            raise SelfMMError("seed 2 fails on purpose")
        super().__init__(load_encoder(cfg.model.text_model), spec.audio_dim, spec.vision_dim, cfg.model)
