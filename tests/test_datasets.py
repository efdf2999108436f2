"""selfmm.datasets: one entry holds everything a dataset is, and a dataset registered in one
entry is one the whole package can synthesize, load, configure, train, evaluate, score and
reproduce against."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import selfmm
from selfmm import datasets
from selfmm.cli import main
from selfmm.datasets import MOS_METRICS, SIMS_METRICS, Dataset, Published, SyntheticProfile, register
from selfmm.errors import ConfigError

SOURCE = Path(__file__).resolve().parents[1] / "src" / "selfmm"


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test, whatever the test registers."""
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))


def toy(text_model: str = "bert-base-uncased", **changes) -> Dataset:
    """A small dataset on a [-2, 2] scale, with MOSI's metrics and a tiny synthetic profile."""
    fields = {
        "name": "toy", "title": "Toy", "label_range": (-2.0, 2.0), "metrics": MOS_METRICS,
        "text_model": text_model, "defaults": {"batch_size": 8, "post_fusion_dim": 16},
        "synthetic": SyntheticProfile((24, 8, 8), 12, 10, 8, 3, 4, annotators=3, score_max=2),
        "published": {"paper": Published("A made-up paper, Table 1", {"MAE": 0.9, "Corr": 0.5})},
    }
    return Dataset(**{**fields, **changes})


def test_the_four_datasets_and_their_facts():
    assert datasets.names() == ("mosi", "mosei", "sims", "simsv2")
    assert [datasets.get(n).label_range for n in datasets.names()] == [(-3.0, 3.0)] * 2 + [(-1.0, 1.0)] * 2
    assert [datasets.get(n).metrics for n in datasets.names()] == [MOS_METRICS] * 2 + [SIMS_METRICS] * 2
    assert datasets.get("simsv2").synthetic is None and "paper" not in datasets.get("simsv2").published
    assert selfmm.config("sims").labels.H == 1.0 and selfmm.config("sims").model.text_model == "bert-base-chinese"
    with pytest.raises(ConfigError, match="unknown dataset 'iemocap'; choose one of mosi, mosei, sims, simsv2"):
        datasets.get("iemocap")


def test_no_other_module_spells_a_dataset_s_facts():
    """MOSI's values are the configuration's dataclass defaults; every other dataset's name or
    text model is written in selfmm/datasets.py alone."""
    words = re.compile(r"[\"'](mosei|sims|simsv2|bert-base-chinese)[\"']")
    for path in SOURCE.rglob("*.py"):
        if path.name != "datasets.py":
            assert not words.search(path.read_text()), path


@pytest.mark.parametrize("change,message", [
    ({"name": "mosi"}, "registered already"),
    ({"name": "Toy"}, "lower-case identifier"),
    ({"name": "toy set"}, "lower-case identifier"),
    ({"label_range": (2.0, -2.0)}, "must run from low to high"),
    ({"metrics": ("MAE", "Corr")}, "MOS_METRICS or SIMS_METRICS"),
    ({"published": {"paper": Published("x", {"Mult_acc_3": 0.5})}}, "does not compute: Mult_acc_3"),
    ({"published": {"blog": Published("x", {"MAE": 0.5})}}, "source 'blog' is not one of paper, mmsa"),
])
def test_register_refuses_what_would_break_later(registry, change, message):
    with pytest.raises(ConfigError, match=message):
        register(toy(**change))
    assert "toy" not in datasets.names()


def test_replace_redefines(registry):
    register(toy())
    register(toy(title="Toy 2"), replace=True)
    assert datasets.get("toy").title == "Toy 2"


def test_a_dataset_registered_in_one_entry_runs_everywhere(registry, tiny_bert, tmp_path, capsys):
    register(toy(text_model=str(tiny_bert)))
    # The command line's choices: synth's profile, inspect's dataset.
    assert main(["synth", "--profile", "toy", "--scale", "1", "--out", str(tmp_path / "toy.pkl")]) == 0
    assert main(["inspect", str(tmp_path / "toy.pkl"), "--dataset", "toy"]) == 0
    data = selfmm.load_features(tmp_path / "toy.pkl", dataset="toy")
    assert len(data.splits["train"]) == 24 and (data.audio_dim, data.vision_dim, data.text_len) == (3, 4, 12)
    labels = data.splits["train"].labels
    assert labels.min() >= -2 and labels.max() <= 2 and abs(labels).max() > 1

    cfg = selfmm.config("toy", max_epochs=1)
    assert (cfg.dataset, cfg.model.text_model, cfg.optim.batch_size, cfg.model.post_fusion_dim) == (
        "toy", str(tiny_bert), 8, 16)
    run = selfmm.fit(cfg, data, tmp_path / "run", seeds=[5], device="cpu", progress=False)
    assert list(run.results["seeds"]["5"]) == list(MOS_METRICS)
    assert run.evaluate(data, device="cpu")[5] == pytest.approx(run.results["seeds"]["5"], nan_ok=True)
    assert selfmm.Predictor(tmp_path / "run", device="cpu").band == pytest.approx(0.2)

    result = selfmm.reproduce("toy", data, tmp_path / "reproduction", seeds=[5], max_epochs=1, device="cpu",
                              progress=False)
    assert result["dataset"] == "toy" and result["sources"]["paper"]["citation"] == "A made-up paper, Table 1"
    assert result["metrics"]["MAE"]["published"]["paper"]["value"] == 0.9
    assert "mmsa" not in result["sources"]
    page = (tmp_path / "reproduction" / "reproduction.md").read_text()
    assert page.startswith("# Self-MM reproduction: Toy")
    assert json.loads((tmp_path / "reproduction" / "reproduction.json").read_text())["dataset"] == "toy"
    # Trained identically: the reproduction's one seed is the fit's.
    assert result["metrics"]["MAE"]["mean"] == pytest.approx(run.results["seeds"]["5"]["MAE"])
