"""The CUDA path on a GPU: host syncs per training step, bit-identical reruns and resume under
`deterministic`, SDPA against eager attention, packed LSTMs against the CPU's, the random
state of the device in use, and start-up. Skipped without a GPU; `benchmarks/gpu_check.sh`
runs them first (`pytest -m cuda`). Everything is built here (a small BERT from a config,
random features), with no tokenizer or download, so they run on a bare GPU machine."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

# cuBLAS reads this when this process makes its first handle; deterministic runs need it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda", 0)


def feature_file(path: Path, clips: tuple[int, int, int] = (40, 12, 12), seed: int = 0) -> Path:
    """A small unaligned MMSA file: right-padded random texts, random frames and lengths."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in zip(("train", "valid", "test"), clips, strict=True):
        lengths = rng.integers(3, 30, n)
        text = np.zeros((n, 3, 30), np.float32)
        for i, k in enumerate(lengths):
            text[i, 0, :k] = rng.integers(1000, 2000, k)
            text[i, 0, 0] = 101
            text[i, 1, :k] = 1
        audio_lengths, vision_lengths = rng.integers(0, 40, n), rng.integers(1, 30, n)
        data[name] = {
            "text_bert": text,
            "audio": rng.standard_normal((n, 40, 5)).astype(np.float32),
            "vision": rng.standard_normal((n, 30, 7)).astype(np.float32),
            "audio_lengths": audio_lengths.tolist(), "vision_lengths": vision_lengths.tolist(),
            "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
            "id": np.array([f"{name}{i}" for i in range(n)], dtype=object),
        }
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return feature_file(tmp_path_factory.mktemp("data") / "small.pkl")


def fit(data_file: Path, encoder_dir: Path, out: Path, resume: bool = False, **overrides):
    import selfmm

    cfg = selfmm.config("mosi", text_model=str(encoder_dir), max_epochs=3, batch_size=8, **overrides)
    return selfmm.fit(cfg, selfmm.load_features(data_file), out, seeds=[5], device="cuda", resume=resume,
                      progress=False)


def outputs(out: Path) -> dict:
    seed = out / "seed-5"
    ulabels = np.load(seed / "ulabels.npz")
    return {"best": (seed / "best.safetensors").read_bytes(),
            "ulabels": {k: ulabels[k].tolist() for k in ulabels.files},
            "losses": [(h["train_loss"], h["valid_loss"]) for h in json.loads((seed / "history.json").read_text())],
            "predictions": (seed / "test_predictions.csv").read_text()}


def test_a_training_step_makes_at_most_two_host_syncs(data_file, encoder_dir):
    """torch.cuda's sync debug mode warns at every operation that makes the host wait: reads
    of device values and blocking copies alike."""
    from transformers import AutoModel

    from selfmm import configuration as config
    from selfmm.data.mmsa import load_features
    from selfmm.model import SelfMM
    from selfmm.optim import make_optimizer
    from selfmm.runtime import seed_everything
    from selfmm.train import train_epoch, train_loader
    from selfmm.ulgm import UnimodalLabelGenerator

    data = load_features(data_file)
    split = data.splits["train"]
    cfg = config.with_values(config.defaults_for("mosi"), {"batch_size": 4})
    seed_everything(0)
    model = SelfMM(AutoModel.from_pretrained(encoder_dir), data.audio_dim, data.vision_dim, cfg.model).to(CUDA)
    optimizer = make_optimizer(model, cfg)
    ulgm = UnimodalLabelGenerator(len(split), model.feature_dims, H=3.0).to(CUDA)
    ulgm.init_labels(torch.arange(len(split)), torch.as_tensor(split.labels))
    train_epoch(model, optimizer, train_loader(split, cfg, 0, 1, pin=True), ulgm, 1, cfg, CUDA)  # warm-up
    loader = train_loader(split, cfg, 0, 2, pin=True)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_epoch(model, optimizer, loader, ulgm, 2, cfg, CUDA)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    assert len(syncs) / len(loader) <= 2, [str(w.message)[:200] for w in syncs][:10]


def test_reruns_and_resume_are_bit_identical(data_file, encoder_dir, tmp_path):
    fit(data_file, encoder_dir, tmp_path / "a")
    fit(data_file, encoder_dir, tmp_path / "b")
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    # As if killed after epoch 2's checkpoint: resume from epoch 1's.
    seed = tmp_path / "b" / "seed-5"
    for name in ("metrics.json", "test_predictions.csv", "checkpoint-epoch0003.pt", "checkpoint-epoch0002.pt"):
        (seed / name).unlink()
    (tmp_path / "b" / "results.json").unlink()
    fit(data_file, encoder_dir, tmp_path / "b", resume=True)
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")


