"""A `selfmm cache` folder from a stranger: a forged manifest is a clear error, never a traceback."""

from __future__ import annotations

import json

import pytest

from selfmm.cli import main


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, synth_path):
    out = tmp_path_factory.mktemp("cache") / "c"
    assert main(["cache", str(synth_path("mosi", scale=0.02, aligned=True)), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("forge", [
    lambda m: [m],
    lambda m: {**m, "splits": None},
    lambda m: {**m, "repairs": 3},
    lambda m: {k: v for k, v in m.items() if k != "splits"},
    lambda m: {**m, "splits": {**m["splits"], "train": {"../../etc/passwd": {"dtype": "<f4", "shape": [1]}}}},
    lambda m: {**m, "splits": {**m["splits"], "valid": {"audio": {"dtype": 5, "shape": "x"}}}},
])
def test_forged_manifest_is_refused(cache_dir, tmp_path, capsys, forge):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(cache_dir, copy)
    manifest = copy / "manifest.json"
    manifest.write_text(json.dumps(forge(json.loads(manifest.read_text()))))
    assert main(["inspect", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "manifest" in err and "Traceback" not in err
