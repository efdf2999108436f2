"""Run folders run no code (selfmm.models.import_class): the model class a run's config.json
names is imported only by module name from what is installed, never from the run folder nor
from the current directory; and only a torch Module class is taken."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import selfmm

from .helpers import copy_run

CANARY = """
from pathlib import Path
Path({canary!r}).write_text("ran")
import torch
class Evil(torch.nn.Module):
    feature_dims = {{"m": 1, "t": 1, "a": 1, "v": 1}}
"""


def name_class(run: Path, recorded: str) -> None:
    config = run / "seed-7" / "config.json"
    saved = json.loads(config.read_text())
    saved["model_class"] = recorded
    config.write_text(json.dumps(saved))


WHERE = ["run folder", "seed folder", "current directory", "subfolder of the current directory"]


@pytest.mark.parametrize("where", WHERE)
def test_a_module_beside_the_run_never_runs(where, tiny_run, tmp_path, monkeypatch):
    run = copy_run(tiny_run, tmp_path / "shared-run", checkpoints=False)
    canary = tmp_path / "canary"
    module = f"evil_{where.replace(' ', '_')}"
    folder = {"run folder": run, "seed folder": run / "seed-7", "current directory": tmp_path / "here",
              "subfolder of the current directory": tmp_path / "here" / "pkg"}[where]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(CANARY.format(canary=str(canary)))
    recorded = f"pkg.{module}:Evil" if where.startswith("subfolder") else f"{module}:Evil"
    name_class(run, recorded)
    # As a notebook started in the shared folder (or next to the module) would: '' on sys.path.
    monkeypatch.chdir(run if where.endswith("folder") else tmp_path / "here")
    monkeypatch.syspath_prepend("")
    with pytest.warns(UserWarning, match=f"{recorded} cannot be imported from the installed modules"):
        loaded = selfmm.load_run(run)
    assert not canary.exists() and recorded.split(":")[0] not in sys.modules
    with pytest.raises(selfmm.SelfMMError, match="pass `model` to load_run"):
        loaded.seeds[7].model()


def test_an_installed_module_is_imported(tiny_run, tmp_path, monkeypatch):
    """The same module installed (on sys.path, not the current directory) is what model= saves."""
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    site = tmp_path / "site"
    site.mkdir()
    (site / "installed_model.py").write_text(CANARY.format(canary=str(tmp_path / "imported")))
    name_class(run, "installed_model:Evil")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    loaded = selfmm.load_run(run)
    assert (tmp_path / "imported").exists() and loaded.seeds[7].model_class.__name__ == "Evil"
    monkeypatch.delitem(sys.modules, "installed_model")


@pytest.mark.parametrize("recorded", ["os:system", "subprocess:Popen", "shutil:rmtree"])
def test_only_a_module_class_is_taken(recorded, tiny_run, tmp_path, monkeypatch):
    """A config.json naming an installed callable: refused, never called with the run's values."""
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    name_class(run, recorded)
    calls = []
    module, _, name = recorded.partition(":")
    monkeypatch.setattr(sys.modules[module] if module in sys.modules else __import__(module), name,
                        lambda *args, **kwargs: calls.append(args))
    with pytest.warns(UserWarning, match="is not a torch.nn.Module class"):
        loaded = selfmm.load_run(run)
    with pytest.raises(selfmm.SelfMMError, match="pass `model`"):
        loaded.seeds[7].model()
    assert calls == [] and os.path.exists(run)
