"""Bounds on what sizes resources, checked when the configuration is built, before anything is
loaded, forked or written: worker counts, `synth --scale`, seeds, configuration files."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

import selfmm
from selfmm.cli import main
from selfmm.configuration import MAX_CONFIG_BYTES, MAX_WORKERS, read_json_object
from selfmm.data.synth import make_synthetic
from selfmm.errors import ConfigError
from selfmm.extract import extract_dataset

from .helpers import memory_cap


def refused(capsys, args: list[str]) -> str:
    started = time.monotonic()
    assert main(args) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def train(tmp_path, *extra: str, command: str = "train") -> list[str]:
    return [command, "--dataset", "mosi", "--data", str(tmp_path / "absent.pkl"), "--out", str(tmp_path / "out"),
            *extra]


@pytest.mark.parametrize("value", ["100000", "65", "-1"])
@pytest.mark.parametrize("command", ["train", "ablate", "tune", "a config file"])
def test_num_workers(command, value, tmp_path, capsys):
    args = train(tmp_path, "--set", f"num_workers={value}", command=command)
    if command == "a config file":
        (tmp_path / "c.json").write_text(json.dumps({"train": {"num_workers": int(value)}}))
        args = train(tmp_path, "--config", str(tmp_path / "c.json"))
    err = refused(capsys, args)
    assert "num_workers'" in err and f"{value} is out of range; must be in [0, {MAX_WORKERS}]" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["100000", "0", "-3"])
def test_worker_flags(value, tmp_path, capsys):
    extract = ["extract-dataset", str(tmp_path), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "o.pkl"),
               "--workers", value]
    serve = ["serve", "--run", str(tmp_path / "run"), "--workers", value, "--port", "0"]
    for args in (extract, serve):
        assert f"--workers must be in [1, {MAX_WORKERS}], got {value}" in refused(capsys, args)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="`workers` must be in"):
        extract_dataset(tmp_path, tmp_path / "l.csv", tmp_path / "o.pkl", workers=int(value))


@pytest.mark.parametrize("scale", ["1e9", "10.5", "inf", "nan", "0", "-1"])
def test_synth_scale(scale, tmp_path, capsys):
    with memory_cap():  # a scale that slipped through would allocate terabytes
        err = refused(capsys, ["synth", "--profile", "mosei", "--scale", scale, "--out", str(tmp_path / "s.pkl")])
    assert "synthetic scale must be positive and at most 10" in err and not (tmp_path / "s.pkl").exists()
    with pytest.raises(ConfigError):
        make_synthetic("mosi", scale=float(scale))


SEEDS = [("-1", "-1"), ("4294967296", "4294967296"), ("18446744073709551616", "18446744073709551616")]


@pytest.mark.parametrize("seed, shown", SEEDS)
@pytest.mark.parametrize("command", ["train", "ablate", "reproduce"])
def test_seeds_must_fit_their_generators(command, seed, shown, tmp_path, capsys):
    err = refused(capsys, train(tmp_path, "--seeds", "1111", seed, command=command))
    assert f"--seeds: {shown} is not an integer in [0, 2^32)" in err


@pytest.mark.parametrize("args, message", [
    (["--seed", "-5"], "--seed: -5 is not an integer in [0, 2^32)"),
    (["--seed", str(2**40)], f"--seed: {2**40} is not"),
    (["--sampler-seed", str(2**32)], f"--sampler-seed: {2**32} is not"),
])
def test_tune_seeds(args, message, tmp_path, capsys):
    assert message in refused(capsys, train(tmp_path, *args, command="tune"))


def test_synth_seed_and_the_library(tmp_path, capsys):
    assert "--seed: -1 is not" in refused(capsys, ["synth", "--profile", "mosi", "--seed", "-1",
                                                             "--out", str(tmp_path / "s.pkl")])
    with pytest.raises(ConfigError, match="`seeds`: 4294967296 is not"):
        selfmm.fit(selfmm.config("mosi"), None, tmp_path / "run", seeds=[2**32])
    with pytest.raises(ConfigError, match="`seeds`: True is not"):
        selfmm.fit(selfmm.config("mosi"), None, tmp_path / "run", seeds=[True])
    assert not (tmp_path / "run").exists()


def test_config_file_size(tmp_path, capsys):
    big = tmp_path / "big.json"
    big.write_text('{"lr_text": 1e-5, "pad": "' + "x" * MAX_CONFIG_BYTES + '"}')
    assert "larger than 1024 KiB" in refused(capsys, train(tmp_path, "--config", str(big)))


def test_endless_and_special_config_files(tmp_path, capsys):
    for special in ("/dev/zero", "/dev/urandom", str(tmp_path)):
        assert ", not a regular file" in refused(capsys, train(tmp_path, "--config", special))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    assert "is a FIFO (a named pipe), not a regular file" in refused(capsys, train(tmp_path, "--config", str(fifo)))


@pytest.mark.parametrize("depth", [17, 100_000])
def test_config_file_nesting(depth, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' * depth + "1" + "}" * depth)
    assert "nested deeper than 16 levels" in refused(capsys, train(tmp_path, "--config", str(deep)))
    with pytest.raises(ConfigError, match="nested deeper"):
        read_json_object(deep)
    lists = tmp_path / "lists.json"
    lists.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    assert "nested deeper than 16 levels" in refused(capsys, train(tmp_path, "--config", str(lists)))


def test_a_real_mmsa_config_is_within_the_bounds(tmp_path):
    """MMSA's own config_regression.json nests four levels: far inside the limit."""
    mmsa = {"datasetCommonParams": {"mosi": {"unaligned": {"featurePath": "x"}}},
            "self_mm": {"commonParams": {"batch_size": 32}, "datasetParams": {"mosi": {"H": 3.0}}}}
    path = tmp_path / "config_regression.json"
    path.write_text(json.dumps(mmsa))
    assert read_json_object(path) == mmsa


