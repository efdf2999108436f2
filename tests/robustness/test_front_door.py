"""The library's front door (selfmm.checks): every public function, class and method, given a
wrong type or an absurd value for any one parameter (hypothesis draws them), raises a
SelfMMError, a ValueError or a TypeError, and nothing else (no AttributeError, KeyError,
IndexError, RuntimeError, OSError, ...); and library messages name Python parameters, never
the command line's flags, which the command line shows in their place.

The cases are generated from the signatures, so a new parameter is covered when it appears;
a new export must be added to PUBLIC or to CONTAINERS (plain records: built by the library,
checked where they are taken). Base arguments are chosen so that even a drawn value that
happens to be valid ends the call quickly: no training beyond a tiny model's first check.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import selfmm
from selfmm.cli import main, options_of, with_flags
from selfmm.configuration import ModelConfig
from selfmm.data.mmsa import load_features
from selfmm.data.types import FeatureData

from .helpers import copy_run

SOURCE = Path(selfmm.__file__).parent
# Exports that are plain records: the library builds them, and checks them where it takes them
# (a FeatureData wherever data is passed: selfmm.data.mmsa.check_feature_data).
CONTAINERS = {"FeatureData", "DataSpec", "Batch", "Config", "SelfMMOutput", "Heads", "SelfMMError"}
CLEAN = (selfmm.SelfMMError, ValueError, TypeError)


class Anything:
    """An object of no type the library knows."""


def junk(tmp: Path) -> st.SearchStrategy:
    """Wrong types, and absurd values of the usual ones."""
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    loop = tmp / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return st.one_of(
        st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
        st.binary(max_size=8), st.lists(st.integers(-3, 3), max_size=3), st.tuples(st.text(max_size=2)),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.sampled_from([Anything(), Anything, float("nan"), math.inf, -1, 0, 10**12, "", " ", "\0",
                         "x" * 5000, "/dev/null", str(fifo), str(loop), str(tmp), Path("/nonexistent/x.pkl"),
                         torch.zeros(2, 3), np.zeros((2, 0)), np.array(["a"]), {"m": -1, "t": 0, "a": 1.5, "v": "x"},
                         torch.nn.Linear(1, 1), torch.nn.Module, object]),
    )


@pytest.fixture(scope="module")
def context(tiny_run, tmp_path_factory) -> dict[str, tuple[Callable[..., Any], dict[str, Any]]]:
    """Each public callable, with base arguments that end it quickly whatever one drawn value."""
    from selfmm.extract import extract_clip, extract_dataset
    from selfmm.serve import create_app, serve

    root = tmp_path_factory.mktemp("front-door")
    run = copy_run(tiny_run, root / "run", checkpoints=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_features(tiny_run["data"])
        loaded = selfmm.load_run(run)
        predictor = selfmm.Predictor(run, device="cpu")
    seed_run = loaded.seeds[7]
    other = selfmm.config("mosi", lr_audio=0.0123)  # not the run's: fit(resume=True) is refused
    ulgm = selfmm.UnimodalLabelGenerator(4, {"m": 2, "t": 2, "a": 2, "v": 2}, H=3.0)
    encoder = torch.nn.Module()
    missing = root / "absent"
    return {
        "load_features": (selfmm.load_features, {"path": missing}),
        "config": (selfmm.config, {"dataset": "mosi"}),
        # `out` holds a finished run: refused without resume, and resuming differs from the run.
        "fit": (selfmm.fit, {"cfg": other, "data": data, "out": run, "device": "cpu"}),
        "reproduce": (selfmm.reproduce, {"dataset": "mosi", "data": data, "out": run, "device": "cpu",
                                         "text_model": str(tiny_run["bert"]), "max_epochs": 1}),
        "load_run": (selfmm.load_run, {"path": missing}),
        "Run.select": (loaded.select, {}),
        "Run.evaluate": (loaded.evaluate, {"data": data, "device": "cpu"}),
        "Run.predict": (loaded.predict, {"data": data, "device": "cpu"}),
        "SeedRun.model": (seed_run.model, {}),
        "SeedRun.check_data": (seed_run.check_data, {"data": data}),
        "Predictor": (selfmm.Predictor, {"run": missing}),
        "Predictor.score_features": (predictor.score_features, {"path": missing}),
        "Predictor.score_video": (predictor.score_video, {"path": missing, "transcript": "fine"}),
        "Predictor.score_split": (predictor.score_split, {"split": data.splits["test"], "name": "x"}),
        "Predictor.check_widths": (predictor.check_widths, {"name": "x", "audio_dim": 5, "vision_dim": 20}),
        "Predictor.check_features": (predictor.check_features, {"name": "x", "audio_features": "unknown",
                                                                "audio_dim": 5, "vision_dim": 20}),
        "UnimodalLabelGenerator": (selfmm.UnimodalLabelGenerator,
                                   {"num_samples": 4, "dims": {"m": 2, "t": 2, "a": 2, "v": 2}, "H": 3.0}),
        "UnimodalLabelGenerator.init_labels": (ulgm.init_labels, {"indexes": [0, 1], "m_labels": [0.5, -1.0]}),
        "UnimodalLabelGenerator.step": (ulgm.step, {"indexes": [0], "epoch": 1,
                                                    "features": {s: torch.zeros(1, 2) for s in "mtav"}}),
        "UnimodalLabelGenerator.weights": (ulgm.weights, {"indexes": [0, 1]}),
        "regression_metrics": (selfmm.regression_metrics, {"y_pred": [0.5, -1.0], "y_true": [1.0, -2.0],
                                                           "dataset": "mosi"}),
        "SelfMM": (selfmm.SelfMM, {"encoder": encoder, "audio_dim": 5, "vision_dim": 20, "cfg": ModelConfig()}),
        "serve.create_app": (create_app, {"predictor": predictor, "workers": 1, "max_upload_mb": 1,
                                          "max_seconds": 2}),
        # Refused after its checks, before it listens or loads: another host needs a token.
        "serve.serve": (serve, {"run": missing, "port": 0, "host": "0.0.0.0"}),
        "extract.extract_clip": (extract_clip, {"video_path": missing, "transcript": "x", "tokenizer": None}),
        "extract.extract_dataset": (extract_dataset, {"video_dir": missing, "labels_csv": missing,
                                                      "out": root / "o.pkl"}),
    }


PUBLIC = ["load_features", "config", "fit", "reproduce", "load_run", "Run.select", "Run.evaluate", "Run.predict",
          "SeedRun.model", "SeedRun.check_data", "Predictor", "Predictor.score_features", "Predictor.score_video",
          "Predictor.score_split", "Predictor.check_widths", "Predictor.check_features", "UnimodalLabelGenerator",
          "UnimodalLabelGenerator.init_labels", "UnimodalLabelGenerator.step", "UnimodalLabelGenerator.weights",
          "regression_metrics", "SelfMM", "serve.create_app", "serve.serve", "extract.extract_clip",
          "extract.extract_dataset"]


def target(name: str) -> Callable[..., Any]:
    """The function or method named, from the package (not from the fixture): for signatures."""
    import selfmm.extract
    import selfmm.serve

    obj: Any = selfmm
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj.__init__ if isinstance(obj, type) else obj


def parameters(name: str) -> list[str]:
    return [p for p in inspect.signature(target(name)).parameters if p != "self"
            and inspect.signature(target(name)).parameters[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                                            inspect.Parameter.VAR_POSITIONAL)]


CASES = [(name, parameter) for name in PUBLIC for parameter in parameters(name)]


def test_every_export_is_covered():
    assert set(selfmm.__all__) - {"__version__"} == {n for n in PUBLIC if "." not in n and n in selfmm.__all__} \
        | {"Run", "SeedRun"} | CONTAINERS


@pytest.mark.parametrize("name, parameter", CASES, ids=[f"{n}({p})" for n, p in CASES])
def test_a_wrong_or_absurd_argument_is_a_clean_error(name, parameter, context, tmp_path, monkeypatch):
    call, base = context[name]
    # A drawn text is a relative path where an output belongs: anything written goes here, not
    # into the directory pytest was started from (a checkout, once).
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=12, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(value=junk(tmp_path))
    def attempt(value: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                call(**{**base, parameter: value})
            except CLEAN:
                pass

    attempt()


def test_the_messages_name_what_is_wrong(context):
    def message(name: str, **arguments: Any) -> str:
        call, base = context[name]
        with pytest.raises(CLEAN) as caught:
            call(**{**base, **arguments})
        return str(caught.value)

    assert message("fit", seeds=[]) == ("`seeds`: expected None or a non-empty list of seeds, integers in "
                                        "[0, 2^32), each once, got []")
    assert "`data`: expected a selfmm.FeatureData (from selfmm.load_features) or the path" in message("fit", data=None)
    assert message("fit", cfg={"dataset": "mosi"}) == ("`cfg`: expected a selfmm.Config (from selfmm.config), "
                                                        "got {'dataset': 'mosi'}")
    assert "(the class itself, not an instance of it)" in message("fit", model=torch.nn.Linear(1, 1))
    assert message("reproduce", dataset="unknown").startswith("`dataset`: expected one of 'mosi'")
    assert message("Predictor.score_features", split="bogus").startswith("`split`: expected one of")
    assert message("Run.select", seed="7") == "`seed`: expected None or an integer in [0, 2^32), got '7'"
    assert message("UnimodalLabelGenerator", H=-1) == "`H`: expected a finite number > 0, got -1"


# --- item 2: what can be known before training is checked before it ---------------------


def test_data_training_cannot_use_is_refused_before_any_work(context, tmp_path, synth_path):
    call, base = context["fit"]
    data: FeatureData = base["data"]
    cfg = selfmm.config("mosi", max_epochs=1, text_model=base["cfg"].model.text_model)
    empty = SimpleNamespace(**vars(data))
    empty.splits = {**data.splits, "test": _rows(data.splits["test"], 0)}
    with pytest.raises(selfmm.SelfMMError, match="split 'test' has no clips"):
        call(cfg, FeatureData(**vars(empty)), tmp_path / "a", device="cpu")
    with pytest.raises(selfmm.SelfMMError, match="outside sims's range"):
        call(selfmm.config("sims"), data, tmp_path / "b", device="cpu")
    wide = FeatureData(**{**vars(data), "audio_dim": data.audio_dim + 1})
    with pytest.raises(selfmm.SelfMMError, match="split 'train': audio has shape"):
        call(cfg, wide, tmp_path / "c", device="cpu")
    assert not any((tmp_path / n).exists() for n in "abc")


def _rows(split, n: int):
    from dataclasses import replace

    return replace(split, text_bert=split.text_bert[:n], audio=split.audio[:n], vision=split.vision[:n],
                   audio_lengths=split.audio_lengths[:n], vision_lengths=split.vision_lengths[:n],
                   labels=split.labels[:n], unimodal_labels={k: v[:n] for k, v in split.unimodal_labels.items()},
                   ids=split.ids[:n], raw_text=split.raw_text[:n], flags=split.flags[:n])


def test_text_the_encoder_cannot_read_is_refused_in_evaluate(context):
    """Token ids beyond the vocabulary, texts longer than the positions: named, not an IndexError."""
    from dataclasses import replace

    call, base = context["Run.evaluate"]
    data: FeatureData = base["data"]
    test = data.splits["test"]
    ids = test.text_bert.copy()
    ids[0, 0, 0] = 10**6
    bad = FeatureData(**{**vars(data), "splits": {**data.splits, "test": replace(test, text_bert=ids)}})
    with pytest.raises(selfmm.SelfMMError, match="token id 1000000 is outside the text model's vocabulary"):
        call(bad, device="cpu")
    _, predict_base = context["Run.predict"]
    with pytest.raises(selfmm.SelfMMError, match="token id 1000000"):
        context["Run.predict"][0](bad, device="cpu")


class FlatPredictions(torch.nn.Module):
    """Predictions of shape (B, 1): the most common slip with a model of your own."""

    feature_dims = {"m": 4, "t": 2, "a": 2, "v": 2}

    def __init__(self, spec, cfg, shape: str = "column") -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 4)
        self.shape = shape

    def forward(self, batch):
        from selfmm import Heads, SelfMMOutput

        h = self.layer(batch.labels[:, None].float())  # (B, 4)
        column = h[:, :1]  # (B, 1)
        pred = {"column": column, "nan": column[:, 0] * math.nan, "detached": column[:, 0].detach()}[self.shape]
        return SelfMMOutput(Heads(pred, column[:, 0], column[:, 0], column[:, 0]),
                            Heads(h, h[:, :2], h[:, :2], h[:, :2]))


@pytest.mark.parametrize("shape, message", [
    ("column", r"forward's predictions.m is torch.float32 of shape \(\d+, 1\); expected a floating tensor of shape"),
    ("nan", "forward's predictions.m holds NaN or infinite values on the first batch"),
    ("detached", "forward's predictions.m does not require grad"),
])
def test_a_model_of_your_own_is_run_on_one_batch_first(shape, message, context, tmp_path):
    call, base = context["fit"]

    class Model(FlatPredictions):
        def __init__(self, spec, cfg):
            super().__init__(spec, cfg, shape)

    with pytest.raises(selfmm.SelfMMError, match=f"model .*Model: {message}"):
        call(selfmm.config("mosi", max_epochs=1), base["data"], tmp_path / "run", device="cpu", model=Model)
    assert not (tmp_path / "run").exists()


# --- issue 22 item 5: library messages name parameters; the command line shows its flags --------


def _messages(tree: ast.AST) -> list[tuple[int, str]]:
    """The string pieces of every raise and every warnings.warn call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("warn")):
            for piece in ast.walk(node):
                if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
                    found.append((piece.lineno, piece.value))
    return found


