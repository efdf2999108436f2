"""`selfmm ablate`: task combinations over seeds, one table, resumable."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import pytest

from selfmm.ablate import ablation_table
from selfmm.cli import main
from selfmm.metrics import METRIC_NAMES


@pytest.fixture(scope="module")
def ablation(tiny_bert, synth_path, tmp_path_factory):
    """Combinations M and MTA, one seed; each test that changes the run works on a copy."""
    out = tmp_path_factory.mktemp("ablate") / "run"
    base = ["ablate", "--dataset", "mosi", "--data", str(synth_path(aligned=True)),
            "--text-model", str(tiny_bert), "--max-epochs", "1", "--seeds", "7",
            "--device", "cpu", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(base + ["--combos", "M", "MTA"]) == 0
    return base, out, printed.getvalue()


def test_ablate_trains_each_combination_and_prints_every_metric(ablation):
    base, out, table = ablation
    for name in METRIC_NAMES["mosi"]:
        assert name in table
    rows = [line.split() for line in table.splitlines()[3:]]
    assert [r[0] for r in rows] == ["M", "MTA"]
    for tasks in ("M", "MTA"):
        saved = json.loads((out / tasks / "seed-7" / "config.json").read_text())
        assert saved["config"]["train"]["tasks"] == tasks
        assert (out / tasks / "results.json").exists()
    summary = json.loads((out / "ablation.json").read_text())
    m = summary["combinations"]["M"]
    assert set(m) == {"seeds", "mean", "std"}
    assert m["mean"]["MAE"] == m["seeds"]["7"]["MAE"] and m["std"]["MAE"] == 0.0
    # The table prints x100 with 2 decimals.
    mae = rows[0][2 + list(METRIC_NAMES["mosi"]).index("MAE")]
    assert mae == f"{round(m['mean']['MAE'] * 100, 2):.2f}"
    with open(out / "ablation.csv", newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0][:4] == ["tasks", "seeds", "Has0_acc_2", "Has0_acc_2_std"]
    assert [r[0] for r in lines[1:]] == ["M", "MTA"]


def test_ablate_resume_keeps_finished_combinations(ablation, capsys, tmp_path):
    base, original, _ = ablation
    out = tmp_path / "run"
    shutil.copytree(original, out)
    base = base[:-1] + [str(out)]
    before = (out / "M" / "seed-7" / "metrics.json").read_text()
    mtime = (out / "M" / "seed-7" / "best.safetensors").stat().st_mtime_ns
    assert main(base + ["--combos", "M", "MV", "--resume"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]]
    assert rows == ["M", "MV"]
    assert (out / "M" / "seed-7" / "metrics.json").read_text() == before
    assert (out / "M" / "seed-7" / "best.safetensors").stat().st_mtime_ns == mtime
    assert set(json.loads((out / "ablation.json").read_text())["combinations"]) == {"M", "MV"}


@pytest.mark.parametrize("extra, message", [
    (["--combos", "M"], "already holds a run"),
    (["--combos", "M", "--resume", "--set", "lr_audio=1e-4"], "optim.lr_audio 0.005 (now 0.0001)"),
    (["--tasks", "MT", "--resume"], "--combos, not --tasks"),
])
def test_ablate_refuses(ablation, capsys, extra, message):
    base, _, _ = ablation
    assert main(base + extra) == 2
    assert message in capsys.readouterr().err


def test_ablation_table_shape():
    per_seed = {1: {"MAE": 0.5, "Corr": 0.25}, 2: {"MAE": 0.7, "Corr": 0.35}}
    lines = ablation_table({"MTAV": per_seed}).splitlines()
    assert lines[0].split() == ["tasks", "seeds", "MAE", "Corr"]
    assert lines[2].split() == ["MTAV", "2", "60.00", "30.00"]


def test_a_combination_is_the_same_training_as_selfmm_train(ablation, tmp_path):
    base, out, _ = ablation
    train = ["train"] + base[1:-1] + [str(tmp_path / "train"), "--tasks", "MTA"]
    assert main(train) == 0
    ablated = json.loads((out / "MTA" / "seed-7" / "metrics.json").read_text())
    trained = json.loads((tmp_path / "train" / "seed-7" / "metrics.json").read_text())
    assert ablated == trained
