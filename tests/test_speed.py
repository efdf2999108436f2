"""Speed features keep results: the frozen encoder's cache, the memory-mapped feature cache, the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from selfmm import configuration as config
from selfmm.cli import main
from selfmm.data.cache import MANIFEST, write_cache
from selfmm.data.mmsa import load_features
from selfmm.errors import DataError
from selfmm.inference import encode_all_text
from selfmm.model import SelfMM
from selfmm.models import selfmm_builder
from selfmm.optim import make_optimizer
from selfmm.runtime import seed_everything
from selfmm.train import fit_seed, train_epoch, train_loader
from selfmm.ulgm import UnimodalLabelGenerator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(synth_path):
    with pytest.warns(UserWarning, match="non-finite"):
        return load_features(synth_path("mosi", scale=0.03))


def frozen_config(tiny_bert: Path, **overrides) -> config.Config:
    return config.with_values(config.defaults_for("mosi"),
                              {"text_model": str(tiny_bert), "freeze_encoder": True, **overrides})


def test_frozen_encoder_runs_once_per_clip(tiny_bert, data, tmp_path, monkeypatch):
    import selfmm.model
    from selfmm.bert import cls_vector

    rows: list[int] = []

    def counted(encoder, ids, mask, types, lengths=None):
        rows.append(ids.shape[0])
        return cls_vector(encoder, ids, mask, types, lengths)

    monkeypatch.setattr(selfmm.model, "cls_vector", counted)
    cfg = frozen_config(tiny_bert, max_epochs=2)
    fit_seed(cfg, data, tmp_path / "seed-1", 1, torch.device("cpu"), selfmm_builder(cfg),
             log=lambda s: None)
    assert len(json.loads((tmp_path / "seed-1" / "history.json").read_text())) == 2
    # Two epochs of training, two validations and the test: each clip went through it once.
    assert sum(rows) == sum(len(s) for s in data.splits.values())


def test_frozen_encoder_cache_matches_running_the_encoder(tiny_bert, data):
    cfg = frozen_config(tiny_bert)
    train = data.splits["train"]
    device = torch.device("cpu")
    runs = []
    for cached in (False, True):
        seed_everything(3)
        model = SelfMM(AutoModel.from_pretrained(tiny_bert), data.audio_dim, data.vision_dim, cfg.model)
        optimizer = make_optimizer(model, cfg)
        ulgm = UnimodalLabelGenerator(len(train), {"m": 128, "t": 32, "a": 16, "v": 32}, H=3.0)
        ulgm.init_labels(torch.arange(len(train)), torch.as_tensor(train.labels))
        cache = encode_all_text(model, train, 64, device) if cached else None
        # Iterating a DataLoader draws from the global RNG: reseed so both runs drop out alike.
        torch.manual_seed(4)
        losses = [train_epoch(model, optimizer, train_loader(train, cfg, 3, epoch), ulgm, epoch, cfg,
                              device, text_cache=cache) for epoch in (1, 2)]
        runs.append((losses, model.state_dict(), ulgm.state_dict()))
    (loss_a, weights_a, ulgm_a), (loss_b, weights_b, ulgm_b) = runs
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], atol=1e-5, rtol=1e-5)
    for key in ulgm_a:
        torch.testing.assert_close(ulgm_a[key], ulgm_b[key], atol=1e-5, rtol=1e-5)


def test_cache_holds_the_validated_arrays_memory_mapped(synth_path, data, tmp_path):
    source = synth_path("mosi", scale=0.03)
    assert main(["cache", str(source), "--out", str(tmp_path / "c"), "--dataset", "mosi"]) == 0
    cached = load_features(tmp_path / "c", "mosi")
    assert cached.repairs == data.repairs and cached.repairs  # listed, not repeated on the arrays
    assert cached.aligned == data.aligned and cached.audio_dim == data.audio_dim
    for name, split in data.splits.items():
        other = cached.splits[name]
        for key in ("text_bert", "audio", "vision", "audio_lengths", "vision_lengths", "labels"):
            a, b = getattr(split, key), getattr(other, key)
            assert a.dtype == b.dtype and np.array_equal(a, b), (name, key)
        assert other.ids == split.ids and other.raw_text == split.raw_text
        assert sorted(other.unimodal_labels) == sorted(split.unimodal_labels)
        # The bulk stays on disk: read-only views of a file mapping, not arrays in memory.
        assert isinstance(other.audio.base, np.memmap) and not other.audio.flags.writeable
    # A second conversion needs --force; a label range the data breaks is still refused.
    assert main(["cache", str(source), "--out", str(tmp_path / "c")]) == 2
    with pytest.raises(DataError, match="outside the label range"):
        load_features(tmp_path / "c", "sims")


def test_aligned_file_round_trips(synth_path, tmp_path):
    source = synth_path("mosi", scale=0.03, aligned=True)
    with pytest.warns(UserWarning):
        original = load_features(source)
        write_cache(original, tmp_path / "c")
    cached = load_features(tmp_path / "c")
    assert cached.aligned and original.aligned
    for name, split in original.splits.items():
        assert np.array_equal(split.audio_lengths, cached.splits[name].audio_lengths)


def test_damaged_or_unfinished_cache_is_a_data_error(synth_path, tmp_path):
    with pytest.warns(UserWarning):
        out = write_cache(load_features(synth_path("mosi", scale=0.03)), tmp_path / "c")
    np.save(out / "valid.audio.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(DataError, match="damaged cache"):
        load_features(out)
    (out / MANIFEST).unlink()
    with pytest.raises(DataError, match="without manifest.json"):
        load_features(out)


def test_training_from_the_cache_equals_training_from_the_pickle(tiny_bert, synth_path, tmp_path):
    source = synth_path("mosi", scale=0.03)
    assert main(["cache", str(source), "--out", str(tmp_path / "c")]) == 0
    outputs = []
    for name, path in (("pickle", source), ("cache", tmp_path / "c")):
        args = ["train", "--dataset", "mosi", "--data", str(path), "--text-model", str(tiny_bert),
                "--max-epochs", "2", "--seeds", "1111", "--out", str(tmp_path / name), "--device", "cpu"]
        assert main(args) == 0
        seed = tmp_path / name / "seed-1111"
        outputs.append(((seed / "test_predictions.csv").read_text(),
                        json.loads((seed / "metrics.json").read_text()),
                        [h["valid_loss"] for h in json.loads((seed / "history.json").read_text())]))
    assert outputs[0] == outputs[1]


def test_benchmark_quick_prints_its_table(tiny_bert, tmp_path):
    from selfmm.precision import cpu_bf16

    out = tmp_path / "bench.json"
    precisions = ["fp32", "bf16"] if cpu_bf16() else ["fp32"]  # bf16 where this CPU trains in it
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                           "--text-model", str(tiny_bert), "--work", str(tmp_path / "work"),
                           "--json", str(out), "--precision", *precisions],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for heading in ("training step by phase", "whole epochs", "ULGM step", "opening a feature file",
                    "inference"):
        assert heading in done.stdout
    results = json.loads(out.read_text())
    assert set(results["phases"]) == set(results["train"]) == set(precisions)
    # What an epoch waits for (copying its files' contents), and the writing done behind it.
    assert all(t["checkpoint_seconds"] and t["checkpoint_write_seconds"] for t in results["train"].values())
    if len(precisions) == 2:
        assert "bf16 / fp32 samples/s, train (median epoch)" in done.stdout
    assert set(results["ulgm"]) == {"1000", "10000"}
    assert all(t["incremental"] > 0 and t["full"] > 0 for t in results["ulgm"].values())


def test_benchmark_on_a_missing_gpu_stops_instead_of_timing_the_cpu(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    bench.sync(torch.device("cpu"))
    bench.sync(torch.device("cuda", 0))
    assert waited == [torch.device("cuda", 0)]  # the timings wait for the GPU, and only there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--device", "cuda"])
    assert exc.value.code == 2


def test_gpu_benchmark_runs_its_measurements(synth_path, monkeypatch, tmp_path):
    """benchmarks/gpu.py, smoke-run on the CPU with torch.cuda's timing calls stubbed and a
    tiny encoder: every variant builds, trains and reports (the figures need a GPU)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("synchronize", "reset_peak_memory_stats", "set_sync_debug_mode", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: 2**30)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.setattr(bench, "STEPS", 2)
    monkeypatch.setattr(bench, "WARMUP", 1)
    monkeypatch.setattr(bench, "ENCODER", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                           "intermediate_size": 64})
    monkeypatch.setattr(bench.runtime, "configure_determinism", lambda device, on: None)
    with pytest.warns(UserWarning):
        data = load_features(synth_path("mosi", scale=0.03))
    rows = [bench.measure(data, "mosi", precision, attention, True, torch.device("cpu"))
            for precision, attention in (("fp32", "ours-sdpa"), ("bf16", "hf-sdpa"))]
    for row in rows:
        assert row["samples_per_s"] > 0 and row["peak_gib"] == 1.0 and row["syncs_per_step"] == 0
    text = bench.render({"device": "cpu", "torch": torch.__version__, "variants": rows})
    assert "hf-sdpa" in text and "ours-sdpa" in text
    tokens = bench.WordTokenizer()(["i liked it, a lot"], "max_length", True, 8, "np")
    assert tokens["input_ids"][0, 0] == 101 and tokens["attention_mask"][0].tolist() == [1] * 8  # [CLS] 6 [SEP]
