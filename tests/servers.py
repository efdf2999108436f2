"""`selfmm serve` in a process of its own, on a free loopback port, for the tests that need a real one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(run: Path, log: Path, *options: str, within: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start `selfmm serve --run RUN OPTIONS` in a new process group, its output in `log`; return
    it and its URL once /health answers. Fails with the log if it exits or is not up in time."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "selfmm", "serve", "--run", str(run), "--port", str(port), *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + within
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server did not start within {within:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn's graceful stop, which ends the scoring workers), SIGKILL to the
    whole group if that takes over 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
