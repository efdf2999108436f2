"""`selfmm labels`: u-label trajectories, their agreement with human unimodal labels, plots."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from selfmm.analysis import (
    LabelTrajectory,
    agreement,
    chosen_epochs,
    default_epochs,
    distance_from_m,
    figures,
    label_trajectory,
    png_bytes,
    summary_text,
)
from selfmm.cli import main
from selfmm.data.mmsa import load_features
from selfmm.data.unpickle import safe_load
from selfmm.errors import SelfMMError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tiny_bert, synth_path, tmp_path_factory) -> Path:
    """One seed, three epochs on the aligned synthetic benchmark (aligned: the LSTMs see 50
    frames instead of 500, which keeps the fixture to seconds)."""
    out = tmp_path_factory.mktemp("labels") / "run"
    code = main(["train", "--dataset", "mosi", "--data", str(synth_path(scale=0.05, aligned=True)),
                 "--out", str(out), "--text-model", str(tiny_bert), "--seeds", "1", "--max-epochs", "3"])
    assert code == 0
    return out


def hand_trajectory() -> LabelTrajectory:
    m = np.array([1.0, -1.0, 2.0, -2.0])
    moved = np.array([1.5, -1.0, 1.0, -1.0])
    u = {s: np.stack([m, m, moved]) for s in "tav"}
    human = {s: np.array([2.0, -1.0, 2.0, -1.0]) for s in "tav"}
    return LabelTrajectory(seed=7, ids=["a", "b", "c", "d"], m=m, u=u, human=human, H=3.0, data_path="x.pkl")


def test_distance_and_agreement_by_hand():
    traj = hand_trajectory()
    assert np.allclose(distance_from_m(traj)["t"], [0, 0, (0.5 + 0 + 1 + 1) / 4])
    a = agreement(traj)["a"]
    # m vs human: errors 1, 0, 0, 1; last u vs human: 0.5, 0, 1, 0.
    assert a.baseline_mae == pytest.approx(0.5)
    assert np.allclose(a.mae, [0.5, 0.5, 0.375])
    assert a.corr[0] == pytest.approx(a.baseline_corr)
    assert a.corr[2] == pytest.approx(np.corrcoef([1.5, -1.0, 1.0, -1.0], [2.0, -1.0, 2.0, -1.0])[0, 1])
    assert (a.closer, a.farther) == (0.5, 0.25)
    # Partial correlation given m: residuals of u and of the truth after a line on m.
    design = np.c_[np.ones(4), traj.m]

    def residual(y: np.ndarray) -> np.ndarray:
        return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]

    expected = np.corrcoef(residual(traj.u["a"][2]), residual(traj.human["a"]))[0, 1]
    assert np.isnan(a.beyond[:2]).all() and a.beyond[2] == pytest.approx(expected)


def test_shrinking_labels_add_nothing_beyond_m():
    traj = hand_trajectory()
    traj.u["t"][2] = 0.5 * traj.m + 0.1
    a = agreement(traj)["t"]
    assert np.isnan(a.beyond[2]) and a.mae[2] != a.baseline_mae


def test_constant_labels_have_no_correlation():
    traj = hand_trajectory()
    traj.u["v"] = np.zeros((3, 4))
    assert np.isnan(agreement(traj)["v"].corr).all()
    assert "nan" in summary_text(traj)


def test_epoch_choice():
    assert default_epochs(10) == [0, 2, 5, 7, 10]
    assert default_epochs(1) == [0, 1]
    assert chosen_epochs([3, 1, 3], 5) == [1, 3]
    with pytest.raises(SelfMMError, match="epochs 0 to 5"):
        chosen_epochs([6], 5)


def test_summary_and_figures_without_human_labels():
    traj = hand_trajectory()
    traj.human = {}
    text = summary_text(traj)
    assert "no human unimodal labels" in text and "r_t" not in text
    made = figures(traj, [0, 2])
    assert set(made) == {"distributions", "distance"}
    assert png_bytes(made["distance"]).startswith(PNG)


def test_trajectory_of_a_trained_run(run, synth_path):
    data = load_features(synth_path(scale=0.05, aligned=True))
    traj = label_trajectory(run / "seed-1", data)
    train = data.splits["train"]
    assert traj.epochs == 3 and traj.seed == 1 and len(traj.ids) == len(train)
    for s in "tav":
        # Row 0 is the initialisation and the ULGM first moves the labels in epoch 2.
        assert np.array_equal(traj.u[s][0], traj.m) and np.array_equal(traj.u[s][1], traj.m)
        assert np.abs(traj.u[s][3] - traj.m).max() > 0
        assert np.abs(traj.u[s]).max() <= traj.H
    row = {clip: j for j, clip in enumerate(train.ids)}
    for k in (0, len(traj.ids) - 1):
        j = row[traj.ids[k]]
        assert traj.m[k] == pytest.approx(train.labels[j])
        assert traj.human["v"][k] == pytest.approx(train.unimodal_labels["v"][j])


def test_labels_command_on_a_run(run, capsys):
    assert main(["labels", str(run), "--epochs", "0", "2", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed 1: " in out and "against the human unimodal labels" in out
    assert "after epoch 3" in out
    seed_out = run / "labels" / "seed-1"
    for stem in ("distributions", "distance", "agreement"):
        assert (seed_out / f"{stem}.png").read_bytes().startswith(PNG)
    assert (seed_out / "summary.txt").read_text() in (run / "labels" / "summary.txt").read_text()


def test_labels_command_on_a_seed_dir_with_other_data(run, synth_path, tmp_path, capsys):
    # A copy of the run's file without the unimodal keys: the analysis runs, the comparison is skipped.
    raw = safe_load(synth_path(scale=0.05, aligned=True))
    for split in raw.values():
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            del split[key]
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(raw, protocol=4))
    out = tmp_path / "out"
    assert main(["labels", str(run / "seed-1"), "--data", str(plain), "--out", str(out)]) == 0
    assert "has no human unimodal labels" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["distance.png", "distributions.png", "summary.txt"]


def test_labels_command_errors(run, synth_path, tmp_path, capsys):
    # The smaller file lacks most of the run's training clips: matching by id must refuse it.
    assert main(["labels", str(run), "--data", str(synth_path(scale=0.03, aligned=True)),
                 "--out", str(tmp_path / "a")]) == 2
    assert "does not hold" in capsys.readouterr().err
    assert main(["labels", str(run), "--epochs", "9", "--out", str(tmp_path / "b")]) == 2
    assert main(["labels", str(run), "--seed", "5", "--out", str(tmp_path / "c")]) == 2
    assert main(["labels", str(tmp_path), "--out", str(tmp_path / "d")]) == 2


def test_labels_when_the_recorded_data_file_is_gone(run, tmp_path, capsys):
    seed = tmp_path / "seed-1"
    shutil.copytree(run / "seed-1", seed, ignore=shutil.ignore_patterns("*.pt", "*.safetensors", "labels"))
    saved = json.loads((seed / "config.json").read_text())
    saved["data"]["path"] = str(tmp_path / "moved.pkl")
    (seed / "config.json").write_text(json.dumps(saved))
    assert main(["labels", str(seed)]) == 0
    captured = capsys.readouterr()
    assert "is gone" in captured.err and "mean |u - m|" in captured.out
    assert not (seed / "labels" / "agreement.png").exists()