@pytest.mark.parametrize("flag, value, shown", [
    ("--audio-len", "100000000", "--audio-len: expected None or an integer in [1, 100000], got 100000000"),
    ("--vision-len", "100001", "--vision-len: expected None or an integer in [1, 100000], got 100001"),
    ("--text-len", "5000", "--text-len: expected an integer in [1, 4096], got 5000"),
    ("--audio-len", "0", "--audio-len: expected None or an integer in [1, 100000], got 0"),
])
def test_extraction_lengths_are_bounded_before_any_work(flag, value, shown, tmp_path, capsys):
    """A 2-second clip with --audio-len 100000000 wrote 10 GB: refused before the video is read."""
    extract = ["extract", str(tmp_path / "clip.mp4"), "--transcript", "hi", flag, value]
    dataset = ["extract-dataset", str(tmp_path), "--labels", str(tmp_path / "l.csv"), "--out",
               str(tmp_path / "o.pkl"), flag, value]
    for args in (extract, dataset):
        assert shown in refused(capsys, args)
    assert list(tmp_path.iterdir()) == []
    # The library names its parameter, and checks it before looking for the file.
    name = flag[2:].replace("-", "_")
    with pytest.raises(ValueError, match=re.escape(shown.replace(flag, f"`{name}`"))):
        extract_dataset(tmp_path / "absent", tmp_path / "l.csv", tmp_path / "o.pkl", **{name: int(value)})


@pytest.mark.parametrize("key", ["audio_hidden", "vision_out", "post_fusion_dim"])
def test_model_widths(key, tmp_path, capsys):
    """A width of 10^9 would fail allocating terabytes once training starts."""
    err = refused(capsys, train(tmp_path, "--set", f"{key}=1000000000"))
    assert f"config key '{key}': 1000000000 is out of range; must be in [1, 4096]" in err
    with pytest.raises(ConfigError, match=r"must be in \[1, 4096\]"):
        selfmm.config("mosi", **{key: 4097})
    assert selfmm.config("mosi", **{key: 4096})


@pytest.mark.parametrize("args, shown", [
    (["--port", "70000"], "--port: expected an integer in [0, 65535], got 70000"),
    (["--port", "-1"], "--port: expected an integer in [0, 65535], got -1"),
    (["--max-upload-mb", "inf"], "--max-upload-mb: expected a finite number in (0, 10000], got inf"),
    (["--max-upload-mb", "nan"], "--max-upload-mb: expected a finite number in (0, 10000], got nan"),
    (["--max-upload-mb", "0"], "--max-upload-mb: expected a finite number in (0, 10000], got 0.0"),
    (["--max-seconds", "1e9"], "--max-seconds: expected a finite number in (0, 3600], got 1000000000.0"),
    (["--max-seconds=-inf"], "--max-seconds: expected a finite number in (0, 3600], got -inf"),
])
def test_serve_limits(args, shown, tmp_path, capsys):
    """Checked before the run is read or a port is bound (70000 served on 4464; inf crashed)."""
    pytest.importorskip("fastapi")
    assert shown in refused(capsys, ["serve", "--run", str(tmp_path / "absent"), *args])
