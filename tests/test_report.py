"""`selfmm report`: one self-contained, escaped HTML page, rendered by headless Chromium."""

from __future__ import annotations

import base64
import csv
import json
import pickle
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from selfmm.cli import main
from selfmm.data.unpickle import safe_load
from selfmm.report import build_report

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def run(tiny_bert, synth_path, tmp_path_factory) -> Path:
    """A trained seed 1 and a seed 2 made from it with other numbers, so means are checkable."""
    out = tmp_path_factory.mktemp("report") / "run"
    code = main(["train", "--dataset", "mosi", "--data", str(synth_path(scale=0.05, aligned=True)),
                 "--out", str(out), "--text-model", str(tiny_bert), "--seeds", "1", "--max-epochs", "3"])
    assert code == 0
    second = out / "seed-2"
    shutil.copytree(out / "seed-1", second, ignore=shutil.ignore_patterns("*.pt"))
    for name in ("config.json", "metrics.json"):
        saved = json.loads((second / name).read_text())
        saved["seed"] = 2
        if name == "metrics.json":
            saved["test"]["MAE"] += 0.1
        (second / name).write_text(json.dumps(saved))
    return out


def table_rows(html: str, table_id: str = "metrics") -> list[list[str]]:
    """The cell texts of table#<table_id>, entities decoded, row by row (header first)."""

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.inside = self.cell = False

        def handle_starttag(self, tag, attrs):
            if tag == "table" and ("id", table_id) in attrs:
                self.inside = True
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag in ("td", "th"):
                self.cell = True
                self.rows[-1].append("")

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif tag in ("td", "th"):
                self.cell = False

        def handle_data(self, data):
            if self.inside and self.cell:
                self.rows[-1][-1] += data.strip()

    parser = Cells()
    parser.feed(html)
    return parser.rows


def test_report_page(run, synth_path, tmp_path):
    # Transcripts are user data: a hostile one must come out as text, not markup.
    raw = safe_load(synth_path(scale=0.05, aligned=True))
    raw["test"]["raw_text"] = [EVIL] * len(raw["test"]["raw_text"])
    data = tmp_path / "evil.pkl"
    data.write_bytes(pickle.dumps(raw, protocol=4))
    out = tmp_path / "page.html"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), "--top", "4"]) == 0
    html = out.read_text()

    rows = table_rows(html)
    assert rows[0][:2] == ["seed", "best epoch"] and "MAE" in rows[0]
    assert [r[0] for r in rows[1:]] == ["1", "2", "mean", "std"]
    mae = rows[0].index("MAE")
    one = json.loads((run / "seed-1" / "metrics.json").read_text())["test"]["MAE"]
    assert float(rows[3][mae]) == pytest.approx((one + 0.05) * 100, abs=0.006)
    assert rows[4][mae] == "5.00"

    assert "<script" not in html and "<b>bold" not in html
    errors = table_rows(html, "errors")
    # Parsed as markup, the script and b elements would drop out of the cell's text.
    assert [r[errors[0].index("transcript")] for r in errors[1:]] == [EVIL] * 4
    assert len(re.findall(r'<tr><td>test\d+\$_\$\d+</td>', html)) == 4
    assert "<th>human t</th>" in html  # the synthetic file has human unimodal labels
    # Self-contained: every image inline, nothing fetched.
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 1 + 2 * 3  # curves; per seed distributions, distance, agreement
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]).startswith(b"\x89PNG")
    assert "http://" not in html and "https://" not in html and "href=" not in html
    for heading in ("Test metrics", "Training and validation curves", "Generated unimodal labels",
                    "Largest test errors", "Configuration"):
        assert f"<h2>{heading}</h2>" in html


def test_report_of_an_unfinished_seed_dir(run, tmp_path):
    seed = tmp_path / "seed-3"
    shutil.copytree(run / "seed-1", seed, ignore=shutil.ignore_patterns("*.pt"))
    (seed / "metrics.json").unlink()
    with open(seed / "test_predictions.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) > 1
    (seed / "test_predictions.csv").unlink()
    assert main(["report", str(seed)]) == 0
    html = (seed / "report.html").read_text()
    assert "No seed has finished" in html and "No test predictions yet" in html
    assert "training and validation loss per epoch" in html


def test_config_values_and_paths_are_text(run, synth_path, tmp_path):
    # No "/" in a file name, hence a script element left open.
    evil_dir = tmp_path / "<script>alert('x')"
    seed = evil_dir / "seed-1"
    shutil.copytree(run / "seed-1", seed, ignore=shutil.ignore_patterns("*.pt"))
    data = evil_dir / "mosi.pkl"
    shutil.copy(synth_path(scale=0.05, aligned=True), data)
    saved = json.loads((seed / "config.json").read_text())
    saved["config"]["model"]["text_model"] = EVIL
    saved["data"]["path"] = str(data)
    (seed / "config.json").write_text(json.dumps(saved))
    html = build_report(evil_dir)
    assert "<script" not in html and "<b>bold" not in html
    text = unescape(html)
    assert f"<title>selfmm report: {evil_dir.name}</title>" in text
    assert f"<h1>Self-MM run {evil_dir.resolve()}</h1>" in text
    assert f"against the human unimodal labels of {data}\n" in text
    config = dict(r for r in table_rows(html, "config")[1:])
    assert config["model.text_model"] == json.dumps(EVIL) and config["data.path"] == json.dumps(str(data))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_chromium_renders_the_metrics_table(run, tmp_path):
    out = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    rows = table_rows(dom)
    assert [r[0] for r in rows] == ["seed", "1", "2", "mean", "std"]
    assert all(len(r) == len(rows[0]) for r in rows)
    assert re.search(r'<img alt="seed 1: agreement" src="data:image/png;base64,', dom)
