"""The robustness suite's long variants are marked `slow` and run only with `-m slow`; a tiny
trained run (`tiny_run`) is shared by the tests that read or resume one."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from selfmm.cli import main

from .helpers import train_argv


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long variant of a robustness test; run with -m slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or ""):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="slow variant; run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") and here in Path(item.fspath).parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter) -> None:
    """How many corrupted files the loader fuzzing tried, per strategy, when it ran."""
    fuzz = next((m for name, m in list(sys.modules.items()) if name.endswith("test_fuzz_loader")), None)
    cases = getattr(fuzz, "FUZZ_CASES", None)
    if cases:
        strategies = dict.fromkeys(s for s, _ in cases)
        terminalreporter.write_line(f"loader fuzzing: {sum(cases.values())} cases (strategy: refused/loaded): "
                                    + ", ".join(f"{s}: {cases.get((s, 'error'), 0)}/{cases.get((s, 'loaded'), 0)}"
                                                for s in strategies))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process training on one thread: on a busy machine, OpenMP threads waiting for each
    other at every barrier make the tiny runs of these tests many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synth_path, tiny_bert) -> dict[str, Path]:
    """One finished seed (7) of a one-epoch run, trained from its own folder with a relative
    `--data mosi.pkl`. Shared: copy it (`copy_run`) before changing anything."""
    root = tmp_path_factory.mktemp("tiny-run")
    shutil.copy(synth_path("mosi", scale=0.02), root / "mosi.pkl")
    before = os.getcwd()
    os.chdir(root)
    try:
        assert main(train_argv("mosi.pkl", "run", tiny_bert)) == 0
    finally:
        os.chdir(before)
    return {"run": root / "run", "data": root / "mosi.pkl", "bert": tiny_bert}

