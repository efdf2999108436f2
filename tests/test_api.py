"""The library's verbs: the README's example as written, `fit` equal to `selfmm train`, a model of
your own with the ULGM (trained, resumed, evaluated, reloaded), and every run's provenance."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import selfmm
from selfmm.cli import main
from selfmm.data.synth import write_synthetic

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def data_file(synth_path) -> Path:
    return synth_path("mosi", scale=0.03)


@pytest.fixture(scope="module")
def data(data_file):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic file's -inf frames are repaired
        return selfmm.load_features(data_file, dataset="mosi")


@pytest.fixture(scope="module")
def trained(tiny_bert, data, tmp_path_factory):
    """The README's example, on a tiny encoder: two seeds, two epochs."""
    out = tmp_path_factory.mktemp("api") / "nb"
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=2, lr_audio=1e-3)
    run = selfmm.fit(cfg, data, out, seeds=[1111, 1112], device="cpu", progress=False)
    return cfg, out, run


def test_the_readme_example_runs_as_written(trained, data):
    cfg, out, run = trained
    assert cfg.optim.lr_audio == 1e-3 and cfg.train.max_epochs == 2
    assert set(run.results) >= {"seeds", "mean", "std"}
    maes = [run.results["seeds"][s]["MAE"] for s in ("1111", "1112")]
    assert run.results["mean"]["MAE"] == pytest.approx(np.mean(maes))

    r = selfmm.load_run(out)
    labels = r.seeds[1111].ulabels
    n = len(data.splits["train"])
    assert labels["ids"].shape == (n,) and labels["m"].shape == (n,)
    assert all(labels[s].shape == (3, n) for s in "tav")  # initialisation + 2 epochs
    np.testing.assert_array_equal(labels["t"][0], labels["m"])

    evaluated = r.evaluate(data, split="test")
    assert evaluated == {seed: run.results["seeds"][str(seed)] for seed in (1111, 1112)}
    rows = r.predict(data, split="test")
    assert [row["id"] for row in rows] == list(data.splits["test"].ids)
    assert set(rows[0]) == {"id", "label", "pred_m", "pred_t", "pred_a", "pred_v"}
    best = min(r.seeds.values(), key=lambda s: s.metrics["best_valid_loss"])
    recorded = (best.path / "test_predictions.csv").read_text().splitlines()[1].split(",")
    assert float(recorded[2]) == pytest.approx(rows[0]["pred_m"], abs=1e-5)


