"""Seeds side by side (`fit(jobs=N)`, `--jobs N`): each seed's results equal a one-job run with
the same thread count; results.json and resume as with one job; a failing seed stops the rest.
Ctrl-C with jobs: tests/robustness/test_interrupt.py."""

from __future__ import annotations

import json
import multiprocessing
import time
import warnings

import pytest
import torch

import selfmm
from selfmm import jobs
from selfmm.errors import SelfMMError
from selfmm.runs import METRICS


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def data_and_config(synth_path, tiny_bert, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = selfmm.load_features(synth_path("mosi", scale=0.03), "mosi")
    return data, selfmm.config("mosi", **{"text_model": str(tiny_bert), "max_epochs": 2, "batch_size": 8,
                                          **overrides})


def test_threads_are_divided_among_the_jobs():
    assert [jobs.threads_per_job(n, 16) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


def test_seeds_side_by_side_equal_one_job_runs(synth_path, tiny_bert, tmp_path, one_thread):
    data, cfg = data_and_config(synth_path, tiny_bert)
    torch.set_num_threads(2)  # two jobs of one thread each
    side = selfmm.fit(cfg, data, tmp_path / "jobs", seeds=[1, 2, 3], device="cpu", progress=False, jobs=2)
    assert [side.seeds[seed].saved["torch_threads"] for seed in (1, 2, 3)] == [1, 1, 1]
    torch.set_num_threads(1)
    alone = selfmm.fit(cfg, data, tmp_path / "one", seeds=[1, 2, 3], device="cpu", progress=False)
    assert side.results["seeds"] == alone.results["seeds"]
    assert list(side.results["seeds"]) == ["1", "2", "3"]
    assert side.results["mean"] == alone.results["mean"]
    for seed in (1, 2, 3):
        assert side.seeds[seed].history == [{**h, "seconds": s["seconds"]} for h, s in
                                            zip(alone.seeds[seed].history, side.seeds[seed].history, strict=True)]
    # Resume reads the finished seeds back, with jobs as without.
    again = selfmm.fit(cfg, data, tmp_path / "jobs", seeds=[1, 2, 3], device="cpu", progress=False, resume=True,
                       jobs=2)
    assert again.results["seeds"] == side.results["seeds"]
    assert multiprocessing.active_children() == []


def test_a_failing_seed_stops_the_others_with_its_error(synth_path, tiny_bert, tmp_path):
    from jobs_models import FailsOnSeed2

    data, cfg = data_and_config(synth_path, tiny_bert, max_epochs=200)
    start = time.monotonic()
    with pytest.raises(SelfMMError, match="seed 2 fails on purpose"):
        selfmm.fit(cfg, data, tmp_path / "run", seeds=[1, 2], device="cpu", progress=False, jobs=2,
                   model=FailsOnSeed2)
    assert time.monotonic() - start < 120  # seed 1 alone would train 200 epochs
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "run" / "seed-1" / METRICS).exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_jobs_must_be_a_whole_number_of_at_least_one(value, synth_path, tiny_bert, tmp_path):
    data, cfg = data_and_config(synth_path, tiny_bert)
    with pytest.raises(SelfMMError, match=r"^`jobs`: expected an integer in \[1, 64\]"):
        selfmm.fit(cfg, data, tmp_path / "run", seeds=[1, 2], device="cpu", jobs=value)
    assert not (tmp_path / "run").exists()


def test_jobs_are_refused_under_torchrun(synth_path, tiny_bert, tmp_path, monkeypatch):
    data, cfg = data_and_config(synth_path, tiny_bert)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SelfMMError, match="without torchrun"):
        selfmm.fit(cfg, data, tmp_path / "run", seeds=[1, 2], device="cpu", jobs=2)


def test_cli_jobs(synth_path, tiny_bert, tmp_path, capsys):
    from selfmm.cli import main

    argv = ["train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.03)), "--text-model",
            str(tiny_bert), "--max-epochs", "1", "--seeds", "1", "2", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "bad"), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--jobs: expected an integer in [1, 64], got 0")
    assert main([*argv, "--out", str(tmp_path / "run"), "--jobs", "2"]) == 0
    assert "2 seed(s)" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "run" / "results.json").read_text())["seeds"]) == {"1", "2"}
