"""Configuration mistakes: unknown keys, wrong types, out-of-range values, unavailable encoders.

Each is refused before anything is loaded or written, as one line naming the valid keys or range.
"""

from __future__ import annotations

import json
import time

import pytest

from selfmm.cli import main
from selfmm.configuration import valid_keys


def train(tmp_path, *extra: str) -> list[str]:
    return ["train", "--dataset", "mosi", "--data", str(tmp_path / "absent.pkl"), "--out", str(tmp_path / "out"),
            *extra]


def refused(tmp_path, capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("selfmm: error: "), err
    assert not (tmp_path / "out").exists()
    return err


@pytest.mark.parametrize("assignment, expected", [
    ("lr_audioo=1e-3", "unknown config key 'lr_audioo'; valid keys: "),
    ("model.lr_audio=1e-3", "unknown config key 'model.lr_audio'; valid keys: "),
    ("optim.nope.x=1", "unknown config key 'optim.nope.x'; valid keys: "),
    ("batch_size=abc", "config key 'batch_size': expected an integer, got 'abc'"),
    ("batch_size=2.5", "expected an integer"),
    ("exclude_zero=maybe", "expected true or false"),
    ("lr_text=fast", "expected a number"),
    ("lr_text=nan", "expected a finite number"),
    ("lr_text=inf", "expected a finite number"),
    ("lr_audio=-1e-3", "-0.001 is out of range; must be > 0"),
    ("H=0", "must be > 0"),
    ("weight_decay_other=-1", "must be >= 0"),
    ("post_text_dropout=1.5", "must be in [0, 1)"),
    ("batch_size=0", "must be >= 1"),
    ("accumulation_steps=-4", "must be >= 1"),
    ("max_epochs=-1", "must be >= 0"),
    ("tasks=MXY", "must be one of M, MT, MA"),
    ("centres=approx", "must be one of incremental, full"),
    ("text_model=", "a non-empty hub name or path"),
    ("lr_text", "--set expects key=value"),
])
def test_bad_set_values(tmp_path, capsys, assignment, expected):
    err = refused(tmp_path, capsys, train(tmp_path, "--set", assignment))
    assert expected in err
    if "unknown" in expected:
        assert all(key in err for key in valid_keys())


@pytest.mark.parametrize("content, expected", [
    ({"lr_audioo": 1e-3}, "unknown config key 'lr_audioo'; valid keys: "),
    ({"optim": {"lr_audio": 1e-3, "typo": 1}}, "unknown config key 'optim.typo'"),
    ({"model": {"lr_audio": 1e-3}}, "unknown config key 'model.lr_audio'"),
    ({"batch_size": "16"}, None),  # a string that is an integer is accepted
    ({"batch_size": 16.5}, "expected an integer"),
    ({"batch_size": True}, "expected an integer"),
    ({"lr_text": [1e-5]}, "expected a number"),
    ({"text_model": 5}, "expected a string"),
    ({"post_fusion_dropout": -0.1}, "must be in [0, 1)"),
    ([1, 2], "expected a JSON object at the top level"),
    ("{not json", "not readable JSON"),
])
def test_bad_config_files(tmp_path, capsys, content, expected):
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    if expected is None:
        # Valid: the run goes on to the next check, the missing data file.
        assert "absent.pkl does not exist" in refused(tmp_path, capsys, train(tmp_path, "--config", str(path)))
        return
    err = refused(tmp_path, capsys, train(tmp_path, "--config", str(path)))
    assert str(path) in err or "config key" in err
    assert expected in err


def test_missing_config_file(tmp_path, capsys):
    assert "does not exist" in refused(tmp_path, capsys, train(tmp_path, "--config", str(tmp_path / "nope.json")))


def test_hub_model_not_available_offline_fails_fast(tmp_path, synth_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    err = refused(tmp_path, capsys, ["train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.02)),
                                     "--out", str(tmp_path / "out"), "--text-model", "nobody-org/no-such-bert"])
    assert time.monotonic() - start < 60
    assert "'nobody-org/no-such-bert' is not a local directory and is not in the Hugging Face cache" in err
    assert "--text-model /path/to/model" in err and "HF_HUB_OFFLINE=1" in err


def test_local_path_that_is_not_a_model(tmp_path, synth_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    err = refused(tmp_path, capsys, ["train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.02)),
                                     "--out", str(tmp_path / "out"), "--text-model", str(folder)])
    assert f"cannot load from {folder}" in err
