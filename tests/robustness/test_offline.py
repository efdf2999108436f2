"""The network is touched only for a hub model that is not cached.

Every command runs in a subprocess whose sitecustomize makes any internet socket connection
fail and records the attempt, with no proxy variables set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SITECUSTOMIZE = '''
import os
import socket

_log = os.environ["SELFMM_TEST_CONNECT_LOG"]


def _refuse(address):
    with open(_log, "a") as handle:
        handle.write(f"{address}\\n")
    raise OSError(101, f"network disabled by the test (connect to {address})")


def _guard(original):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address)
        return original(self, address)
    return connect


socket.socket.connect = _guard(socket.socket.connect)
socket.socket.connect_ex = _guard(socket.socket.connect_ex)
_getaddrinfo = socket.getaddrinfo
socket.getaddrinfo = lambda host, *args, **kwargs: _refuse(host)

if os.environ.get("SELFMM_TEST_NO_WAIT"):
    # huggingface_hub waits 1, 2, 4, 8, 8 s between its retries of a refused connection;
    # the retries are what is tested, not the waiting (selfmm itself never sleeps).
    import time
    time.sleep = lambda seconds: None
'''


@pytest.fixture
def offline(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "connections.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
               SELFMM_TEST_CONNECT_LOG=str(log), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")

    def selfmm(*args: str, online: bool = False) -> subprocess.CompletedProcess:
        run_env = dict(env)
        if online:
            del run_env["HF_HUB_OFFLINE"], run_env["TRANSFORMERS_OFFLINE"]
            run_env["SELFMM_TEST_NO_WAIT"] = "1"
        return subprocess.run([sys.executable, "-m", "selfmm", *args], env=run_env, capture_output=True,
                              text=True, timeout=600)

    selfmm.log = log
    return selfmm


def test_sitecustomize_blocks(offline):
    fetch = "import urllib.request as u; u.urlopen('http://example.com', timeout=5)"
    done = subprocess.run([sys.executable, "-c", fetch],
                          env={**os.environ, "PYTHONPATH": str(Path(offline.log).parent / "site"),
                               "SELFMM_TEST_CONNECT_LOG": str(offline.log)}, capture_output=True, text=True)
    assert done.returncode != 0 and "network disabled by the test" in done.stderr
    offline.log.write_text("")


def test_train_and_evaluate_without_network(tmp_path, synth_path, tiny_bert, offline):
    data = synth_path("mosi", scale=0.02)
    out = tmp_path / "run"
    done = offline("train", "--dataset", "mosi", "--data", str(data), "--out", str(out), "--text-model",
                   str(tiny_bert), "--seeds", "7", "--max-epochs", "1", "--set", "batch_size=8")
    assert done.returncode == 0, done.stderr
    done = offline("evaluate", "--run", str(out / "seed-7"), "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert "reproduces the recorded test metrics" in done.stderr
    assert offline.log.read_text() == ""


def test_uncached_hub_model_fails_fast_with_a_local_path_hint(tmp_path, synth_path, offline):
    args = ("train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.02)), "--out",
            str(tmp_path / "run"), "--text-model", "nobody-org/no-such-bert")
    done = offline(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not in the Hugging Face cache (HF_HUB_OFFLINE=1)" in done.stderr
    assert "--text-model /path/to/model" in done.stderr
    assert offline.log.read_text() == ""  # offline: not even tried
    assert not (tmp_path / "run").exists()
    # Without HF_HUB_OFFLINE the hub is asked (the only case that touches the network), and
    # a failed download is the same one-line error.
    done = offline(*args, online=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "could not be downloaded" in done.stderr and "--text-model /path/to/model" in done.stderr
    assert offline.log.read_text() != ""
