"""The CUDA path, checked on the CPU: its branches forced, torch.cuda calls mocked, and the
reads that would make the host wait for a GPU counted (tests/syncs.py). tests/test_cuda.py
runs the same path on a GPU when there is one."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch
from transformers import AutoModel

from selfmm import bert, distributed, runtime, train
from selfmm import configuration as config
from selfmm.cli import main
from selfmm.cli.common import config_from_args
from selfmm.cli.parser import build_parser
from selfmm.data.batch import Collator
from selfmm.data.mmsa import load_features
from selfmm.errors import SelfMMError
from selfmm.model import SelfMM, SequenceEncoder, packed_final_state
from selfmm.runtime import seed_everything
from selfmm.train import NumericalError, make_optimizer, train_epoch, train_loader
from selfmm.transfer import to_device
from selfmm.ulgm import UnimodalLabelGenerator
from syncs import SyncCounter
from test_bert import tiny, tokens


@pytest.fixture(scope="module")
def data(synth_path):
    with pytest.warns(UserWarning, match="non-finite"):
        return load_features(synth_path("mosi", scale=0.03))


def setup(tiny_bert, data, **overrides):
    cfg = config.with_values(config.defaults_for("mosi"), {"batch_size": 4, **overrides})
    seed_everything(0)
    model = SelfMM(AutoModel.from_pretrained(tiny_bert), data.audio_dim, data.vision_dim, cfg.model)
    train_split = data.splits["train"]
    ulgm = UnimodalLabelGenerator(len(train_split), model.feature_dims, H=3.0)
    ulgm.init_labels(torch.arange(len(train_split)), torch.as_tensor(train_split.labels))
    return cfg, model, make_optimizer(model, cfg), ulgm, train_split


# ---- host syncs -------------------------------------------------------------------------------


def test_a_training_step_reads_nothing_back_from_the_device(tiny_bert, data, monkeypatch):
    """Before: 19 reads per step in epoch 1 and 23 from epoch 2 (the loss, the four
    representations, the ULGM's index bounds, features and centres, `nonzero` in the encoder),
    counted the same way. Now the checks are read once every CHECK_EVERY steps and at the end."""
    # The CPU's sparse word-embedding gradient filters its rows by a mask in backward; CUDA
    # and DDP take the dense gradient, as here.
    monkeypatch.setattr(bert, "_distributed", lambda: True)
    monkeypatch.setattr(train, "CHECK_EVERY", 4)
    cfg, model, optimizer, ulgm, split = setup(tiny_bert, data)
    for epoch in (1, 2):  # epoch 2 updates the u-labels too
        loader = train_loader(split, cfg, 0, epoch)
        with SyncCounter() as counter:
            train_epoch(model, optimizer, loader, ulgm, epoch, cfg, torch.device("cpu"))
        steps = len(loader)
        reads = -(-steps // 4)  # every 4 steps and the last
        # The DataLoader draws its worker seed from the host generator once per pass.
        assert counter.counts["tolist"] == reads and counter.total <= reads + 2, dict(counter.where)
        assert counter.total / steps <= 2


def test_packed_lstm_path_equals_the_padded_one_and_reads_nothing():
    torch.manual_seed(0)
    net = SequenceEncoder(5, 8, 4)
    x = torch.randn(6, 9, 5)
    lengths = torch.tensor([9, 0, 3, 9, 1, 5])
    for i, n in enumerate(lengths.tolist()):
        x[i, n:] = 0.0
    with torch.no_grad():
        last = net.rnn(x)[0][torch.arange(6), (lengths - 1).clamp(min=0)]
        expected = last * (lengths > 0).float().unsqueeze(1)
        with SyncCounter() as counter:

            def rnn(packed):
                # nn.LSTM reads the packed batch sizes, which PackedSequence keeps on the host.
                assert packed.batch_sizes.device.type == "cpu"
                with counter.paused():
                    return net.rnn(packed)

            got = packed_final_state(rnn, x, lengths)  # what runs on CUDA
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(got[1], torch.zeros(8))  # no frame: zeros
    assert counter.total == 0, dict(counter.where)


def test_packed_lstm_path_passes_gradients_to_valid_frames_only():
    torch.manual_seed(1)
    net = SequenceEncoder(3, 4, 2)
    x = torch.randn(3, 5, 3, requires_grad=True)
    lengths = torch.tensor([2, 5, 0])
    packed_final_state(net.rnn, x, lengths).sum().backward()
    assert x.grad[0, :2].abs().sum() > 0 and torch.equal(x.grad[0, 2:], torch.zeros(3, 3))
    assert torch.equal(x.grad[2], torch.zeros(5, 3))


def test_encoder_tokens_planned_on_the_host_equal_nonzero_and_read_nothing():
    _, mask, _ = tokens(7, 11, 500, seed=3)
    mask[2] = 0  # an empty text: its [CLS] alone
    lengths = mask.sum(1)
    read = bert.Tokens(mask)
    with SyncCounter() as counter:
        planned = bert.Tokens(mask, lengths)
    assert counter.total == 0, dict(counter.where)
    assert torch.equal(planned.where, read.where) and torch.equal(planned.cls, read.cls)


def test_encoder_with_lengths_equals_without():
    encoder = tiny(dropout=0.0).eval()
    ids, mask, types = tokens(5, 12, 500, seed=4)
    with torch.no_grad():
        assert torch.equal(bert.cls_vector(encoder, ids, mask, types, mask.sum(1)),
                           bert.cls_vector(encoder, ids, mask, types))


def test_sdpa_attention_equals_the_eager_one(monkeypatch):
    """On CUDA attention runs through scaled_dot_product_attention; forced here on the CPU."""
    encoder = tiny(dropout=0.0).train()
    ids, mask, types = tokens(5, 12, 500, seed=5)
    weight = torch.randn(5, 32, generator=torch.Generator().manual_seed(6))
    results = []
    for kernel in ("eager", "sdpa"):
        monkeypatch.setitem(bert.ATTENTION, "cpu", kernel)
        encoder.zero_grad(set_to_none=True)
        out = bert.cls_vector(encoder, ids, mask, types, mask.sum(1))
        (out * weight).sum().backward()
        results.append((out.detach(), {n: p.grad.to_dense() for n, p in encoder.named_parameters()
                                       if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_ulgm_step_with_host_indexes_reads_nothing():
    g = UnimodalLabelGenerator(10, {"m": 3, "t": 2, "a": 2, "v": 2}, H=3.0)
    g.init_labels(torch.arange(10), torch.linspace(-2, 2, 10))
    feats = {s: torch.randn(4, d) for s, d in g.dims.items()}
    with SyncCounter() as counter:
        for epoch in (1, 2):
            g.weights(torch.tensor([1, 4, 6, 9]))
            g.step(torch.tensor([1, 4, 6, 9]), feats, epoch, check_finite=False)
    assert counter.total == 0, dict(counter.where)
    with pytest.raises(ValueError, match=r"indexes must lie in \[0, 10\)"):
        g.step(torch.tensor([3, 10]), {s: f[:2] for s, f in feats.items()}, 2)


# ---- host-to-device copies ----------------------------------------------------------------------


class Recorded:
    """Stands in for a CUDA tensor: records how it got there."""

    def __init__(self, source: torch.Tensor, pinned: bool, non_blocking: bool):
        self.source, self.pinned, self.non_blocking = source, pinned, non_blocking


def test_host_copies_to_cuda_go_through_pinned_memory(monkeypatch):
    pinned: list[torch.Tensor] = []

    def pin_memory(self):
        pinned.append(self)
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: any(self is p for p in pinned))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: Recorded(
        self, any(self is p for p in pinned), non_blocking))
    t = torch.arange(3)
    moved = to_device(t, torch.device("cuda"))
    assert moved.source is t and moved.pinned and moved.non_blocking


def test_moving_a_batch_leaves_its_lengths_on_the_host(data):
    batch = Collator(data.splits["train"])([0, 1, 2])
    moved_fields = []

    class Count(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to:
                moved_fields.append(args[0].shape)
            return func(*args, **(kwargs or {}))

    with Count():
        moved = batch.to(torch.device("cpu"), non_blocking=True)
    # index, text, audio, vision, labels; the three length tensors are not copied (they were,
    # and then thrown away, before).
    assert len(moved_fields) == 5
    for key in ("audio_lengths", "vision_lengths", "text_lengths"):
        assert getattr(moved, key) is getattr(batch, key)
    assert torch.equal(batch.text_lengths, batch.text[:, 1].sum(1))


# ---- checks read later still stop the run at the right batch ----------------------------------------


def test_a_non_finite_loss_read_later_names_its_batch(tiny_bert, data, monkeypatch):
    monkeypatch.setattr(train, "CHECK_EVERY", 4)
    real, calls = train.task_losses, {"n": 0}

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["v"] = losses["v"] + float("inf")
        return losses

    monkeypatch.setattr(train, "task_losses", poisoned)
    cfg, model, optimizer, ulgm, split = setup(tiny_bert, data)
    loader = train_loader(split, cfg, 0, 1)
    with pytest.raises(NumericalError, match=rf"epoch 1, batch 3/{len(loader)}: loss is not finite \(per head: "
                                             r"m=[-0-9.e]+, t=[-0-9.e]+, a=[-0-9.e]+, v=inf"):
        train_epoch(model, optimizer, loader, ulgm, 1, cfg, torch.device("cpu"))
    assert calls["n"] == 4  # found at the read after batch 4


def test_a_non_finite_representation_is_named(tiny_bert, data, monkeypatch):
    cfg, model, optimizer, ulgm, split = setup(tiny_bert, data, tasks="MT")
    real = model.audio_head.forward

    def overflow(x):
        feature, prediction = real(x)
        return feature * float("inf"), prediction

    monkeypatch.setattr(model.audio_head, "forward", overflow)
    with pytest.raises(NumericalError, match=r"epoch 1, batch 1/\d+: representation a is not finite"):
        train_epoch(model, optimizer, train_loader(split, cfg, 0, 1), ulgm, 1, cfg, torch.device("cpu"))


# ---- random state, start-up, determinism ----------------------------------------------------------


class FakeCuda:
    """torch.cuda's random-state calls, on a machine with `count` GPUs."""

    def __init__(self, monkeypatch, count: int = 1):
        self.saved: dict[int, torch.Tensor] = {}
        self.count = count
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((4,), device.index or 0,
                                                                                       dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self.refuse)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.refuse)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_state)

    @staticmethod
    def refuse(*args):
        raise AssertionError("every GPU's state touched")

    def set_state(self, state, device="cuda"):
        index = torch.device(device).index or 0
        if index >= self.count:
            raise IndexError(index)
        self.saved[index] = state


