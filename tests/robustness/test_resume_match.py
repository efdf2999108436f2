"""Resume only what matches: every resume (`train --resume`, `ablate --resume`, `reproduce
--resume`, `selfmm.fit(resume=True)`, a rerun of `tune`) against each kind of mismatch, refused
before anything is written and naming what differs; and a finished seed checked on resume,
rebuilt from its checkpoints where it can be, named in one line where it cannot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import selfmm
from selfmm.cli import main
from selfmm.data.mmsa import load_features
from selfmm.errors import SelfMMError
from selfmm.provenance import data_provenance
from selfmm.runs import read_ulabels
from selfmm.tune import open_study

from .helpers import copy_run, train_argv


class AnotherModel(torch.nn.Module):
    """Only its name matters: a resume with it must be refused before it is built."""


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("selfmm: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    return copy_run(tiny_run, tmp_path / "run")


def other_bert(tiny_run, tmp_path) -> Path:
    path = tmp_path / "other-bert"
    shutil.copytree(tiny_run["bert"], path)
    return path


# (name, arguments beyond the run's, what the refusal must name). Each changes one thing.
MISMATCHES = [
    ("a setting", ["--set", "lr_audio=1e-4"], "optim.lr_audio 0.005 (now 0.0001)"),
    ("the batch size", ["--set", "batch_size=16"], "optim.batch_size 8 (now 16)"),
    ("the tasks", ["--tasks", "MT"], "train.tasks 'MTAV' (now 'MT')"),
    ("the dataset", ["--dataset", "mosei"], "dataset 'mosi' (now 'mosei')"),
    ("a data file of the same shape", ["--data", "{same_shape}"], "data file {same_shape} has sha256"),
    ("a data file of another shape", ["--data", "{other_shape}"], "data train_size"),
    ("an override file", ["--audio-file", "{same_shape}"], "--audio-file {same_shape} (the run had none)"),
    ("the text model", ["--text-model", "{bert}"], "model.text_model"),
]


def mismatch_args(case: int, tiny_run, synth_path, tmp_path) -> tuple[list[str], str]:
    _, extra, expected = MISMATCHES[case]
    values = {"same_shape": str(synth_path("mosi", scale=0.02, seed=1)),
              "other_shape": str(synth_path("mosi", scale=0.03)),
              "bert": str(other_bert(tiny_run, tmp_path)) if "{bert}" in " ".join(extra) else ""}
    return [e.format(**values) for e in extra], expected.format(**values)


def with_flags(args: list[str], extra: list[str]) -> list[str]:
    """`args` with each option of `extra` replaced or added."""
    args = list(args)
    for option, value in zip(extra[::2], extra[1::2], strict=True):
        if option in args and option != "--set":
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    return args


@pytest.mark.parametrize("case", range(len(MISMATCHES)), ids=[m[0] for m in MISMATCHES])
def test_train_resume_refuses_each_mismatch_before_writing(case, run, tiny_run, synth_path, tmp_path, capsys):
    extra, expected = mismatch_args(case, tiny_run, synth_path, tmp_path)
    before = snapshot(run)
    args = with_flags(train_argv(tiny_run["data"], run, tiny_run["bert"], "--resume"), extra)
    assert main(args) == 2
    line = one_error(capsys)
    assert f"cannot resume {run}" in line and expected in line, line
    assert snapshot(run) == before


def test_train_resume_accepts_the_same_setup_from_anywhere(run, tiny_run, tmp_path, capsys, monkeypatch):
    """A moved copy of the data is the same data; the epoch limit may change; a finished seed
    is not trained again."""
    moved = tmp_path / "elsewhere" / "copy.pkl"
    moved.parent.mkdir()
    shutil.copy(tiny_run["data"], moved)
    seed_files = {k: v for k, v in snapshot(run).items() if k.startswith("seed-7/")}
    monkeypatch.chdir(moved.parent)
    assert main(train_argv("copy.pkl", run, tiny_run["bert"], "--resume", "--max-epochs", "3")) == 0
    assert "rebuilt" not in capsys.readouterr().err
    assert {k: v for k, v in snapshot(run).items() if k.startswith("seed-7/")} == seed_files


@pytest.mark.parametrize("case", [1, 3, 4], ids=["the batch size", "the dataset", "a data file"])
def test_fit_resume_refuses_mismatches(case, run, tiny_run, synth_path, tmp_path):
    extra, expected = mismatch_args(case, tiny_run, synth_path, tmp_path)
    options = dict(zip(extra[::2], extra[1::2], strict=True))
    data = load_features(options.get("--data", tiny_run["data"]))
    overrides = {"batch_size": 8, "max_epochs": 1, "text_model": str(tiny_run["bert"])}
    if "--set" in options:
        key, value = options["--set"].split("=")
        overrides[key] = value
    cfg = selfmm.config(options.get("--dataset", "mosi"), **overrides)
    before = snapshot(run)
    with pytest.raises(SelfMMError, match="cannot resume") as refused:
        selfmm.fit(cfg, data, run, seeds=[7], device="cpu", resume=True, progress=False)
    assert expected in str(refused.value)
    assert snapshot(run) == before


def test_fit_resume_refuses_another_model_class(run, tiny_run):
    cfg = selfmm.config("mosi", batch_size=8, max_epochs=1, text_model=str(tiny_run["bert"]))
    before = snapshot(run)
    with pytest.raises(SelfMMError, match="model class selfmm.model:SelfMM .now .*AnotherModel"):
        selfmm.fit(cfg, load_features(tiny_run["data"]), run, seeds=[7], device="cpu", resume=True,
                   progress=False, model=AnotherModel)
    assert snapshot(run) == before


def ablation(tiny_run, tmp_path, combos: tuple[str, ...]) -> Path:
    """An ablation whose combinations are copies of the tiny run (trained with tasks MTAV)."""
    root = tmp_path / "ablation"
    for tasks in combos:
        copy_run(tiny_run, root / tasks)
    (root / "ablation.json").write_text("{}")
    return root


@pytest.mark.parametrize("case", [1, 4, 7], ids=["the batch size", "a data file", "the text model"])
def test_ablate_resume_refuses_each_mismatch(case, tiny_run, synth_path, tmp_path, capsys):
    root = ablation(tiny_run, tmp_path, ("MTAV",))
    extra, expected = mismatch_args(case, tiny_run, synth_path, tmp_path)
    before = snapshot(root)
    args = with_flags(train_argv(tiny_run["data"], root, tiny_run["bert"], "--resume", "--combos", "MTAV",
                                 command="ablate"), extra)
    assert main(args) == 2
    line = one_error(capsys)
    assert f"cannot resume {root / 'MTAV'}" in line and expected in line, line
    assert snapshot(root) == before


def test_ablate_checks_every_combination_before_training_any(tiny_run, tmp_path, capsys):
    """MT's folder holds a run trained with MTAV: refused before MTAV's results are rewritten."""
    root = ablation(tiny_run, tmp_path, ("MTAV", "MT"))
    before = snapshot(root)
    args = train_argv(tiny_run["data"], root, tiny_run["bert"], "--resume", "--combos", "MTAV", "MT",
                      command="ablate")
    assert main(args) == 2
    assert "train.tasks 'MTAV' (now 'MT')" in one_error(capsys)
    assert snapshot(root) == before


@pytest.mark.parametrize("extra, expected", [
    ([], "optim.batch_size 8 (now 16)"),  # the tiny run was trained with batches of 8
    (["--data", "{same_shape}"], "has sha256"),
])
def test_reproduce_resume_refuses_mismatches(extra, expected, run, tiny_run, synth_path, capsys):
    extra = [e.format(same_shape=synth_path("mosi", scale=0.02, seed=1)) for e in extra]
    before = snapshot(run)
    args = with_flags(["reproduce", "--dataset", "mosi", "--data", str(tiny_run["data"]), "--out", str(run),
                       "--text-model", str(tiny_run["bert"]), "--seeds", "7", "--max-epochs", "1", "--resume"],
                      extra)
    assert main(args) == 2
    line = one_error(capsys)
    assert "cannot resume" in line and expected in line, line
    assert snapshot(run) == before


def test_tune_continues_a_study_only_with_its_setup(tiny_run, synth_path, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = selfmm.config("mosi", max_epochs=1)
    data = data_provenance(str(tiny_run["data"]), {})
    open_study(storage, "s", cfg, data=data)
    open_study(storage, "s", cfg, data=data)  # the same: continued
    with pytest.raises(SelfMMError, match=r"another setup: train.max_epochs 1 \(now 2\)"):
        open_study(storage, "s", selfmm.config("mosi", max_epochs=2), data=data)
    other = data_provenance(str(synth_path("mosi", scale=0.02, seed=1)), {})
    with pytest.raises(SelfMMError, match="another setup: data file .* has sha256"):
        open_study(storage, "s", cfg, data=other)


# --- a finished seed -------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] or b"{")


def resume(run: Path, tiny_run) -> selfmm.Run:
    cfg = selfmm.config("mosi", batch_size=8, max_epochs=1, text_model=str(tiny_run["bert"]))
    return selfmm.fit(cfg, load_features(tiny_run["data"]), run, seeds=[7], device="cpu", resume=True,
                      progress=False)


def same_content(name: str, before: Path, after: Path) -> None:
    if name == "best.safetensors":
        old, new = load_file(before), load_file(after)
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    elif name == "ulabels.npz":
        old, new = read_ulabels(before.parent), read_ulabels(after.parent)
        assert all(np.array_equal(old[k], new[k]) for k in old)
    else:
        old, new = json.loads(before.read_text()), json.loads(after.read_text())
        if name == "config.json":
            old, new = ({k: d[k] for k in ("config", "seed", "data", "model_class")} for d in (old, new))
        assert old == new


@pytest.mark.parametrize("how", ["missing", "truncated"])
@pytest.mark.parametrize("name", ["best.safetensors", "history.json", "ulabels.npz", "config.json"])
def test_a_damaged_finished_seed_is_rebuilt_from_its_checkpoint(name, how, run, tiny_run, capsys):
    seed = run / "seed-7"
    metrics = (seed / "metrics.json").read_text()
    damage(seed / name, how)
    result = resume(run, tiny_run)
    assert f"rebuilt {name} from its checkpoints" in capsys.readouterr().err
    same_content(name, tiny_run["run"] / "seed-7" / name, seed / name)
    assert (seed / "metrics.json").read_text() == metrics
    assert result.seeds[7].metrics == json.loads(metrics)


@pytest.mark.parametrize("name", ["best.safetensors", "history.json", "ulabels.npz", "config.json"])
def test_what_no_checkpoint_holds_is_named_in_one_line(name, run, tiny_run, capsys):
    seed = run / "seed-7"
    for checkpoint in seed.glob("checkpoint-*.pt"):
        checkpoint.unlink()
    damage(seed / name, "missing")
    before = snapshot(run)
    assert main(train_argv(tiny_run["data"], run, tiny_run["bert"], "--resume")) == 2
    line = one_error(capsys)
    assert str(seed) in line and name in line and "remove" in line, line
    assert snapshot(run) == before


def test_best_weights_of_an_earlier_epoch_than_the_checkpoints_are_named(run, tiny_run, capsys):
    """The checkpoints hold the last epochs; best.safetensors of another epoch is not in them."""
    seed = run / "seed-7"
    metrics = json.loads((seed / "metrics.json").read_text())
    (seed / "metrics.json").write_text(json.dumps({**metrics, "best_epoch": 0}))
    damage(seed / "best.safetensors", "truncated")
    with pytest.raises(SelfMMError, match="best.safetensors .*cannot be read.*no checkpoint holds it"):
        resume(run, tiny_run)


def test_a_damaged_metrics_file_is_rebuilt_by_testing_again(run, tiny_run, capsys):
    seed = run / "seed-7"
    metrics = json.loads((seed / "metrics.json").read_text())
    damage(seed / "metrics.json", "truncated")
    result = resume(run, tiny_run)
    assert "testing the best weights again" in capsys.readouterr().err
    again = json.loads((seed / "metrics.json").read_text())
    assert again["best_epoch"] == metrics["best_epoch"]
    assert again["test"] == pytest.approx(metrics["test"], abs=1e-6)
    assert result.results["seeds"]["7"] == pytest.approx(metrics["test"], abs=1e-6)
