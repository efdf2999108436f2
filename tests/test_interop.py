"""MMSA interop: config_regression.json, self_mm weights under MMSA's names, MMSA's results CSV."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

import selfmm
from selfmm.cli import main
from selfmm.configuration import defaults_for, with_values
from selfmm.data.mmsa import load_features
from selfmm.encoder import load_encoder
from selfmm.errors import ConfigError, SelfMMError
from selfmm.inference import predict
from selfmm.interop import mmsa_results_row, write_mmsa_results
from selfmm.model import SelfMM
from selfmm.models import mmsa_to_selfmm, rename_mmsa_state_dict
from selfmm.results import write_results

# The shape of MMSA's config_regression.json: a datasetCommonParams block, other models'
# sections, and self_mm's commonParams + datasetParams (values changed from MMSA's published
# ones so that the test sees they were read).
MMSA_CONFIG = {
    "datasetCommonParams": {
        "dataset_root_dir": "/home/someone/MMSA-Standard",
        "mosi": {
            "aligned": {"featurePath": "MOSI/Processed/aligned_50.pkl", "seq_lens": [50, 50, 50],
                        "feature_dims": [768, 5, 20], "train_samples": 1284, "num_classes": 3,
                        "language": "en", "KeyEval": "Loss"},
            "unaligned": {"featurePath": "MOSI/Processed/unaligned_50.pkl",
                          "seq_lens": [50, 500, 375], "feature_dims": [768, 5, 20],
                          "train_samples": 1284, "num_classes": 3, "language": "en", "KeyEval": "Loss"},
        },
    },
    "tfn": {"commonParams": {"early_stop": 8}, "datasetParams": {"mosi": {"batch_size": 32}}},
    "self_mm": {
        "commonParams": {"need_data_aligned": False, "need_model_aligned": False,
                         "need_normalized": False, "use_bert": True, "use_finetune": True,
                         "save_labels": False, "excludeZero": True, "early_stop": 6,
                         "update_epochs": 2},
        "datasetParams": {
            "mosi": {"batch_size": 32, "learning_rate_bert": 4e-5, "learning_rate_audio": 0.001,
                     "learning_rate_video": 0.0001, "learning_rate_other": 0.002,
                     "weight_decay_bert": 0.01, "weight_decay_audio": 0.0,
                     "weight_decay_video": 0.01, "weight_decay_other": 0.0,
                     "a_lstm_hidden_size": 32, "v_lstm_hidden_size": 64, "a_lstm_layers": 1,
                     "v_lstm_layers": 1, "text_out": 768, "audio_out": 8, "video_out": 16,
                     "a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0, "t_bert_dropout": 0.1,
                     "post_fusion_dim": 64, "post_text_dim": 16, "post_audio_dim": 8,
                     "post_video_dim": 16, "post_fusion_dropout": 0.2, "post_text_dropout": 0.3,
                     "post_audio_dropout": 0.0, "post_video_dropout": 0.1, "H": 2.0,
                     "transformers": "bert", "pretrained": "bert-base-cased"},
            "sims": {"batch_size": 32, "H": 1.0, "use_finetune": False,
                     "pretrained": "bert-base-chinese"},
        },
    },
}


@pytest.fixture
def mmsa_config(tmp_path):
    def make(**changes):
        obj = json.loads(json.dumps(MMSA_CONFIG))
        obj["self_mm"]["datasetParams"]["mosi"].update(changes)
        path = tmp_path / "config_regression.json"
        path.write_text(json.dumps(obj))
        return str(path)

    return make


def test_mmsa_config_maps_every_self_mm_setting(mmsa_config):
    with pytest.warns(UserWarning) as record:
        cfg = selfmm.config("mosi", mmsa_config())
    message = str(record[0].message)
    for name in ("featurePath", "seq_lens", "feature_dims", "KeyEval", "need_data_aligned",
                 "text_out", "t_bert_dropout"):
        assert name in message
    o, m, lab, t = cfg.optim, cfg.model, cfg.labels, cfg.train
    assert (o.batch_size, o.lr_text, o.lr_audio, o.lr_vision, o.lr_other) == (32, 4e-5, 1e-3, 1e-4, 2e-3)
    assert (o.weight_decay_text, o.weight_decay_audio, o.weight_decay_vision,
            o.weight_decay_other, o.accumulation_steps) == (0.01, 0.0, 0.01, 0.0, 2)
    assert (m.audio_hidden, m.vision_hidden, m.audio_out, m.vision_out) == (32, 64, 8, 16)
    assert (m.post_fusion_dim, m.post_text_dim, m.post_audio_dim, m.post_vision_dim) == (64, 16, 8, 16)
    assert (m.post_fusion_dropout, m.post_text_dropout, m.post_audio_dropout,
            m.post_vision_dropout) == (0.2, 0.3, 0.0, 0.1)
    assert (m.text_model, m.freeze_encoder, lab.H, lab.exclude_zero, t.early_stop) == \
        ("bert-base-cased", False, 2.0, True, 6)


def test_mmsa_config_section_follows_the_dataset(mmsa_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = selfmm.config("sims", mmsa_config(), H="0.5")
    # sims: its own section on top of commonParams; --set still wins; use_finetune negated.
    assert (cfg.labels.H, cfg.model.freeze_encoder, cfg.train.early_stop) == (0.5, True, 6)
    assert cfg.model.vision_hidden == defaults_for("sims").model.vision_hidden
    with pytest.raises(ConfigError, match="no datasetParams for 'mosei'"):
        selfmm.config("mosei", mmsa_config())


@pytest.mark.parametrize("change, match", [
    ({"a_lstm_layers": 2}, "a_lstm_layers=2 is not supported"),
    ({"need_normalized": True}, "need_normalized=True is not supported"),
    ({"attention_heads": 4}, "unknown MMSA self_mm settings: attention_heads"),
    ({"post_text_dropout": 1.5}, "post_text_dropout"),
])
def test_mmsa_config_refuses_what_it_cannot_honour(mmsa_config, change, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=match):
            selfmm.config("mosi", mmsa_config(**change))


# ---------------------------------------------------------------------------------------------
# Weights: a state_dict with MMSA's names and shapes, built from one of our models.

# Written from MMSA's SELF_MM module tree (AMIO.Model -> text_model.model (BertModel),
# audio_model/video_model (AuViSubNet: rnn, linear_1), post_<x>_layer_1..3).
MMSA_NAMES = [
    ("text_encoder.", "Model.text_model.model."),
    ("audio_net.rnn.", "Model.audio_model.rnn."),
    ("audio_net.linear.", "Model.audio_model.linear_1."),
    ("vision_net.rnn.", "Model.video_model.rnn."),
    ("vision_net.linear.", "Model.video_model.linear_1."),
    ("fusion_head.layer_", "Model.post_fusion_layer_"),
    ("text_head.layer_", "Model.post_text_layer_"),
    ("audio_head.layer_", "Model.post_audio_layer_"),
    ("vision_head.layer_", "Model.post_video_layer_"),
]


def as_mmsa(state):
    out = {}
    for key, value in state.items():
        prefix = next(p for p in MMSA_NAMES if key.startswith(p[0]))
        out[prefix[1] + key[len(prefix[0]):]] = value.clone()
    return out


@pytest.fixture(scope="module")
def original(tiny_bert, synth_path):
    data = load_features(synth_path(aligned=True), "mosi")
    cfg = with_values(defaults_for("mosi"), {"text_model": str(tiny_bert)})
    torch.manual_seed(3)
    model = SelfMM(load_encoder(str(tiny_bert)), data.audio_dim, data.vision_dim, cfg.model).eval()
    state = as_mmsa(model.state_dict())
    # MMSA's own names and shapes for the mosi config on a width-32 encoder.
    assert state["Model.audio_model.rnn.weight_ih_l0"].shape == (4 * 16, 5)
    assert state["Model.video_model.linear_1.weight"].shape == (32, 32)
    assert state["Model.post_fusion_layer_1.weight"].shape == (128, 32 + 16 + 32)
    assert state["Model.post_text_layer_3.weight"].shape == (1, 32)
    # Older transformers saved BERT's position_ids buffer; an import must tolerate it.
    state["Model.text_model.model.embeddings.position_ids"] = torch.arange(64)[None]
    return cfg, model, state, data


def test_import_mmsa_then_evaluate_gives_the_same_predictions(original, tiny_bert, synth_path, tmp_path):
    cfg, model, state, data = original
    weights = tmp_path / "self_mm-mosi.pth"
    torch.save(state, weights)
    run = tmp_path / "imported"
    assert main(["import-mmsa", str(weights), "--dataset", "mosi", "--text-model", str(tiny_bert),
                 "--out", str(run), "--seed", "1111"]) == 0
    assert not (run / "metrics.json").exists()
    saved = json.loads((run / "config.json").read_text())
    assert (saved["seed"], saved["data"]["audio_dim"], saved["data"]["vision_dim"]) == (1111, 5, 20)
    want = predict(model, data.splits["test"], torch.device("cpu"))
    got = selfmm.load_run(run).predict(data, device="cpu")
    for s in "mtav":
        np.testing.assert_array_equal([row[f"pred_{s}"] for row in got], want.heads[s])
    assert main(["evaluate", "--run", str(run), "--data", str(synth_path(aligned=True))]) == 0


def test_import_accepts_keys_without_the_wrapper_prefix(original):
    cfg, model, state, _ = original
    bare = {k[len("Model."):]: v for k, v in state.items()}
    loaded = mmsa_to_selfmm(bare, cfg, load_encoder(cfg.model.text_model))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_import_names_mismatched_shapes_and_the_widths_they_imply(original, tiny_bert, tmp_path, capsys):
    _, _, state, _ = original
    weights = tmp_path / "w.pth"
    torch.save(state, weights)
    code = main(["import-mmsa", str(weights), "--dataset", "mosi", "--text-model", str(tiny_bert),
                 "--set", "post_text_dim=64", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Model.post_text_layer_1.weight is (32, 32) in the file but (64, 32) here" in err
    assert "post_text_dim=32" in err
    assert not (tmp_path / "run").exists()


def test_import_lists_unmapped_and_missing_keys(original):
    cfg, _, state, _ = original
    encoder = load_encoder(cfg.model.text_model)
    extra = dict(state, **{"Model.alignNet.weight": torch.zeros(1)})
    with pytest.raises(SelfMMError, match="no counterpart in selfmm's model: Model.alignNet.weight"):
        mmsa_to_selfmm(extra, cfg, encoder)
    short = {k: v for k, v in state.items() if not k.startswith("Model.post_audio_layer_3")}
    with pytest.raises(SelfMMError, match="missing keys: Model.post_audio_layer_3.weight, "
                                          "Model.post_audio_layer_3.bias"):
        mmsa_to_selfmm(short, cfg, encoder)
    renamed, origin, unmapped = rename_mmsa_state_dict({"Model.audio_model.linear_1.bias": torch.zeros(2)})
    assert (list(renamed), unmapped) == (["audio_net.linear.bias"], [])


def test_import_refuses_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"epoch": 3}, bad)
    assert main(["import-mmsa", str(bad), "--dataset", "mosi", "--out", str(tmp_path / "r")]) == 2
    assert "expected a state_dict" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Results CSV

PER_SEED = {
    1111: {"Mult_acc_2": 0.8, "Mult_acc_3": 0.6, "Mult_acc_5": 0.4, "F1_score": 0.81, "MAE": 0.42, "Corr": 0.6},
    1112: {"Mult_acc_2": 0.7, "Mult_acc_3": 0.65, "Mult_acc_5": 0.41, "F1_score": 0.79, "MAE": 0.44, "Corr": 0.58},
}


def test_mmsa_results_row_is_mean_and_std_x100_as_tuple_text():
    header, row = mmsa_results_row("self_mm", PER_SEED)
    assert header == ["Model", "Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"]
    # np.std is the population std (ddof=0), as MMSA's.
    assert row == ["self_mm", "(75.0, 5.0)", "(62.5, 2.5)", "(40.5, 0.5)", "(80.0, 1.0)",
                   "(43.0, 1.0)", "(59.0, 1.0)"]


def test_export_mmsa_appends_rows_like_mmsa(tmp_path, capsys):
    run = tmp_path / "run"
    write_results(run, {}, PER_SEED)
    out = tmp_path / "sims.csv"
    assert main(["export-mmsa", str(run), "--out", str(out)]) == 0
    write_mmsa_results(out, "self_mm_tuned", {1: PER_SEED[1111]})
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert [r[0] for r in rows] == ["Model", "self_mm", "self_mm_tuned"]
    assert rows[2][1] == "(80.0, 0.0)"
    with pytest.raises(SelfMMError, match="has columns"):
        write_mmsa_results(out, "x", {1: {"MAE": 0.5}})
    assert main(["export-mmsa", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "results.json does not exist" in capsys.readouterr().err
