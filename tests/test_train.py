"""End to end: the model's edge cases, the loop's accumulation, train + evaluate through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from selfmm import configuration as config
from selfmm.cli import main
from selfmm.data.batch import Collator
from selfmm.data.mmsa import load_features
from selfmm.model import SelfMM
from selfmm.optim import make_optimizer
from selfmm.runtime import seed_everything
from selfmm.train import task_losses


@pytest.fixture(scope="module")
def data(synth_path):
    return load_features(synth_path("mosi", scale=0.03))


def make_model(tiny_bert: Path, data, seed: int = 0, **overrides) -> SelfMM:
    cfg = config.with_values(config.defaults_for("mosi"), overrides)
    seed_everything(seed)
    return SelfMM(AutoModel.from_pretrained(tiny_bert), data.audio_dim, data.vision_dim, cfg.model)


def test_batch_of_one_and_zero_length_clip(tiny_bert, data):
    model = make_model(tiny_bert, data).eval()
    split = data.splits["train"]
    batch = Collator(split)([0])
    batch.audio_lengths[:] = 0  # a clip with no audio frame at all
    out = model(batch)
    assert out.predictions.m.shape == (1,)
    assert out.features.a.shape == (1, 16) and out.features.m.shape == (1, 128)
    assert all(torch.isfinite(t).all() for t in out.predictions + out.features)
    # The zero-length clip's LSTM state is zeros, so the audio vector is the linear bias.
    audio = model.audio_net(batch.audio, batch.audio_lengths)
    torch.testing.assert_close(audio[0], model.audio_net.linear.bias)


def test_dynamic_padding_matches_full_padding(tiny_bert, data):
    model = make_model(tiny_bert, data).eval()
    split = data.splits["valid"]
    rows = list(range(min(8, len(split))))
    cut, full = Collator(split)(rows), Collator(split, pad_to_max=True)(rows)
    assert cut.audio.shape[1] < full.audio.shape[1] or cut.text.shape[2] < full.text.shape[2]
    with torch.no_grad():
        a, b = model(cut), model(full)
    for x, y in zip(a.predictions + a.features, b.predictions + b.features, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_five_parameter_groups(tiny_bert, data):
    model = make_model(tiny_bert, data)
    groups = make_optimizer(model, config.defaults_for("mosi")).param_groups
    assert [g["name"] for g in groups] == ["text", "text_no_decay", "audio", "vision", "other"]
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 1e-3
    assert [g["lr"] for g in groups] == [5e-5, 5e-5, 5e-3, 5e-3, 1e-3]
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])
    # The pooler is not part of Self-MM: it is frozen, not optimized.
    assert not any(p.requires_grad for p in model.text_encoder.pooler.parameters())


def test_task_losses_follow_active_tasks():
    from selfmm.model import Heads

    p = Heads(*(torch.tensor([1.0, -1.0]) for _ in range(4)))
    labels = {s: torch.tensor([0.0, 0.0]) for s in "mtav"}
    weights = {s: torch.tensor([0.5, 1.0]) for s in "tav"}
    assert set(task_losses(p, labels, weights, "M")) == {"m"}
    losses = task_losses(p, labels, weights, "MTV")
    assert set(losses) == {"m", "t", "v"}
    assert losses["m"].item() == pytest.approx(1.0)
    assert losses["t"].item() == pytest.approx(0.75)  # mean(0.5 * 1, 1.0 * 1)


def train(tmp: Path, data_file: Path, tiny_bert: Path, *extra: str) -> int:
    return main(["train", "--dataset", "mosi", "--data", str(data_file), "--out", str(tmp),
                 "--text-model", str(tiny_bert), "--seeds", "7", "--max-epochs", "2", *extra])


def test_train_then_evaluate_reproduces_metrics(tmp_path, synth_path, tiny_bert, capsys):
    data_file = synth_path("mosi", scale=0.03)
    run = tmp_path / "run"
    assert train(run, data_file, tiny_bert) == 0
    table = capsys.readouterr().out
    assert "Has0_acc_2" in table and "mean" in table

    results = json.loads((run / "results.json").read_text())
    assert results["config"]["dataset"] == "mosi"
    assert set(results["mean"]) == set(results["seeds"]["7"])
    rows = list(csv.reader((run / "results.csv").open()))
    assert rows[0][0] == "seed" and [r[0] for r in rows[1:]] == ["7", "mean", "std"]

    seed_dir = run / "seed-7"
    for name in ("best.safetensors", "config.json", "history.json", "ulabels.npz",
                 "test_predictions.csv", "metrics.json", "encoder/config.json"):
        assert (seed_dir / name).exists(), name
    ulabels = np.load(seed_dir / "ulabels.npz")
    n_train = len(load_features(data_file).splits["train"])
    assert ulabels["t"].shape == (3, n_train)  # init + 2 epochs
    np.testing.assert_array_equal(ulabels["t"][0], ulabels["m"])  # labels start at m
    preds = list(csv.DictReader((seed_dir / "test_predictions.csv").open()))
    assert set(preds[0]) == {"id", "label", "pred_m", "pred_t", "pred_a", "pred_v"}

    assert main(["evaluate", "--run", str(seed_dir), "--data", str(data_file), "--json"]) == 0
    out = capsys.readouterr()
    assert "reproduces the recorded test metrics" in out.err
    printed = json.loads(out.out[out.out.index("{"):])
    assert printed["7"] == json.loads((seed_dir / "metrics.json").read_text())["test"]


def test_same_seed_gives_identical_metrics(tmp_path, synth_path, tiny_bert):
    data_file = synth_path("mosi", scale=0.03, aligned=True)
    assert train(tmp_path / "a", data_file, tiny_bert) == 0
    assert train(tmp_path / "b", data_file, tiny_bert) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["seeds"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["seeds"]
    assert a == b
    la, lb = (np.load(tmp_path / r / "seed-7" / "ulabels.npz") for r in "ab")
    for s in "tav":
        np.testing.assert_array_equal(la[s], lb[s])


def test_last_partial_accumulation_window_is_stepped(tmp_path, synth_path, tiny_bert):
    """With fewer batches per epoch than accumulation steps, the reference never updates the
    weights; we step the remainder, so the fusion head changes after one epoch."""
    from safetensors.torch import load_file

    data_file = synth_path("mosi", scale=0.03, aligned=True)
    run = tmp_path / "run"
    assert train(run, data_file, tiny_bert, "--set", "accumulation_steps=1000",
                 "--max-epochs", "1", "--freeze-encoder") == 0
    trained = load_file(str(run / "seed-7" / "best.safetensors"))
    fresh = make_model(tiny_bert, load_features(data_file), seed=7, freeze_encoder=True)
    assert not torch.equal(trained["fusion_head.layer_3.weight"], fresh.fusion_head.layer_3.weight)
    # The frozen encoder did not move.
    for name, value in fresh.text_encoder.state_dict().items():
        torch.testing.assert_close(trained[f"text_encoder.{name}"], value)


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "mosi", "--data", "missing.pkl", "--out", "o"], "does not exist"),
    (["train", "--dataset", "mosi", "--data", "x.pkl", "--out", "o", "--set", "nope=1"], "unknown config key"),
    (["train", "--dataset", "mosi", "--data", "x.pkl", "--out", "o", "--set", "lr_text"], "key=value"),
    (["train", "--dataset", "mosi", "--data", "x.pkl", "--out", "o", "--set", "batch_size=abc"], "integer"),
    (["evaluate", "--run", "nowhere", "--data", "x.pkl"], "run nowhere does not exist"),
    (["inspect", "missing.pkl"], "does not exist"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "imdb", "--data", "x", "--out", "o"])
    assert exc.value.code == 2


def test_existing_run_directory_is_never_overwritten(tmp_path, synth_path, tiny_bert, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert train(run, synth_path("mosi", scale=0.03, aligned=True), tiny_bert) == 2
    assert "holds files that are not part of a selfmm run (notes.txt)" in capsys.readouterr().err
    # Not even --resume writes into a folder that holds something else.
    assert train(run, synth_path("mosi", scale=0.03, aligned=True), tiny_bert, "--resume") == 2
    assert "(notes.txt)" in capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "mine" and sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_file_failing_validation_exits_2(tmp_path, capsys):
    import pickle

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"train": {}, "valid": {}, "test": {}}))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.pkl" in err and "train" in err


def test_token_ids_outside_the_vocabulary_are_refused_before_training(tmp_path, synth_path, tiny_bert, capsys):
    import pickle

    from selfmm.data.unpickle import safe_load

    raw = safe_load(synth_path("mosi", scale=0.03, aligned=True))
    raw["valid"]["text_bert"][3, 0, 1] = 40000  # the tiny BERT has 30522 ids
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(raw, protocol=4))
    assert train(tmp_path / "run", bad, tiny_bert) == 2
    err = capsys.readouterr().err
    assert "bad.pkl" in err and "'valid'" in err and "40000" in err


def test_texts_longer_than_the_encoder_positions_are_refused_before_training(tmp_path, synth_path, capsys):
    import pickle

    from transformers import BertConfig, BertModel

    from selfmm.data.unpickle import safe_load

    raw = safe_load(synth_path("mosi", scale=0.03, aligned=True))
    length = raw["train"]["text_bert"].shape[2]  # 50 in the mosi profile
    raw["train"]["text_bert"][2, 1, :] = 1  # one text fills every position
    bad = tmp_path / "long.pkl"
    bad.write_bytes(pickle.dumps(raw, protocol=4))
    short = tmp_path / "short-bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=length - 1)).save_pretrained(short)
    assert train(tmp_path / "run", bad, short) == 2
    err = capsys.readouterr().err
    assert "long.pkl" in err and "'train'" in err and f"{length} tokens" in err and "Traceback" not in err
