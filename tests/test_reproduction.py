"""The reproduction table: arithmetic on numbers worked out by hand, the published numbers under
our metric names, inside/outside decisions and what the page says."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from selfmm.errors import SelfMMError
from selfmm.metrics import METRIC_NAMES
from selfmm.reproduction import PROTOCOL_SEEDS, PUBLISHED, compare, render_markdown, write

OFFSETS = (-0.04, -0.02, 0.0, 0.02, 0.04)  # around a centre: mean = centre, ddof=1 std = sqrt(0.001)


def spread(centre: dict[str, float], offsets: tuple[float, ...] = OFFSETS) -> dict[int, dict[str, float]]:
    pairs = zip(PROTOCOL_SEEDS, offsets, strict=True)
    return {seed: {k: v + off for k, v in centre.items()} for seed, off in pairs}


def mmsa_centred(dataset: str) -> dict[str, float]:
    """Every metric of `dataset`, centred on MMSA's value (0.5 where MMSA has none)."""
    return {k: PUBLISHED[dataset]["mmsa"].values.get(k, 0.5) for k in METRIC_NAMES[dataset]}


def test_arithmetic_on_known_numbers() -> None:
    c = compare(spread(dict.fromkeys(METRIC_NAMES["mosi"], 0.84)), "mosi")
    m = c["metrics"]["Has0_acc_2"]
    # Values 0.80 .. 0.88: squared deviations 0.0016 * 2 + 0.0004 * 2 = 0.004; / (5 - 1) = 0.001.
    # Half-width = t(0.975, 4) * std / sqrt(5) = 2.776445 * 0.0316228 / 2.236068 = 0.0392649.
    assert m["n"] == 5
    assert m["mean"] == pytest.approx(0.84, abs=1e-12)
    assert m["std"] == pytest.approx(0.0316228, abs=1e-7)
    assert m["interval"] == pytest.approx([0.84 - 0.0392649, 0.84 + 0.0392649], abs=1e-7)
    assert m["per_seed"] == pytest.approx({"1111": 0.80, "1112": 0.82, "1113": 0.84,
                                           "1114": 0.86, "1115": 0.88})
    paper = m["published"]["paper"]
    assert paper["value"] == 0.84 and paper["difference"] == pytest.approx(0.0, abs=1e-12)
    assert paper["inside"] is True
    assert c["protocol"] is True and c["notes"] == [] and c["seeds"] == list(PROTOCOL_SEEDS)


def test_published_names_map_to_ours() -> None:
    assert PUBLISHED["mosi"]["paper"].values["Has0_acc_2"] == 0.8400  # "Acc-2 84.00 / 85.98": Has0 / Non0
    assert PUBLISHED["mosi"]["paper"].values["Non0_acc_2"] == 0.8598
    assert PUBLISHED["mosi"]["paper"].values["Non0_F1_score"] == 0.8595
    assert PUBLISHED["mosi"]["paper"].values["MAE"] == 0.713  # a fraction like ours, not 71.3
    assert PUBLISHED["mosi"]["mmsa"].values["Mult_acc_7"] == 0.4667
    assert PUBLISHED["mosei"]["paper"].values["Has0_F1_score"] == 0.8253
    assert PUBLISHED["sims"]["paper"].values["Mult_acc_2"] == 0.8074  # SIMS "Acc-2"
    assert "Mult_acc_7" not in PUBLISHED["mosi"]["paper"].values
    assert "Mult_acc_3" not in PUBLISHED["sims"]["paper"].values
    assert "paper" not in PUBLISHED["simsv2"]
    for dataset, sources in PUBLISHED.items():
        for source in sources.values():
            assert set(source.values) <= set(METRIC_NAMES[dataset])
            assert all(0 < v < 1 for v in source.values.values())
            assert source.citation


def test_inside_and_outside() -> None:
    # Tight seeds around 0.80: the interval is 0.80 +- 0.0010; the paper's 0.84 is far outside it.
    centre = {**mmsa_centred("mosi"), "Has0_acc_2": 0.80}
    c = compare(spread(centre, (-0.001, -0.0005, 0.0, 0.0005, 0.001)), "mosi")
    has0 = c["metrics"]["Has0_acc_2"]["published"]
    assert has0["paper"]["inside"] is False
    assert has0["paper"]["difference"] == pytest.approx(-0.04)
    assert "outside" in has0["paper"]["sentence"] and "4.00 points below" in has0["paper"]["sentence"]
    # Centred on MMSA's value itself: inside, whatever the spread.
    mae = c["metrics"]["MAE"]["published"]["mmsa"]
    assert mae["inside"] is True and "inside" in mae["sentence"]


def test_a_metric_a_source_does_not_report() -> None:
    c = compare(spread(mmsa_centred("mosi")), "mosi")
    missing = c["metrics"]["Mult_acc_7"]["published"]["paper"]
    assert missing == {"value": None, "difference": None, "inside": None,
                       "sentence": "Mult_acc_7: the paper does not report it."}
    row = next(line for line in render_markdown(c).splitlines() if line.startswith("| Mult_acc_7 |"))
    assert "not reported" in row and "46.67" in row


