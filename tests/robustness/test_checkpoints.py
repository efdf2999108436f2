"""Checkpoints and outputs: atomic, checksummed, refused when damaged, never unpickled freely."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from selfmm import checkpoint
from selfmm.checkpoint import CheckpointError
from selfmm.cli import main
from selfmm.io import atomic_writer, write_json

SRC = Path(__file__).resolve().parents[2] / "src" / "selfmm"


def state() -> dict:
    return {"epoch": 3, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "history": [{"valid_loss": 0.5}]}


def test_round_trip_and_trailer(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, state())
    loaded = checkpoint.load(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state()["model"]["w"])
    assert re.search(rb"\nSELFMM-SHA256:[0-9a-f]{64}\n$", path.read_bytes())


def test_every_truncation_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, state())
    whole = path.read_bytes()
    for end in sorted({0, 1, 10, len(whole) // 3, len(whole) // 2, len(whole) - 80, len(whole) - 1}):
        path.write_bytes(whole[:end])
        with pytest.raises(CheckpointError, match=r"c\.pt: (no checksum trailer|checksum mismatch)"):
            checkpoint.load(path)


def test_every_altered_byte_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, state())
    whole = path.read_bytes()
    for where in range(0, len(whole), max(1, len(whole) // 97)):
        altered = bytearray(whole)
        altered[where] ^= 0x01
        path.write_bytes(bytes(altered))
        with pytest.raises(CheckpointError, match=r"c\.pt: "):
            checkpoint.load(path)


def with_trailer(payload: bytes) -> bytes:
    """What checkpoint.save writes around `payload`: anyone can compute it."""
    return payload + b"\nSELFMM-SHA256:" + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def test_plain_torch_file_and_other_versions_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(state(), plain)
    with pytest.raises(CheckpointError, match="no checksum trailer"):
        checkpoint.load(plain)
    buffer = io.BytesIO()
    torch.save({**state(), "format_version": 99}, buffer)
    future = tmp_path / "future.pt"
    future.write_bytes(with_trailer(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="format version 99, expected"):
        checkpoint.load(future)


class _Payload:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_code_in_a_checkpoint_with_a_valid_checksum_never_runs(tmp_path):
    """The checksum only detects damage: an attacker can recompute it. weights_only refuses."""
    canary = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    # torch.load also reads plain pickles (its legacy format): what an attacker would ship.
    evil.write_bytes(with_trailer(pickle.dumps({"format_version": checkpoint.FORMAT_VERSION,
                                                "model": _Payload(canary)})))
    with pytest.raises(CheckpointError, match=r"evil\.pt: unreadable"):
        checkpoint.load(evil)
    assert not canary.exists()


def test_load_newest_falls_back_and_prune_keeps_two(tmp_path):
    for epoch in (1, 2, 3, 4):
        checkpoint.save(checkpoint.epoch_path(tmp_path, epoch), {**state(), "epoch": epoch})
    checkpoint.prune(tmp_path)
    assert checkpoint.saved_epochs(tmp_path) == [4, 3]
    newest = checkpoint.epoch_path(tmp_path, 4)
    newest.write_bytes(newest.read_bytes()[:-10])
    found, problems = checkpoint.load_newest(tmp_path)
    assert found["epoch"] == 3 and len(problems) == 1 and "checkpoint-epoch0004.pt" in problems[0]
    checkpoint.epoch_path(tmp_path, 3).write_bytes(b"")
    assert checkpoint.load_newest(tmp_path)[0] is None


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"old": 1})
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as handle:
            handle.write('{"new": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_weights_are_only_read_safely():
    """Source scan: torch.load always with weights_only=True, np.load never with pickles, and
    no unpickling outside the restricted feature-file loader (selfmm/data/unpickle.py)."""
    unpicklers = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "pickle" and node.attr in ("_Unpickler", "Unpickler", "load", "loads")):
                unpicklers.append(path.relative_to(SRC).as_posix())
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            call = f"{node.func.value.id}.{node.func.attr}"
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            where = f"{path}:{node.lineno}: {call}"
            if call == "torch.load":
                assert keywords.get("weights_only") is True, where
            if call == "np.load":
                assert keywords.get("allow_pickle") is not True, where
    # The scan must see the restricted unpickler itself, or it proves nothing.
    assert set(unpicklers) == {"data/unpickle.py"}, unpicklers


# --- through the command line --------------------------------------------------------------


def train(out: Path, data: Path, bert: Path, *extra: str) -> int:
    return main(["train", "--dataset", "mosi", "--data", str(data), "--out", str(out), "--text-model", str(bert),
                 "--seeds", "7", "--set", "batch_size=8", *extra])


def final(out: Path) -> tuple:
    seed = out / "seed-7"
    ulabels = np.load(seed / "ulabels.npz")  # compared by value: a zip entry carries its write time
    return (json.loads((seed / "metrics.json").read_text()), (seed / "test_predictions.csv").read_text(),
            {k: ulabels[k].tolist() for k in ulabels.files})


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, synth_path, tiny_bert, capsys):
    data = synth_path("mosi", scale=0.02)
    assert train(tmp_path / "a", data, tiny_bert, "--max-epochs", "3") == 0
    assert train(tmp_path / "b", data, tiny_bert, "--max-epochs", "3") == 0
    seed = tmp_path / "b" / "seed-7"
    # As if killed after epoch 3's checkpoint was damaged and before the seed finished.
    for name in ("metrics.json", "test_predictions.csv"):
        (seed / name).unlink()
    (tmp_path / "b" / "results.json").unlink()
    newest = checkpoint.epoch_path(seed, 3)
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])
    capsys.readouterr()
    assert train(tmp_path / "b", data, tiny_bert, "--max-epochs", "3", "--resume") == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "checkpoint-epoch0003.pt" in err and "resuming after epoch 2" in err
    assert final(tmp_path / "a") == final(tmp_path / "b")
    assert checkpoint.load(newest)["epoch"] == 3  # rewritten whole


def test_resume_with_a_frozen_encoder_matches_an_uninterrupted_run(tmp_path, synth_path, tiny_bert):
    """A frozen encoder's text vectors are computed once; on resume that must not draw from the
    random state the checkpoint restored (it did: the DataLoader draws a seed per iterator)."""
    data = synth_path("mosi", scale=0.02)
    assert train(tmp_path / "a", data, tiny_bert, "--max-epochs", "3", "--freeze-encoder") == 0
    assert train(tmp_path / "b", data, tiny_bert, "--max-epochs", "2", "--freeze-encoder") == 0
    for name in ("metrics.json", "test_predictions.csv"):
        (tmp_path / "b" / "seed-7" / name).unlink()
    assert train(tmp_path / "b", data, tiny_bert, "--max-epochs", "3", "--freeze-encoder", "--resume") == 0
    assert final(tmp_path / "a") == final(tmp_path / "b")
    shutil.rmtree(tmp_path / "a")


def test_an_epochs_files_are_written_while_the_next_epoch_trains(tmp_path, synth_path, tiny_bert, monkeypatch):
    """Epoch 1's checkpoint is written by the writer thread while epoch 2 trains (the write here
    waits until epoch 2's steps are done), and holds epoch 1's weights although epoch 2 has
    changed them in place by then."""
    import threading

    import selfmm
    from selfmm import train
    from selfmm.data.mmsa import load_features

    real_epoch, real_write = train.train_epoch, checkpoint.write
    at_end: dict[int, dict[str, torch.Tensor]] = {}
    epoch_two_trained = threading.Event()

    def recorded_epoch(model, *args, **kwargs):
        loss = real_epoch(model, *args, **kwargs)
        epoch = args[3]
        at_end[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        if epoch == 2:
            epoch_two_trained.set()
        return loss

    def delayed_write(path, payload):
        if path.name == "checkpoint-epoch0001.pt":
            assert epoch_two_trained.wait(120), "epoch 2 waited for epoch 1's checkpoint"
        real_write(path, payload)

    monkeypatch.setattr(train, "train_epoch", recorded_epoch)
    monkeypatch.setattr(checkpoint, "write", delayed_write)
    cfg = selfmm.config("mosi", batch_size=8, max_epochs=2, text_model=str(tiny_bert))
    with pytest.warns(UserWarning, match="non-finite"):
        data = load_features(synth_path("mosi", scale=0.02))
    selfmm.fit(cfg, data, tmp_path / "run", seeds=[7], device="cpu", progress=False)
    seed = tmp_path / "run" / "seed-7"
    assert checkpoint.saved_epochs(seed) == [2, 1]
    for epoch in (1, 2):
        saved = checkpoint.load(checkpoint.epoch_path(seed, epoch))["model"]
        assert all(torch.equal(saved[k], at_end[epoch][k]) for k in at_end[epoch]), epoch
    assert not all(torch.equal(at_end[1][k], at_end[2][k]) for k in at_end[1])
    assert not list(seed.glob("*.tmp")) and not list(seed.glob(".*.tmp"))
