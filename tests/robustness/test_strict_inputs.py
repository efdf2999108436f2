"""Inputs read strictly: MMSA config values and sections, transcripts that name no file, label
files with non-finite labels or bytes that are not text, seeds given twice, and the data file a
run recorded (resolved, with its hash), found again from any folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import selfmm
from selfmm.cli import main
from selfmm.cli.common import read_transcript
from selfmm.configuration import resolve
from selfmm.data.synth import write_synthetic
from selfmm.errors import ConfigError, DataError, SelfMMError
from selfmm.extract import read_labels
from selfmm.interop import read_config_file

from .helpers import copy_run, train_argv


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("selfmm: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def mmsa(params: dict, common: dict | None = None, **top) -> dict:
    return {"datasetCommonParams": {"mosi": {}}, **top,
            "self_mm": {"commonParams": common or {}, "datasetParams": {"mosi": params}}}


def mmsa_values(tmp_path: Path, obj: dict) -> dict:
    path = tmp_path / "config_regression.json"
    path.write_text(json.dumps(obj))
    return read_config_file(path, "mosi")


# --- MMSA's config_regression.json -----------------------------------------------------------


@pytest.mark.parametrize("value, frozen", [(True, False), (False, True), ("no", True), ("yes", False),
                                           ("false", True), ("0", True)])
def test_mmsa_booleans_mean_what_they_say(value, frozen, tmp_path):
    values = mmsa_values(tmp_path, mmsa({"use_finetune": value}))
    assert resolve("mosi", values).model.freeze_encoder is frozen


@pytest.mark.parametrize("params", [{"use_finetune": "maybe"}, {"use_finetune": [1]}, {"use_finetune": 0},
                                    {"excludeZero": "perhaps"},
                                    {"need_normalized": "yes"}, {"use_bert": "no"}, {"a_lstm_layers": "two"}])
def test_mmsa_values_of_the_wrong_type_are_refused(params, tmp_path, capsys):
    path = tmp_path / "config_regression.json"
    path.write_text(json.dumps(mmsa(params)))
    assert main(["train", "--dataset", "mosi", "--config", str(path), "--data", str(tmp_path / "x.pkl"),
                 "--out", str(tmp_path / "out")]) == 2
    line = one_error(capsys)
    assert next(iter(params)) in line or "exclude_zero" in line


def test_mmsa_fixed_settings_are_read_like_ours(tmp_path):
    """"no" for a setting fixed at false, "1" for one fixed at 1: the same values, accepted."""
    assert mmsa_values(tmp_path, mmsa({"need_normalized": "no", "a_lstm_layers": "1", "use_bert": "true"})) == {}
    assert resolve("mosi", mmsa_values(tmp_path, mmsa({"excludeZero": "no"}))).labels.exclude_zero is False


@pytest.mark.parametrize("obj, section", [
    (mmsa({}, common=[1, 2]), "self_mm.commonParams"),
    ({"self_mm": {"commonParams": {}, "datasetParams": "mosi"}}, "self_mm.datasetParams"),
    ({"self_mm": {"datasetParams": {"mosi": [["batch_size", 32]]}}}, "self_mm.datasetParams.mosi"),
    ({"datasetCommonParams": ["mosi"], "self_mm": {"datasetParams": {"mosi": {}}}}, "datasetCommonParams"),
])
def test_mmsa_sections_of_the_wrong_type_are_one_line(obj, section, tmp_path, capsys):
    with pytest.raises(ConfigError, match=f"MMSA section {section} must be an object"):
        mmsa_values(tmp_path, obj)
    assert main(["train", "--dataset", "mosi", "--config", str(tmp_path / "config_regression.json"),
                 "--data", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "out")]) == 2
    assert section in one_error(capsys)


@pytest.mark.parametrize("section", ["model", "optim", "labels", "train"])
def test_our_sections_of_the_wrong_type_are_one_line(section, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: [1]}))
    assert main(["train", "--dataset", "mosi", "--config", str(path), "--data", str(tmp_path / "x.pkl"),
                 "--out", str(tmp_path / "out")]) == 2
    assert f"config section '{section}': expected an object of settings" in one_error(capsys)


# --- transcripts -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["notes.txt", "my notes.txt", "subs/clip.srt", "said.TXT", "../said"])
def test_a_transcript_that_names_no_file_is_refused(value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SelfMMError, match="no such file"):
        read_transcript(value)
    (tmp_path / "clip.mp4").write_bytes(b"not read")
    assert main(["extract", "clip.mp4", "--transcript", value, "--out", "clip.pkl"]) == 2
    assert "no such file" in one_error(capsys) and not (tmp_path / "clip.pkl").exists()


def test_transcripts_given_as_text_or_as_files(tmp_path):
    said = tmp_path / "said.txt"
    said.write_text("  the film was wonderful \n", encoding="utf-8")
    assert read_transcript(str(said)) == "the film was wonderful"
    for words in ("the film was wonderful", "great", "Great.", "it cost 3.50 dollars"):
        assert read_transcript(words) == words
    with pytest.raises(SelfMMError, match="a folder, not a text file"):
        read_transcript(str(tmp_path))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("très bien".encode("latin-1"))
    with pytest.raises(SelfMMError, match="not UTF-8 text"):
        read_transcript(str(latin))


def test_predict_refuses_a_missing_transcript_file(tiny_run, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not read")
    assert main(["predict", str(video), "--transcript", "said.txt", "--run", str(tiny_run["run"]),
                 "--device", "cpu"]) == 2
    assert "--transcript said.txt: no such file" in one_error(capsys)


# --- label.csv ---------------------------------------------------------------------------------

HEADER = "video_id,clip_id,text,label,mode,label_T,label_A,label_V\n"


@pytest.mark.parametrize("row, expected", [
    ("v,1,x,nan,train,0,0,0", "line 3: column 'label' is 'nan', not a finite number"),
    ("v,1,x,NaN,train,0,0,0", "line 3: column 'label' is 'NaN', not a finite number"),
    ("v,1,x,inf,train,0,0,0", "line 3: column 'label' is 'inf', not a finite number"),
    ("v,1,x,0.5,train,-Infinity,0,0", "line 3: column 'label_T' is '-Infinity', not a finite number"),
    ("v,1,x,0.5,train,0,0,nan", "line 3: column 'label_V' is 'nan', not a finite number"),
])
def test_non_finite_labels_are_refused_with_their_line(row, expected, tmp_path):
    path = tmp_path / "label.csv"
    path.write_text(HEADER + "v,0,fine,1.0,train,0,0,0\n" + row + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_labels(path)


@pytest.mark.parametrize("content, expected", [
    (bytes(range(256)) * 4, "not UTF-8 text"),
    (b"\x00" * 4096, "missing column(s) video_id"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "not UTF-8 text"),
    (HEADER.encode() + b'v,0,"' + b"x" * 200_000 + b'",1.0,train,0,0,0\n', "line 2: not a CSV row"),
])
def test_binary_and_undecodable_label_files_are_one_line(content, expected, tmp_path, capsys):
    path = tmp_path / "label.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_labels(path)
    assert expected in str(error.value)
    (tmp_path / "videos").mkdir()
    assert main(["extract-dataset", str(tmp_path / "videos"), "--labels", str(path), "--out",
                 str(tmp_path / "o.pkl"), "--workers", "1"]) == 2
    assert expected in one_error(capsys)
    assert not (tmp_path / "o.pkl").exists()


# --- seeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "ablate", "reproduce"])
def test_a_seed_given_twice_is_refused(command, tmp_path, capsys):
    assert main([command, "--dataset", "mosi", "--data", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "out"),
                 "--seeds", "1111", "7", "1111"]) == 2
    assert "--seeds: 1111 given more than once; give each seed once" in one_error(capsys)
    with pytest.raises(ConfigError, match="`seeds`: 7 given more than once"):
        selfmm.fit(selfmm.config("mosi"), None, tmp_path / "out", seeds=[7, 7])
    assert not (tmp_path / "out").exists()


# --- the data file a run recorded ----------------------------------------------------------------


def test_a_run_records_its_data_resolved_with_its_hash(tiny_run):
    """tiny_run was trained from its folder with `--data mosi.pkl`."""
    saved = json.loads((tiny_run["run"] / "seed-7" / "config.json").read_text())
    assert saved["data"]["path"] == str(tiny_run["data"].resolve())
    assert saved["provenance"]["data"]["file"]["path"] == str(tiny_run["data"].resolve())
    assert len(saved["provenance"]["data"]["file"]["sha256"]) == 64


def test_another_folder_never_picks_up_another_file_of_the_same_name(tiny_run, tmp_path, capsys, monkeypatch):
    """Run from a folder holding another `mosi.pkl`, `labels` uses the run's own file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mosi.pkl").write_bytes(b"another file of the same name")
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    monkeypatch.chdir(elsewhere)
    assert main(["labels", str(run), "--out", str(tmp_path / "labels")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "labels" / "seed-7" / "agreement.png").exists()  # the human labels were found


def test_a_recorded_file_rewritten_since_is_not_the_runs_data(tiny_run, tmp_path, capsys):
    data = tmp_path / "mosi.pkl"
    shutil.copy(tiny_run["data"], data)
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    config = run / "seed-7" / "config.json"
    saved = json.loads(config.read_text())
    saved["data"]["path"] = saved["provenance"]["data"]["file"]["path"] = str(data)
    config.write_text(json.dumps(saved))
    assert main(["labels", str(run), "--out", str(tmp_path / "same")]) == 0
    assert "warning" not in capsys.readouterr().err and (tmp_path / "same" / "seed-7" / "agreement.png").exists()
    write_synthetic(data, "mosi", scale=0.02, seed=5)  # the same name, other bytes
    assert main(["labels", str(run), "--out", str(tmp_path / "changed")]) == 0
    assert f"the run's data file {data} has changed since training" in capsys.readouterr().err
    assert not (tmp_path / "changed" / "seed-7" / "agreement.png").exists()
    # Resuming with it is refused too (test_resume_match.py); training again names it.
    assert main(train_argv(data, run, tiny_run["bert"], "--resume")) == 2
    assert "has sha256" in one_error(capsys)