def test_one_seed_has_no_spread_and_no_crash() -> None:
    c = compare({1111: mmsa_centred("sims")}, "sims")
    m = c["metrics"]["MAE"]
    assert m["n"] == 1 and m["std"] is None and m["interval"] is None
    assert m["published"]["paper"]["inside"] is None
    assert m["published"]["paper"]["difference"] == pytest.approx(0.4250 - 0.419)
    assert "no interval" in m["published"]["paper"]["sentence"]
    json.dumps(c, allow_nan=False)
    assert "| MAE | 1 | 42.50 | n/a | n/a |" in render_markdown(c)


def test_not_the_protocol_is_flagged() -> None:
    per_seed = spread(mmsa_centred("mosi"))
    page = render_markdown(compare(per_seed, "mosi", protocol=False, notes=["max_epochs=2"]))
    assert "**Not the published protocol** (max_epochs=2)" in page
    assert "Not the published protocol" not in render_markdown(compare(per_seed, "mosi"))
    # Seeds other than 1111-1115 are not the protocol, whatever the caller says.
    c = compare({"2": mmsa_centred("mosi"), "1": mmsa_centred("mosi")}, "mosi", protocol=True)
    assert c["protocol"] is False
    assert c["notes"] == ["seeds 1, 2 instead of the published 1111-1115"]


def test_table_prints_x100_mae_included() -> None:
    centre = {**mmsa_centred("mosi"), "MAE": 0.713}
    page = render_markdown(compare(spread(centre, (0.0,) * 5), "mosi"))
    # Zero spread: the interval is the point 71.30, which the paper's 0.713 equals.
    row = "| MAE | 5 | 71.30 | 0.00 | 71.30 to 71.30 | 71.30 | +0.00 | yes | 70.80 | +0.50 | **no** |"
    assert row in page


def test_simsv2_has_no_paper_column() -> None:
    c = compare(spread(mmsa_centred("simsv2")), "simsv2")
    assert list(c["sources"]) == ["mmsa"]
    header = next(line for line in render_markdown(c).splitlines() if line.startswith("| metric |"))
    assert "MMSA" in header and "paper" not in header
    assert render_markdown(c).startswith("# Self-MM reproduction: SIMSv2\n")


def test_nan_is_left_out_of_the_statistics() -> None:
    per_seed = spread(mmsa_centred("mosi"))
    per_seed[1113]["Non0_acc_2"] = math.nan  # no non-zero label in that seed's test split
    m = compare(per_seed, "mosi")["metrics"]["Non0_acc_2"]
    assert m["n"] == 4 and m["per_seed"]["1113"] is None
    assert m["mean"] == pytest.approx(PUBLISHED["mosi"]["mmsa"].values["Non0_acc_2"])


@pytest.mark.parametrize("per_seed, dataset, message", [
    ({1111: {}}, "mosii", "unknown dataset 'mosii'"),
    ({}, "mosi", "no finished seed"),
    ({1111: {"MAE": 0.7}}, "sims", "seed 1111: metrics Mult_acc_2, Mult_acc_3, Mult_acc_5, F1_score, Corr"),
])
def test_refusals(per_seed: dict, dataset: str, message: str) -> None:
    with pytest.raises(SelfMMError, match=message):
        compare(per_seed, dataset)


def test_write_keeps_provenance_beside_the_table(tmp_path) -> None:
    provenance = {"versions": {"selfmm": "0.1.0", "torch": "2.13.0"}, "data_sha256": "5da0b844",
                  "device": "cpu"}
    c = compare(spread(mmsa_centred("mosi")), "mosi")
    text = write(tmp_path, c, provenance)
    saved = json.loads((tmp_path / "reproduction.json").read_text())
    assert saved["provenance"] == provenance and saved["metrics"] == json.loads(json.dumps(c["metrics"]))
    assert (tmp_path / "reproduction.md").read_text() == text
    assert "## Provenance" in text and "  - torch: 2.13.0" in text and "- data_sha256: 5da0b844" in text


# --- `selfmm reproduce` on the synthetic benchmark ------------------------------------------


@pytest.fixture(scope="module")
def reproduced(tiny_bert, synth_path, tmp_path_factory):
    from selfmm.cli import main

    out = tmp_path_factory.mktemp("reproduce") / "run"
    data = synth_path("mosi", scale=0.03, aligned=True)
    argv = ["reproduce", "--dataset", "mosi", "--data", str(data), "--out", str(out), "--text-model",
            str(tiny_bert), "--max-epochs", "1", "--seeds", "1", "2", "--device", "cpu"]
    assert main(argv) == 0
    return argv, out, data


