"""`selfmm tune`: Optuna over TUNING_SPACE, validation loss only, pruning, a study that continues."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

import selfmm
from selfmm.cli import main
from selfmm.configuration import TUNING_SPACE, defaults_for, with_values
from selfmm.data.mmsa import load_features
from selfmm.models import selfmm_builder
from selfmm.train import fit_seed


@pytest.fixture(scope="module")
def arguments(tiny_bert, synth_path, tmp_path_factory) -> list[str]:
    """`selfmm tune` on a tiny encoder, one epoch per trial; --out last."""
    return ["tune", "--dataset", "mosi", "--data", str(synth_path(aligned=True)),
            "--text-model", str(tiny_bert), "--max-epochs", "1", "--device", "cpu",
            "--sampler-seed", "0", "--out", str(tmp_path_factory.mktemp("tune") / "run")]


@pytest.fixture(scope="module")
def tuning(arguments):
    """A search of two trials; each test that changes it works on a copy."""
    base, out = arguments, Path(arguments[-1])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(base + ["--trials", "2"]) == 0
    return base, out, printed.getvalue()


def load(out, name="selfmm-mosi"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_tune_scores_trials_by_validation_loss_and_writes_the_best_config(tuning):
    base, out, printed = tuning
    study = load(out)
    assert len(study.trials) == 2
    best = study.best_trial
    assert f"best trial {best.number}: valid loss {best.value:.4f}" in printed
    for trial in study.trials:
        trial_dir = out / f"trial-{trial.number}"
        history = json.loads((trial_dir / "history.json").read_text())
        # The objective is the best validation loss, not anything from the test split.
        assert trial.value == pytest.approx(min(h["valid_loss"] for h in history))
        assert trial.intermediate_values == {1: pytest.approx(history[0]["valid_loss"])}
    cfg = selfmm.config("mosi", out / "best_config.json")
    for key in TUNING_SPACE:
        section = next(s for s in ("model", "optim") if hasattr(getattr(cfg, s), key))
        assert getattr(getattr(cfg, section), key) == best.params[key], key
    assert cfg.train.max_epochs == 1 and cfg.model.text_model.endswith("tiny-bert0")


def test_tune_rerun_continues_the_same_study(tuning, tmp_path):
    base, original, _ = tuning
    out = tmp_path / "run"
    shutil.copytree(original, out)
    assert main(base[:-1] + [str(out), "--trials", "1"]) == 0
    study = load(out)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert (out / "trial-2" / "metrics.json").exists()


def test_tune_refuses_another_base_config_for_the_same_study(tuning, capsys):
    base, _, _ = tuning
    assert main(base + ["--trials", "1", "--set", "H=2"]) == 2
    assert "another setup: labels.H 3.0 (now 2.0)" in capsys.readouterr().err


def test_tune_prunes_a_trial_worse_than_the_shared_study(arguments, tmp_path):
    """A study shared through a storage URL already holds a finished trial from elsewhere with
    validation loss 0 at epoch 1; our trial cannot beat it and is pruned after epoch 1."""
    base = arguments
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name="shared", storage=storage, direction="minimize")
    params = {k: v[0] for k, v in TUNING_SPACE.items()}
    study.add_trial(create_trial(
        params=params, distributions={k: CategoricalDistribution(list(v)) for k, v in TUNING_SPACE.items()},
        value=0.0, intermediate_values={1: 0.0}))
    out = tmp_path / "here"
    args = base[:-1] + [str(out), "--storage", storage, "--study-name", "shared", "--trials", "1",
                        "--prune-after", "1", "--prune-warmup", "0", "--max-epochs", "2"]
    assert main(args) == 0
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert list(trials[1].intermediate_values) == [1]
    assert not (out / "trial-1" / "metrics.json").exists()
    assert json.loads((out / "best_trial.json").read_text())["number"] == 0


def test_on_epoch_exception_stops_fit_seed(tiny_bert, synth_path, tmp_path):
    data = load_features(synth_path(aligned=True), "mosi")
    cfg = with_values(defaults_for("mosi"), {"text_model": str(tiny_bert), "max_epochs": 3})
    seen = []

    def stop(epoch, loss):
        seen.append((epoch, loss))
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        fit_seed(cfg, data, tmp_path / "seed", 1, torch.device("cpu"), selfmm_builder(cfg),
                 on_epoch=stop, log=lambda s: None)
    assert len(seen) == 1 and seen[0][0] == 1
    assert not (tmp_path / "seed" / "metrics.json").exists()


def test_tune_refuses_a_directory_of_another_kind(arguments, tmp_path, capsys):
    base = arguments
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text("{}")
    assert main(base[:-1] + [str(tmp_path / "other"), "--trials", "1"]) == 2
    assert "not part of a selfmm tuning run (results.json)" in capsys.readouterr().err