def test_evaluate_in_python_equals_the_command(trained, data_file, capsys):
    _, out, run = trained
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--data", str(data_file), "--json", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    from_cli = json.loads(printed[printed.index("{"):])
    assert {int(k): v for k, v in from_cli.items()} == selfmm.load_run(out).evaluate(
        selfmm.load_features(data_file, "mosi"), device="cpu")


def test_fit_is_bit_identical_to_selfmm_train(trained, tiny_bert, data, data_file, tmp_path):
    cfg, out, _ = trained
    cli_out = tmp_path / "cli"
    assert main(["train", "--dataset", "mosi", "--data", str(data_file), "--out", str(cli_out),
                 "--text-model", str(tiny_bert), "--max-epochs", "2", "--set", "lr_audio=1e-3",
                 "--seeds", "1111", "1112", "--device", "cpu"]) == 0
    a, b = (json.loads((p / "results.json").read_text()) for p in (out, cli_out))
    assert a["config"] == b["config"]
    assert (a["seeds"], a["mean"], a["std"]) == (b["seeds"], b["mean"], b["std"])
    for seed in ("seed-1111", "seed-1112"):
        la, lb = (np.load(p / seed / "ulabels.npz") for p in (out, cli_out))
        for s in "tav":
            np.testing.assert_array_equal(la[s], lb[s])
    assert a["provenance"]["invocation"].startswith("selfmm.fit(")
    assert b["provenance"]["invocation"].startswith("selfmm train --dataset mosi")


def test_config_checks_keys_like_set(tiny_bert):
    with pytest.raises(selfmm.SelfMMError, match="unknown config key 'lr_video'"):
        selfmm.config("mosi", lr_video=1e-3)
    with pytest.raises(selfmm.SelfMMError, match="out of range"):
        selfmm.config("mosi", batch_size=0)
    assert selfmm.config("sims", batch_size="8").optim.batch_size == 8


def test_provenance_is_recorded(trained, data_file):
    _, out, _ = trained
    results = json.loads((out / "results.json").read_text())["provenance"]
    seed = json.loads((out / "seed-1111" / "config.json").read_text())["provenance"]
    assert results == seed
    for key in ("selfmm", "python", "torch", "transformers", "numpy", "device", "invocation"):
        assert results[key], key
    assert results["selfmm"] == selfmm.__version__ and results["device"].startswith("cpu")
    digest = hashlib.sha256(Path(data_file).read_bytes()).hexdigest()
    assert results["data"]["file"] == {"path": str(Path(data_file).resolve()),
                                       "bytes": Path(data_file).stat().st_size, "sha256": digest}
    # From a checkout, the commit it ran from.
    if (Path(selfmm.__file__).parents[2] / ".git").exists():
        assert len(results["git"]["commit"]) == 40


def test_evaluate_warns_when_data_or_versions_changed(trained, data, data_file, tmp_path, capsys):
    _, out, _ = trained
    seed_dir = tmp_path / "seed-1111"
    shutil.copytree(out / "seed-1111", seed_dir, ignore=shutil.ignore_patterns("*.pt"))
    saved = json.loads((seed_dir / "config.json").read_text())
    saved["provenance"]["torch"] = "1.0.0"
    (seed_dir / "config.json").write_text(json.dumps(saved))
    other = tmp_path / "other.pkl"
    write_synthetic(other, "mosi", scale=0.03, seed=5)
    assert main(["evaluate", "--run", str(seed_dir), "--data", str(other), "--device", "cpu"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line and "sha256" in line]
    assert len(warned) == 1
    assert "other.pkl is not the file the run used" in warned[0] and "torch " in warned[0]
    assert "the run's 1.0.0" in warned[0]
    # The same data and versions: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selfmm.load_run(out / "seed-1111").evaluate(data, device="cpu")


def test_a_file_digest_is_computed_once(tmp_path, monkeypatch):
    from selfmm import provenance

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    first = provenance.file_digest(path)
    monkeypatch.setattr(provenance.hashlib, "sha256", None)  # a second hash would fail
    assert provenance.file_digest(path) == first
    path.write_bytes(b"abd" * 1000)  # same size; the modification time moves
    monkeypatch.undo()
    assert provenance.file_digest(path)["sha256"] == hashlib.sha256(b"abd" * 1000).hexdigest()


# --- a model of your own --------------------------------------------------------------------


@pytest.fixture(scope="module")
def custom(data, tmp_path_factory):
    sys.path.insert(0, str(EXAMPLES))
    try:
        from custom_model import TransformerFusion
    finally:
        sys.path.remove(str(EXAMPLES))
    cfg = selfmm.config("mosi", max_epochs=3, lr_other=3e-3)
    out = tmp_path_factory.mktemp("custom") / "run"
    run = selfmm.fit(cfg, data, out, seeds=[7], device="cpu", progress=False, model=TransformerFusion)
    return cfg, out, run, TransformerFusion


def test_own_model_trains_with_the_ulgm(custom, data):
    _, out, run, model_class = custom
    saved = json.loads((out / "seed-7" / "config.json").read_text())
    assert saved["model_class"] == "custom_model:TransformerFusion"
    labels = run.seeds[7].ulabels
    assert labels["t"].shape == (4, len(data.splits["train"]))
    # The ULGM moved the unimodal labels away from the m-labels from epoch 2 on.
    assert not np.array_equal(labels["a"][3], labels["m"])
    np.testing.assert_array_equal(labels["a"][1], labels["m"])
    # Without parameter_groups, one Adam group with lr_other.
    from selfmm.checkpoint import load, saved_epochs

    state = load(out / "seed-7" / f"checkpoint-epoch{saved_epochs(out / 'seed-7')[0]:04d}.pt")
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [3e-3]
    assert run.evaluate(data) == {7: run.results["seeds"]["7"]}


def test_own_model_resumes_exactly(custom, data, tmp_path):
    cfg, out, run, model_class = custom
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    # As if the process died after epoch 2's checkpoint: the test and epoch 3 are redone.
    seed = copy / "seed-7"
    for name in ("metrics.json", "checkpoint-epoch0003.pt"):
        (seed / name).unlink()
    (copy / "results.json").unlink()
    resumed = selfmm.fit(cfg, data, copy, seeds=[7], device="cpu", progress=False, model=model_class,
                         resume=True)
    assert resumed.results["seeds"] == run.results["seeds"]
    for s in "tav":
        np.testing.assert_array_equal(resumed.seeds[7].ulabels[s], run.seeds[7].ulabels[s])


def test_own_model_reloads_in_another_process(custom, data_file):
    _, out, run, _ = custom
    code = (f"import selfmm, json; r = selfmm.load_run({str(out)!r}); "
            f"d = selfmm.load_features({str(data_file)!r}, 'mosi'); "
            "print(json.dumps(r.evaluate(d, device='cpu')[7]))")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(EXAMPLES)}, check=True)
    assert json.loads(done.stdout) == run.results["seeds"]["7"]


def test_own_model_not_importable_says_so_in_one_line(custom, data, tmp_path):
    _, out, _, model_class = custom
    copy = tmp_path / "run"
    shutil.copytree(out / "seed-7", copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["model_class"] = "no_such_module:Gone"
    (copy / "config.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="no_such_module:Gone cannot be imported from the installed modules"):
        run = selfmm.load_run(copy)
    assert run.seeds[7].ulabels["t"].shape[0] == 4  # what needs no model still reads
    with pytest.raises(selfmm.SelfMMError, match="cannot be imported from the installed modules; pass `model`"):
        run.evaluate(data)
    assert selfmm.load_run(copy, model=model_class).evaluate(data)[7]["MAE"] >= 0


def test_a_model_that_breaks_the_protocol_is_refused(data, tmp_path):
    import torch

    class NoDims(torch.nn.Module):
        def __init__(self, spec, cfg):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

    class WrongOutput(NoDims):
        feature_dims = {"m": 4, "t": 4, "a": 4, "v": 4}

        def forward(self, batch):
            return self.layer(batch.labels[:, None])

    cfg = selfmm.config("mosi", max_epochs=1)
    with pytest.raises(selfmm.SelfMMError, match="feature_dims must map each of m, t, a, v"):
        selfmm.fit(cfg, data, tmp_path / "a", seeds=[1], device="cpu", progress=False, model=NoDims)
    with pytest.raises(selfmm.SelfMMError, match="forward returned Tensor, not a selfmm.SelfMMOutput"):
        selfmm.fit(cfg, data, tmp_path / "b", seeds=[1], device="cpu", progress=False, model=WrongOutput)