def test_sdpa_attention_equals_eager_attention(monkeypatch):
    from transformers import BertConfig, BertModel

    from selfmm import bert

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)).to(CUDA)
    lengths = torch.tensor([12, 3, 7, 1, 9])
    mask = (torch.arange(12) < lengths[:, None]).long()
    ids = torch.randint(1, 500, (5, 12)) * mask
    args = (ids.to(CUDA), mask.to(CUDA), torch.zeros_like(ids).to(CUDA), lengths)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        outs = []
        for kernel in ("eager", "sdpa"):
            monkeypatch.setitem(bert.ATTENTION, "cuda", kernel)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                outs.append(bert.cls_vector(encoder, *args).float())
        torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=tol)


def test_packed_lstm_on_cuda_equals_the_cpu_path():
    from selfmm.model import SequenceEncoder

    torch.manual_seed(0)
    net = SequenceEncoder(5, 8, 4)
    x, lengths = torch.randn(6, 9, 5), torch.tensor([9, 0, 3, 9, 1, 5])
    with torch.no_grad():
        on_cpu = net(x, lengths)
        on_gpu = net.to(CUDA)(x.to(CUDA), lengths)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=1e-4)


def test_random_state_of_the_device_in_use():
    from selfmm import runtime

    torch.cuda.manual_seed(11)
    state = runtime.rng_state(CUDA)
    expected = torch.rand(3, device=CUDA)
    runtime.set_rng_state(state, CUDA)
    assert torch.equal(torch.rand(3, device=CUDA), expected)
    # An earlier version's list of every GPU's state restores on a machine with fewer GPUs.
    runtime.set_rng_state({**state, "cuda": [state["cuda"]] * (torch.cuda.device_count() + 3)}, CUDA)
    assert torch.equal(torch.rand(3, device=CUDA), expected)


def test_cuda_index_out_of_range_is_refused():
    from selfmm.errors import SelfMMError
    from selfmm.runtime import resolve_device

    count = torch.cuda.device_count()
    with pytest.raises(SelfMMError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_a_cpu_run_never_initialises_cuda(data_file, encoder_dir, tmp_path):
    code = ("import sys, torch, selfmm\n"
            f"cfg = selfmm.config('mosi', text_model={str(encoder_dir)!r}, max_epochs=1, batch_size=8)\n"
            f"selfmm.fit(cfg, selfmm.load_features({str(data_file)!r}), {str(tmp_path / 'run')!r}, seeds=[1], "
            "device='cpu', progress=False)\n"
            "print(torch.cuda.is_initialized())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_lstms_and_heads_run_in_float32_under_bf16_autocast():
    """cuDNN's RNN autocast wrapper would run the LSTMs in float16 (selfmm.precision): with
    autocast off around them, their inputs and outputs, the heads and the predictions are float32."""
    from transformers import BertConfig, BertModel

    from selfmm.configuration import ModelConfig
    from selfmm.data.batch import Batch
    from selfmm.model import SelfMM

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64))
    model = SelfMM(encoder, 5, 7, ModelConfig()).to(CUDA)
    seen = {}
    for name in ("audio_net", "vision_net"):
        getattr(model, name).rnn.register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (i[0].data.dtype, o[1][0].dtype)))
    b, lt = 4, 9
    text = torch.zeros(b, 3, lt, dtype=torch.long)
    text[:, 0] = torch.randint(1, 500, (b, lt))
    text[:, 1] = 1
    batch = Batch(index=torch.arange(b), text=text, audio=torch.randn(b, 6, 5) * 1e5, vision=torch.randn(b, 8, 7),
                  audio_lengths=torch.tensor([6, 2, 0, 6]), vision_lengths=torch.tensor([8, 8, 3, 1]),
                  text_lengths=torch.full((b,), lt), labels=torch.zeros(b)).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch)
    assert seen == {n: (torch.float32, torch.float32) for n in ("audio_net", "vision_net")}
    for s in "mtav":
        assert getattr(out.predictions, s).dtype == torch.float32
        assert torch.isfinite(getattr(out.features, s)).all()