def test_library_messages_name_no_command_line_flags():
    flags = re.compile(r"(?<![\w`-])--[a-z]")
    offenders = []
    for path in SOURCE.rglob("*.py"):
        if "cli" in path.relative_to(SOURCE).parts:
            continue
        for line, text in _messages(ast.parse(path.read_text())):
            if flags.search(re.sub(r"pip install \S+", "", text)):  # pip's own flags are pip's
                offenders.append(f"{path.relative_to(SOURCE)}:{line}: {text.strip()[:80]}")
    assert offenders == []


def test_the_command_line_shows_its_flags_where_the_library_names_parameters(capsys):
    options = options_of("train")
    assert with_flags("`out` x already holds a run; pass `resume=True`; `max_epochs=4`; `seeds`: bad; "
                      "`selfmm cache FILE`; `token`", options) == \
        "--out x already holds a run; pass --resume; --max-epochs 4; --seeds: bad; `selfmm cache FILE`; `token`"
    assert with_flags("pass `replace=True`", options_of("export-mmsa")) == "pass --force"
    assert main(["serve", "--run", "absent", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is not loopback: pass --token or set SELFMM_TOKEN" in err


def test_a_library_warning_points_at_the_callers_line(synth_path):
    """Behind the front door's wrapper, a warning is still shown at the line that called the
    library (not at selfmm/checks.py)."""
    with pytest.warns(UserWarning, match="non-finite audio/vision values") as caught:
        load_features(synth_path())
    assert [w.filename for w in caught] == [__file__]