def test_rng_state_holds_the_device_in_use_only(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=1)
    state = runtime.rng_state(torch.device("cuda", 0))
    assert torch.equal(state["cuda"], torch.zeros(4, dtype=torch.uint8))
    runtime.set_rng_state(state, torch.device("cuda", 0))
    assert torch.equal(cuda.saved[0], state["cuda"])
    # A checkpoint of an earlier version holds every GPU's state (4 here); resumed on 1 GPU.
    old = {**state, "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]}
    runtime.set_rng_state(old, torch.device("cuda"))
    assert torch.equal(cuda.saved[0], old["cuda"][0])
    assert "cuda" not in runtime.rng_state(torch.device("cpu"))


def test_each_rank_restores_its_own_random_state(tiny_bert, data):
    cfg, model, optimizer, ulgm, _ = setup(tiny_bert, data)
    state = train.TrainingState(model, optimizer, ulgm)
    cpu = torch.device("cpu")
    ranks = []
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        ranks.append(runtime.rng_state(cpu))
    saved = state.checkpoint(cfg, ranks)
    for rank in (1, 0):
        state.restore(saved, cpu, rank)
        assert torch.equal(torch.get_rng_state(), ranks[rank]["torch"])
    torch.manual_seed(7)
    before = torch.get_rng_state()
    state.restore(saved, cpu, rank=2)  # a process the checkpoint has no state for keeps its own
    assert torch.equal(torch.get_rng_state(), before)
    assert distributed.rank_seed(5, 0) == 5 and distributed.rank_seed(5, 1) != distributed.rank_seed(5, 2)


def test_set_device_comes_before_the_process_group(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    ctx, device = distributed.init_from_env(torch.device("cuda"))
    assert device == torch.device("cuda", 1) and ctx == distributed.Context(1, 2, 1)
    assert calls == [("set_device", device), ("init", {"backend": "nccl", "device_id": device})]
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(SelfMMError, match="LOCAL_RANK 2 has no GPU: this machine has 2 CUDA device"):
        distributed.init_from_env(torch.device("cuda"))


def test_cuda_index_out_of_range_is_one_line(monkeypatch, tmp_path, capsys, tiny_bert, synth_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SelfMMError, match=r"device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        runtime.resolve_device("cuda:2")
    assert main(["train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.02)), "--out",
                 str(tmp_path / "run"), "--text-model", str(tiny_bert), "--device", "cuda:5"]) == 2
    err = capsys.readouterr().err
    assert "device cuda:5: this machine has 2" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1 and not (tmp_path / "run").exists()


def test_a_cpu_run_never_initialises_cuda(tiny_bert, synth_path, tmp_path, monkeypatch):
    """On a GPU machine (CUDA said to be there), `--device cpu` must not touch it: every
    torch.cuda call that needs the device goes through _lazy_init, which fails here."""
    import selfmm

    def refuse():
        raise AssertionError("CUDA initialised by a CPU run")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # torch.cuda's submodules hold their own references to these.
    lazy_init, device_count = torch.cuda._lazy_init, torch.cuda.device_count
    for name, module in list(sys.modules.items()):
        if name == "torch.cuda" or name.startswith("torch.cuda."):
            if getattr(module, "_lazy_init", None) is lazy_init:
                monkeypatch.setattr(module, "_lazy_init", refuse)
            if getattr(module, "device_count", None) is device_count:
                monkeypatch.setattr(module, "device_count", lambda: 1)
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=1, batch_size=8)
    with pytest.warns(UserWarning):
        data = selfmm.load_features(synth_path("mosi", scale=0.02))
    run = selfmm.fit(cfg, data, tmp_path / "run", seeds=[3], device="cpu", progress=False)
    assert run.seeds[3].metrics is not None


def test_determinism_switch(monkeypatch):
    calls = []
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only: calls.append((on, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    runtime.configure_determinism(torch.device("cpu"), True)
    assert calls == [] and not torch.backends.cudnn.deterministic  # the CPU path is left alone
    runtime.configure_determinism(torch.device("cuda"), True)
    assert calls == [(True, True)] and torch.backends.cudnn.deterministic
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.utils.deterministic.fill_uninitialized_memory
    runtime.configure_determinism(torch.device("cuda"), False)
    assert calls[-1] == (False, True) and not torch.backends.cudnn.deterministic


@pytest.mark.parametrize("flag, expected", [([], True), (["--deterministic"], True), (["--no-deterministic"], False)])
def test_deterministic_flag(flag, expected):
    args = build_parser().parse_args(["train", "--dataset", "mosi", "--data", "x", "--out", "o", *flag])
    assert isinstance(args, argparse.Namespace)
    assert config_from_args(args).train.deterministic is expected


# ---- faults found by review of the GPU path (issue 21) -----------------------------------------


def test_non_finite_weights_after_an_epochs_last_step_are_refused_before_its_checkpoint(
        tiny_bert, synth_path, tmp_path, monkeypatch):
    """The steps' checks read each batch's loss before its step; the epoch's last optimizer step
    could leave NaN weights that the epoch's checkpoint kept and resume loaded."""
    import selfmm
    from selfmm import checkpoint

    epochs = train.train_epoch

    def last_step_goes_bad(model, optimizer, loader, ulgm, epoch, *args, **kwargs):
        loss = epochs(model, optimizer, loader, ulgm, epoch, *args, **kwargs)
        if epoch == 2:
            with torch.no_grad():
                model.fusion_head.layer_3.weight.fill_(float("nan"))
        return loss

    monkeypatch.setattr(train, "train_epoch", last_step_goes_bad)
    with pytest.warns(UserWarning, match="non-finite"):
        data = selfmm.load_features(synth_path("mosi", scale=0.03))
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=3, batch_size=8)
    with pytest.raises(NumericalError, match="epoch 2: the validation loss is nan"):
        selfmm.fit(cfg, data, tmp_path / "run", seeds=[1], device="cpu", progress=False)
    assert checkpoint.saved_epochs(tmp_path / "run" / "seed-1") == [1]
    monkeypatch.setattr(train, "train_epoch", epochs)
    resumed = selfmm.fit(cfg, data, tmp_path / "run", seeds=[1], device="cpu", progress=False, resume=True)
    assert resumed.seeds[1].metrics["best_epoch"] in (1, 2, 3)


def test_deterministic_attention_backward_is_the_math_kernel(monkeypatch):
    """With determinism on (CUDA's `deterministic`), SDPA runs its math backend, whose backward
    is plain matrix products; forced here on the CPU through the same branch."""
    chosen = []
    real = bert.sdpa_kernel
    monkeypatch.setattr(bert, "sdpa_kernel", lambda backend: chosen.append(backend) or real(backend))
    monkeypatch.setitem(bert.ATTENTION, "cpu", "sdpa")
    encoder = tiny(dropout=0.0).train()
    ids, mask, types = tokens(4, 10, 500, seed=7)
    outputs = []
    for deterministic in (False, True):
        before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            encoder.zero_grad(set_to_none=True)
            out = bert.cls_vector(encoder, ids, mask, types, mask.sum(1))
            out.sum().backward()
            outputs.append((out.detach(), encoder.encoder.layer[0].attention.self.query.weight.grad.clone()))
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        assert chosen == ([] if not deterministic else [torch.nn.attention.SDPBackend.MATH] * 3)
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], atol=1e-5, rtol=1e-4)


def test_determinism_asked_after_cuda_was_used_warns_once(monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts; set later, it changes nothing."""
    import os
    import warnings

    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only: None)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    monkeypatch.setattr(runtime, "_warned", set())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.configure_determinism(torch.device("cuda"), True)  # before CUDA's first use: silent
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        for _ in range(3):
            runtime.configure_determinism(torch.device("cuda"), True)
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
        runtime.configure_determinism(torch.device("cuda"), False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "CUDA was already used in this process" in messages[0], messages


def test_fit_restores_the_global_torch_settings_it_changes(tiny_bert, synth_path, tmp_path, monkeypatch):
    """TF32 and the determinism flags are set on CUDA (forced here through the CUDA branches on
    the CPU), the thread count anywhere; a notebook gets its own settings back after fit."""
    import selfmm
    from selfmm import api

    resolve = runtime.resolve_device

    def cuda_branches(name):
        device = resolve(name)
        torch.backends.cuda.matmul.allow_tf32 = True  # what resolve_device does for CUDA
        torch.backends.cudnn.allow_tf32 = True
        return device

    determinism = runtime.configure_determinism
    monkeypatch.setattr(api, "resolve_device", cuda_branches)
    monkeypatch.setattr(train, "configure_determinism", lambda device, on: determinism(torch.device("cuda"), on))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    epochs = train.train_epoch

    def on_fewer_threads(*args, **kwargs):
        torch.set_num_threads(1)
        return epochs(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", on_fewer_threads)
    torch.set_num_threads(2)
    before = runtime.global_settings()
    with pytest.warns(UserWarning, match="non-finite"):
        data = selfmm.load_features(synth_path("mosi", scale=0.03))
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=1, batch_size=8)
    selfmm.fit(cfg, data, tmp_path / "run", seeds=[1], device="cpu", progress=False)
    assert runtime.global_settings() == before
    assert not before["deterministic"] and not before["matmul_tf32"] and before["threads"] == 2
