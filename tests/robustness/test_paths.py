"""Messages that say what a path is: a folder named like a video, a symbolic link loop, a FIFO
where a file is read, an empty transcript (selfmm.io.check_file, selfmm.cli.common); and the
reproduction's own words for the protocol's "no epoch limit"."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import selfmm
from selfmm import api
from selfmm.cli import main
from selfmm.metrics import regression_metrics


def refused(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture()
def paths(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "clip.mp4").mkdir()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    os.mkfifo(tmp_path / "fifo")
    return {"folder": tmp_path / "clip.mp4", "loop": loop, "fifo": tmp_path / "fifo", "root": tmp_path}


def test_a_folder_named_like_a_video(paths, capsys):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    pytest.importorskip("opensmile")
    folder, out = paths["folder"], str(paths["root"] / "o.pkl")
    assert (f"video {folder} is a folder, not a video file"
            in refused(capsys, ["extract", str(folder), "--transcript", "hi", "--out", out]))
    assert (f"input {folder} is a folder, not a video file"
            in refused(capsys, ["predict", str(folder), "--run", str(paths["root"]), "--transcript", "hi"]))


def test_a_symbolic_link_loop_is_named_as_one(paths, capsys):
    loop, root = paths["loop"], paths["root"]
    data = ["--dataset", "mosi", "--data", str(loop), "--out", str(root / "run")]
    for args, what in [
        (["train", *data], "data file"),
        (["inspect", str(loop)], "data file"),
        (["cache", str(loop), "--out", str(root / "c")], "feature file"),
        (["train", "--dataset", "mosi", "--data", str(root / "x.pkl"), "--out", str(root / "run"),
          "--config", str(loop)], "config file"),
        (["predict", str(loop), "--run", str(root)], "input"),
        (["extract-dataset", str(root), "--labels", str(loop), "--out", str(root / "o.pkl"),
          "--text-model", "minilm"], "label file"),
    ]:
        if args[0] == "extract-dataset":
            pytest.importorskip("av")
            pytest.importorskip("opensmile")
        assert f"{what} {loop} is a symbolic link loop" in refused(capsys, args), args
    assert not (root / "run").exists() and not (root / "c").exists()


def test_a_fifo_is_never_read_as_a_file(paths, capsys):
    """Reading a FIFO waits for a writer forever: refused by what it is, before any read."""
    fifo, root = paths["fifo"], paths["root"]
    err = refused(capsys, ["train", "--dataset", "mosi", "--data", str(fifo), "--out", str(root / "run")])
    assert f"data file {fifo} is a FIFO (a named pipe), not a feature file" in err
    assert f"{fifo} is a FIFO" in refused(capsys, ["inspect", str(fifo)])


@pytest.mark.parametrize("value, words", [
    ("", "--transcript is empty: give the words said in the clip, or the path of a UTF-8 text file"),
    ("   ", "--transcript is empty"),
    ("LOOP", "a symbolic link loop, not a text file"),
    ("FIFO", "a FIFO (a named pipe), not a text file"),
    ("FOLDER", "a folder, not a text file"),
])
def test_transcripts_that_are_not_words(value, words, paths, capsys):
    value = {"LOOP": str(paths["loop"]), "FIFO": str(paths["fifo"]), "FOLDER": str(paths["root"])}.get(value, value)
    video = paths["root"] / "v.mp4"
    assert words in refused(capsys, ["extract", str(video), "--transcript", value,
                                     "--out", str(paths["root"] / "o.pkl")])
    (paths["root"] / "empty.txt").write_text("\n")
    assert "the file is empty" in refused(capsys, ["extract", str(video), "--transcript",
                                                   str(paths["root"] / "empty.txt"),
                                                   "--out", str(paths["root"] / "o.pkl")])


def test_no_epoch_limit_is_the_protocol(monkeypatch, tmp_path, synth_path):
    """max_epochs=0 is no limit (early stopping alone), as the protocol trains: not flagged."""
    seen = {}

    def fit(cfg, data, out, seeds, **kwargs):
        seen["max_epochs"] = cfg.train.max_epochs
        metrics = regression_metrics(np.array([0.5, -0.5, 1.0]), np.array([1.0, -1.0, 2.0]), "mosi")
        results = {"seeds": {"1111": metrics}, "provenance": {}}
        return api.Run(Path(out), {}, results)

    monkeypatch.setattr(api, "fit", fit)
    monkeypatch.setattr(api, "write_reproduction", lambda *args: None)
    monkeypatch.setattr(api, "check_labels", lambda *args: None)
    data = synth_path()
    record = selfmm.reproduce("mosi", data, tmp_path / "run", max_epochs=0)
    assert seen["max_epochs"] == 0 and not any("epoch" in note for note in record["notes"])
    record = selfmm.reproduce("mosi", data, tmp_path / "run", max_epochs=3)
    assert "at most 3 epoch(s) instead of early stopping alone" in record["notes"]