def test_reproduce_writes_a_self_contained_record(reproduced, capsys):
    import hashlib
    from pathlib import Path

    _, out, data = reproduced
    saved = json.loads((out / "reproduction.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert saved["seeds"] == [1, 2] and saved["protocol"] is False
    assert any("at most 1 epoch" in note for note in saved["notes"])
    assert saved["metrics"]["MAE"]["per_seed"] == {s: results["seeds"][s]["MAE"] for s in ("1", "2")}
    provenance = saved["provenance"]
    assert provenance == results["provenance"]
    assert provenance["data"]["file"]["sha256"] == hashlib.sha256(Path(data).read_bytes()).hexdigest()
    assert provenance["invocation"].startswith("selfmm reproduce --dataset mosi")
    text = (out / "reproduction.md").read_text()
    assert "**Not the published protocol**" in text and "## Provenance" in text and "sha256" in text


def test_reproduce_resumes(reproduced, tmp_path):
    from selfmm.cli import main

    argv, original, _ = reproduced
    out = tmp_path / "run"
    shutil.copytree(original, out)
    # Interrupted during seed 2's test: its metrics and the run's summaries are not written yet.
    for name in ("seed-2/metrics.json", "results.json", "reproduction.json", "reproduction.md"):
        (out / name).unlink()
    kept = (out / "seed-1" / "best.safetensors").stat().st_mtime_ns
    assert main(argv[:argv.index("--out") + 1] + [str(out)] + argv[argv.index("--out") + 2:] + ["--resume"]) == 0
    assert (out / "seed-1" / "best.safetensors").stat().st_mtime_ns == kept
    before = json.loads((original / "reproduction.json").read_text())
    after = json.loads((out / "reproduction.json").read_text())
    assert after["metrics"] == before["metrics"]


def test_report_shows_the_reproduction_table(reproduced, tmp_path):
    from selfmm.report import build_report

    _, out, _ = reproduced
    html = build_report(out)
    assert '<table id="reproduction">' in html and "Not the published protocol" in html


def test_reproduce_refuses_a_dataset_the_file_does_not_fit(tiny_bert, synth_path, tmp_path, capsys):
    from selfmm.cli import main

    def refused(dataset: str, profile: str) -> str:
        argv = ["reproduce", "--dataset", dataset, "--data", str(synth_path(profile, scale=0.03)),
                "--out", str(tmp_path / dataset), "--text-model", str(tiny_bert), "--max-epochs", "1"]
        assert main(argv) == 2
        assert not (tmp_path / dataset).exists()
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "every label lies within [-1, 1], as in SIMS, not in mosi's [-3, 3]" in refused("mosi", "sims")
    assert "outside the label range [-1, 1]" in refused("sims", "mosi")


def test_python_reproduce_returns_the_record(tiny_bert, synth_path, tmp_path):
    import warnings

    import selfmm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = selfmm.load_features(synth_path("sims", scale=0.03), "sims")
    result = selfmm.reproduce("sims", data, tmp_path / "run", seeds=[3], text_model=str(tiny_bert),
                              max_epochs=1, device="cpu", progress=False)
    saved = json.loads((tmp_path / "run" / "reproduction.json").read_text())
    assert {k: v for k, v in saved.items() if k != "provenance"} == json.loads(json.dumps(result))
    assert set(result["sources"]) == {"paper", "mmsa"} and result["metrics"]["Mult_acc_2"]["n"] == 1


def test_bf16_is_recorded_and_flagged_as_not_the_protocol(tiny_bert, synth_path, tmp_path, monkeypatch):
    import warnings

    import selfmm
    from selfmm import precision

    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)  # emulated where the CPU has none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = selfmm.load_features(synth_path("sims", scale=0.03), "sims")
    result = selfmm.reproduce("sims", data, tmp_path / "run", seeds=[3], text_model=str(tiny_bert),
                              max_epochs=1, device="cpu", precision="bf16", progress=False)
    assert result["protocol"] is False and "bf16 autocast instead of float32" in result["notes"]
    assert selfmm.load_run(tmp_path / "run").seeds[3].config.train.precision == "bf16"


def test_under_torchrun_each_process_takes_its_share_of_the_protocol_batch(tiny_bert, synth_path, tmp_path,
                                                                           monkeypatch):
    """K processes used to train 16 clips each, a global batch of 16K, still called the protocol."""
    import warnings

    import selfmm
    from selfmm import api

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = selfmm.load_features(synth_path("mosi", scale=0.03), "mosi")
    batches = []

    def fit(cfg, *args, **kwargs):
        batches.append(cfg.optim.batch_size)
        raise SelfMMError("stop here")

    monkeypatch.setattr(api, "fit", fit)
    for processes, per_process in (("1", 16), ("2", 8), ("4", 4), ("16", 1)):
        monkeypatch.setenv("WORLD_SIZE", processes)
        with pytest.raises(SelfMMError, match="stop here"):
            selfmm.reproduce("mosi", data, tmp_path / "run", text_model=str(tiny_bert), device="cpu")
        assert batches[-1] == per_process
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SelfMMError, match="batch of 16 does not split into 3 equal parts"):
        selfmm.reproduce("mosi", data, tmp_path / "run", text_model=str(tiny_bert), device="cpu")
    assert len(batches) == 4 and not (tmp_path / "run").exists()
