"""Mixed precision (issue 12) on the CPU's autocast: the `precision` setting everywhere a setting
goes, the dtype at each boundary of the model, float32 predictions, the one-line refusal on a
CPU without native bf16, the precision a run records, resume and evaluate within it; and the
LSTMs' thread switch, which never leaves torch's thread count changed."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import BertConfig, BertModel

import selfmm
from selfmm import model as model_module
from selfmm import precision
from selfmm.cli import main
from selfmm.cli.common import config_from_args
from selfmm.cli.parser import build_parser
from selfmm.configuration import ModelConfig
from selfmm.data.batch import Collator
from selfmm.errors import ConfigError, SelfMMError
from selfmm.inference import predict
from selfmm.model import SelfMM, SequenceEncoder
from selfmm.predict import Predictor

BF16 = torch.bfloat16


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(synth_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic file's -inf frames are repaired
        return selfmm.load_features(synth_path("mosi", scale=0.02), dataset="mosi")


@pytest.fixture(scope="module")
def bf16_run(tiny_bert, data, tmp_path_factory):
    """One seed, one epoch in bf16: on a CPU without native bf16 the check is told it has it
    (autocast emulates it there: slower, the same arithmetic)."""
    out = tmp_path_factory.mktemp("precision") / "run"
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=1, batch_size=8, precision="bf16")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_bf16", lambda: True)
        selfmm.fit(cfg, data, out, seeds=[7], device="cpu", progress=False)
    return out


# ---- the setting ---------------------------------------------------------------------------


def test_precision_is_a_setting_of_the_api_the_cli_and_set():
    assert selfmm.config("mosi").train.precision == "fp32"  # the default, CPU and CUDA alike
    assert selfmm.config("mosi", precision="bf16").train.precision == "bf16"
    parser = build_parser()
    common = ["train", "--dataset", "mosi", "--data", "f.pkl", "--out", "o"]
    assert config_from_args(parser.parse_args([*common, "--precision", "bf16"])).train.precision == "bf16"
    assert config_from_args(parser.parse_args([*common, "--set", "precision=bf16"])).train.precision == "bf16"
    with pytest.raises(ConfigError, match="one of fp32, bf16"):
        selfmm.config("mosi", precision="fp16")


def test_bf16_on_a_cpu_without_it_is_one_line(monkeypatch, tiny_bert, synth_path, data, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=1, precision="bf16")
    with pytest.raises(SelfMMError, match="no native bf16"):
        selfmm.fit(cfg, data, tmp_path / "api", seeds=[7], device="cpu", progress=False)
    assert not (tmp_path / "api").exists()
    args = ["train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.02)), "--out",
            str(tmp_path / "cli"), "--text-model", str(tiny_bert), "--precision", "bf16", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [
        "selfmm: error: precision bf16: this CPU has no native bf16 (neither AMX nor AVX512-BF16), where "
        "bf16 is slower than fp32; train with --precision fp32"], err
    assert not (tmp_path / "cli").exists()
    precision.check_precision("fp32", torch.device("cpu"))  # fp32 always trains


def test_cpu_bf16_reads_the_native_flags():
    flags = open("/proc/cpuinfo").read()
    assert precision.cpu_bf16() == any(f" {flag}" in flags for flag in precision.BF16_FLAGS)


# ---- what runs in which dtype ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_batch(data):
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64))
    model = SelfMM(encoder, data.audio_dim, data.vision_dim, ModelConfig())
    return model, Collator(data.splits["train"])(list(range(8)))


def test_dtypes_at_each_boundary_under_cpu_bf16_autocast(model_and_batch):
    model, batch = model_and_batch
    model.train()
    seen: dict[str, tuple[torch.dtype, torch.dtype]] = {}

    def record(name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            seen[name] = (inputs[0].dtype, out.dtype)
        return hook

    watched = {"encoder query": model.text_encoder.encoder.layer[0].attention.self.query,
               "encoder feed-forward": model.text_encoder.encoder.layer[-1].output.dense,
               "audio lstm": model.audio_net.rnn, "vision lstm": model.vision_net.rnn,
               "audio linear": model.audio_net.linear, "vision linear": model.vision_net.linear}
    for head in ("fusion_head", "text_head", "audio_head", "vision_head"):
        for layer in ("layer_1", "layer_2", "layer_3"):
            watched[f"{head}.{layer}"] = getattr(getattr(model, head), layer)
    handles = [m.register_forward_hook(record(name)) for name, m in watched.items()]
    try:
        with torch.autocast("cpu", dtype=BF16):
            text = model.encode_text(batch.text, batch.text_lengths)
            out = model(batch)
    finally:
        for h in handles:
            h.remove()
    # The encoder's matrix products run in bf16; its [CLS] vector may come out in bf16.
    assert seen["encoder query"][1] == BF16 and seen["encoder feed-forward"][1] == BF16
    assert text.dtype in (BF16, torch.float32)
    # Everything after it is float32, inputs and outputs.
    for name, dtypes in seen.items():
        if not name.startswith("encoder"):
            assert dtypes == (torch.float32, torch.float32), (name, dtypes)
    for s in "mtav":
        assert getattr(out.predictions, s).dtype == torch.float32
        assert getattr(out.features, s).dtype == torch.float32
    sum(out.predictions).sum().backward()
    for name, p in model.named_parameters():
        if p.grad is not None and not name.startswith("text_encoder"):
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    assert model.audio_net.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_predictions_are_not_bf16_rounded(model_and_batch, data):
    model, batch = model_and_batch
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out = model(batch)
    for s in "mtav":
        p = getattr(out.predictions, s)
        assert not torch.equal(p, p.to(BF16).float()), s
    preds = predict(model, data.splits["test"], torch.device("cpu"), precision="bf16")
    m = torch.from_numpy(preds.heads["m"])
    assert m.dtype == torch.float32 and not torch.equal(m, m.to(BF16).float())


# ---- a run's precision ---------------------------------------------------------------------


def test_the_run_records_its_precision(bf16_run):
    config = json.loads((bf16_run / "seed-7" / "config.json").read_text())
    results = json.loads((bf16_run / "results.json").read_text())
    assert config["config"]["train"]["precision"] == "bf16"
    assert results["config"]["train"]["precision"] == "bf16"
    assert selfmm.load_run(bf16_run).seeds[7].config.train.precision == "bf16"


def test_resume_refuses_another_precision(bf16_run, tiny_bert, data, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    cfg = selfmm.config("mosi", text_model=str(tiny_bert), max_epochs=1, batch_size=8)
    with pytest.raises(SelfMMError, match="cannot resume") as refused:
        selfmm.fit(cfg, data, bf16_run, seeds=[7], device="cpu", resume=True, progress=False)
    assert "train.precision 'bf16' (now 'fp32')" in str(refused.value)


def test_evaluate_runs_in_the_runs_precision(bf16_run, data, synth_path, monkeypatch, capsys):
    """Evaluated in bf16, as trained (load_run, `selfmm evaluate`, the Predictor behind `selfmm
    predict` and `serve`), the run reproduces its recorded test metrics and predictions; the
    same weights in fp32 predict otherwise, so an evaluation in another precision could not."""
    run = selfmm.load_run(bf16_run)
    assert run.evaluate(data, device="cpu")[7] == run.seeds[7].metrics["test"]
    recorded = [row["pred_m"] for row in run.predict(data, device="cpu")]
    model = run.seeds[7].model("cpu")
    fp32 = predict(model, data.splits["test"], torch.device("cpu"), precision="fp32").heads["m"]
    bf16 = predict(model, data.splits["test"], torch.device("cpu"), precision="bf16").heads["m"]
    assert list(map(float, bf16)) == recorded and list(map(float, fp32)) != recorded
    scores = Predictor(bf16_run, device="cpu").score_split(data.splits["test"], "test")  # predict, serve
    assert [s.score for s in scores] == recorded
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)  # evaluation never refuses
    assert main(["evaluate", "--run", str(bf16_run), "--data", str(synth_path("mosi", scale=0.02)),
                 "--device", "cpu"]) == 0
    assert "reproduces the recorded test metrics" in capsys.readouterr().err


# ---- the LSTMs' thread switch ----------------------------------------------------------------


def lstm_case(width: int = 5):
    torch.manual_seed(0)
    net = SequenceEncoder(5, 8, 4)
    x = torch.randn(3, 10, width, requires_grad=True)
    return net, x, torch.tensor([10, 4, 0])


def test_the_lstm_runs_on_its_threads_forward_and_backward(two_threads, monkeypatch):
    monkeypatch.setattr(model_module, "LSTM_THREADS", 1)
    net, x, lengths = lstm_case()
    threads = []

    def probe(module, inputs, output):  # forward, then the LSTM's backward where it starts
        threads.append(("forward", torch.get_num_threads()))
        output[0].register_hook(lambda grad: threads.append(("backward", torch.get_num_threads())))

    net.rnn.register_forward_hook(probe)
    net(x, lengths).sum().backward()
    assert threads == [("forward", 1), ("backward", 1)]
    assert torch.get_num_threads() == 2


def test_the_thread_count_survives_an_exception_in_forward_or_backward(two_threads, monkeypatch):
    monkeypatch.setattr(model_module, "LSTM_THREADS", 1)
    net, x, lengths = lstm_case(width=6)  # the LSTM expects 5 features
    with pytest.raises(RuntimeError):
        net(x, lengths)
    assert torch.get_num_threads() == 2

    net, x, lengths = lstm_case()

    def fail(grad):
        raise KeyboardInterrupt  # what an interrupt in the middle of the backward looks like

    net.rnn.weight_hh_l0.register_hook(fail)
    out = net(x, lengths)
    with pytest.raises(KeyboardInterrupt):
        out.sum().backward()
    assert torch.get_num_threads() == 2


def test_the_thread_switch_changes_no_gradient(two_threads, monkeypatch):
    net, x, lengths = lstm_case()
    monkeypatch.setattr(model_module, "LSTM_THREADS", 1)
    net(x, lengths).pow(2).sum().backward()
    switched = [t.grad.clone() for t in (x, *net.parameters())]
    for t in (x, *net.parameters()):
        t.grad = None
    torch.set_num_threads(1)  # the same kernels on the same thread count, without the switch
    out, _ = net.rnn(x)
    h = out[torch.arange(3), lengths.clamp(min=1) - 1] * (lengths > 0).float().unsqueeze(1)
    net.linear(net.dropout(h)).pow(2).sum().backward()
    for a, t in zip(switched, (x, *net.parameters()), strict=True):
        assert torch.equal(a, t.grad)
