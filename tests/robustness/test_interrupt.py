"""Ctrl-C stops every command with a worker pool within seconds (selfmm.pools): queued work is
cancelled, running workers are ended, finished parts stay for the rerun.

`extract-dataset` gets a real SIGINT, as a terminal's Ctrl-C sends it to the whole process group
and as `kill -INT` sends it to the command alone; so do `serve` with a request in flight and
`train` with data-loading workers. Training's bit-identical resume is in test_crash.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from selfmm.cli import main
from selfmm.extract import extract_dataset
from selfmm.pools import keep_interrupts, stop
from servers import start_serve

from .helpers import train_argv

# The command must be gone this soon after the signal: the pool's own 2-s limit, plus the
# interpreter's exit, on a busy machine. A long clip takes far longer to extract (~15 s on an
# idle core), so a command that waits for its running clips fails this.
EXIT_WITHIN_S = 6.0
SHORT, LONG = 6, 2
LONG_SECONDS = 600


def _live_processes(field: int, value: int) -> list[int]:
    """Processes (not zombies) whose /proc stat field after the name (1: parent, 2: group)
    equals `value`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def processes_in_group(group: int) -> list[int]:
    return _live_processes(2, group)


def test_stop_ends_a_busy_pool_at_once():
    pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"))
    futures = [pool.submit(time.sleep, 60) for _ in range(8)]
    workers = list(pool._processes.values())
    deadline = time.monotonic() + 60
    while not all(f.running() for f in futures[:2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    stop(pool)
    assert time.monotonic() - start < 3.5
    assert_gone(workers)
    # The queued ones are cancelled and the running ones end broken; under load the executor's
    # own thread may find its workers gone first and mark the queued ones broken too. Either
    # way none runs: every future ends, none with a result.
    deadline = time.monotonic() + 30
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(f.cancelled() or f.exception() is not None for f in futures)


class InterruptedFinalizer:
    def __del__(self):
        raise KeyboardInterrupt  # Ctrl-C landing while a finalizer runs: Python drops it


def test_a_ctrl_c_lost_in_a_finalizer_is_delivered_again(monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # keep_interrupts silences it after
    with pytest.raises(KeyboardInterrupt):
        with keep_interrupts():
            InterruptedFinalizer()  # collected at once; its KeyboardInterrupt is swallowed
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the command carrying on, as it did before
                time.sleep(0.01)
    # Without it, Python drops the interrupt: the test goes on past this point.
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    InterruptedFinalizer()
    time.sleep(0.2)


# Ctrl-C or SIGTERM while workers start, another thread running (torch's take the signals that
# the main thread blocks): the signal waits for the block's end, then arrives once.
HELD_SIGNAL = """
import os, signal, sys, threading, time
from selfmm import pools
other = threading.Event()
threading.Thread(target=other.wait).start()
try:
    with pools.terminate_as_interrupt(), getattr(pools, sys.argv[2])():
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(0.3)
        print("started", flush=True)
except KeyboardInterrupt as exc:
    print(type(exc).__name__)
finally:
    other.set()
"""


@pytest.mark.parametrize("sig, block, raised", [("SIGINT", "starting_processes", "KeyboardInterrupt"),
                                                 ("SIGTERM", "starting_processes", "Terminated"),
                                                 ("SIGINT", "forked_without_interrupts", "KeyboardInterrupt")])
def test_a_signal_waits_until_a_process_has_started(sig, block, raised):
    """Blocking SIGINT in the main thread alone let another thread take it, and Python raised it
    inside the block: a worker forked by the fork server outlived `serve` (CI, once)."""
    done = subprocess.run([sys.executable, "-c", HELD_SIGNAL, sig, block], capture_output=True, text=True,
                          timeout=60, env=environment())
    assert done.stdout.split() == ["started", raised], done.stderr


def assert_gone(workers: list, within: float = 10.0) -> None:
    """Terminated; a process in the middle of disk I/O on a loaded machine may take a moment."""
    deadline = time.monotonic() + within
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.is_alive() for w in workers)


def write_labels(path: Path, names: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "clip_id", "text", "label", "mode"])
        for i, name in enumerate(names):
            writer.writerow([name, "0", "it was fine", 0.5, ["train", "valid", "test"][i % 3]])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Six short clips, then two of ten minutes: the command is interrupted while it extracts those."""
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    pytest.importorskip("opensmile")
    from media import make_video

    root = tmp_path_factory.mktemp("interrupt")
    short = make_video(root / "short.mp4", seconds=0.5, face=True)
    long = make_video(root / "long.mp4", seconds=LONG_SECONDS, fps=4, face=True)
    names = [f"short{i}" for i in range(SHORT)] + [f"long{i}" for i in range(LONG)]
    for name in names:
        (root / "Raw" / name).mkdir(parents=True)
        os.link(short if name.startswith("short") else long, root / "Raw" / name / "0.mp4")
    write_labels(root / "label.csv", names)
    write_labels(root / "short.csv", names[:SHORT])
    return root


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, output: Callable[[], str]) -> None:
    """Poll `ready()` for up to 180 s while `proc` runs; a failure shows the process's `output()`."""
    deadline = time.monotonic() + 180
    while not ready():
        assert proc.poll() is None, output()
        assert time.monotonic() < deadline, f"waited 180 s for: {what}\n{output()}"
        time.sleep(0.02)


def interrupt_when(command: list[str], ready: Callable[[], bool], what: str,
                   group: bool = True) -> tuple[subprocess.Popen, float, str]:
    """Start `command`; once `ready()` (within 180 s), send SIGINT to its process group, as
    Ctrl-C in a terminal does, or (group=False) to it alone, as `kill -INT` does. Returns the
    process, the seconds from the signal to its exit, and its stderr."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(), start_new_session=True)
    try:
        wait_until(ready, proc, what, lambda: str(proc.communicate()))
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=60)
        return proc, time.monotonic() - signalled, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_group_gone(group: int) -> None:
    """Every process of the command's group has exited (a moment for the last to be reaped)."""
    deadline = time.monotonic() + 10
    while processes_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in_group(group) == []


@pytest.mark.parametrize("target", ["group", "command"])
def test_extract_dataset_stops_on_ctrl_c_and_keeps_finished_clips(target, clips, tmp_path):
    out = tmp_path / "feats.pkl"
    parts = Path(f"{out}.parts")
    command = [sys.executable, "-m", "selfmm", "extract-dataset", str(clips / "Raw"), "--labels",
               str(clips / "label.csv"), "--out", str(out), "--workers", "2", "--no-progress"]
    # The long clips are being extracted once the short ones are done.
    proc, took, err = interrupt_when(command, lambda: len(list(parts.glob("*.npz"))) >= SHORT,
                                     "the short clips were not extracted", group=target == "group")
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after SIGINT"
    assert proc.returncode == 130 and "selfmm: interrupted" in err and "Traceback" not in err, err
    assert_group_gone(proc.pid)
    assert len(list(parts.glob("*.npz"))) == SHORT and not out.exists()
    if target == "group":
        # The finished clips are reused; what an ended worker left behind is cleared.
        report = extract_dataset(clips / "Raw", clips / "short.csv", out, workers=1, progress=False)
        assert (report.reused, report.extracted) == (SHORT, 0)
        assert not list(parts.glob(".*.tmp"))


def test_serve_pool_closes_with_a_job_running(tiny_run):
    """At shutdown (uvicorn's Ctrl-C) the scoring pool ends its workers instead of waiting for
    their jobs: up to --max-seconds of video each."""
    pytest.importorskip("fastapi")
    from selfmm.predict import Predictor
    from selfmm.serve import ScoringPool

    pool = ScoringPool(Predictor(tiny_run["run"] / "seed-7", device="cpu"), workers=1)
    job = pool._executor.submit(time.sleep, 60)
    workers = list(pool._executor._processes.values())
    deadline = time.monotonic() + 120
    while not job.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.running()
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 3.5
    assert_gone(workers)


@pytest.fixture(scope="module")
def video_run(clips, tiny_bert, tmp_path_factory) -> Path:
    """A run trained for one epoch on the six short clips' extracted features, so it scores videos."""
    root = tmp_path_factory.mktemp("video-run")
    assert main(["extract-dataset", str(clips / "Raw"), "--labels", str(clips / "short.csv"), "--out",
                 str(root / "feats.pkl"), "--workers", "1", "--no-progress", "--text-model", str(tiny_bert)]) == 0
    assert main(train_argv(root / "feats.pkl", root / "run", tiny_bert, "--set", "batch_size=2")) == 0
    return root / "run"


def test_serve_stops_on_ctrl_c_with_a_request_in_flight(video_run, clips, tmp_path):
    """uvicorn gives the request a short grace, then the pool ends the worker scoring it (a
    ten-minute video, ~15 s of work) instead of waiting for it."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    log = tmp_path / "server.log"
    proc, url = start_serve(video_run, log, "--workers", "1", "--device", "cpu", "--max-seconds",
                            str(LONG_SECONDS + 10))
    replies: list[object] = []

    def send() -> None:
        try:
            with open(clips / "long.mp4", "rb") as video:
                replies.append(httpx.post(f"{url}/predict", files={"video": video},
                                          data={"transcript": "it was fine"}, timeout=120))
        except httpx.HTTPError as exc:
            replies.append(exc)

    try:
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(3.0)  # uploaded; the worker is scoring it
        assert not replies, [getattr(r, "text", r) for r in replies]
        os.killpg(proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - signalled
        sender.join(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after SIGINT:\n{output}"
    assert proc.returncode in (0, 130) and "Traceback" not in output, output
    assert len(replies) == 1 and getattr(replies[0], "status_code", None) == 503, replies
    assert "shutting down" in replies[0].json()["detail"]
    assert_group_gone(proc.pid)


def test_train_with_loader_workers_stops_on_ctrl_c(tiny_run, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "selfmm", *train_argv(tiny_run["data"], out, tiny_run["bert"], "--max-epochs",
                                                            "50", "--set", "batch_size=2", "--set", "num_workers=2")]
    # Interrupted once an epoch is done, while the next runs.
    proc, took, err = interrupt_when(command, lambda: bool(list((out / "seed-7").glob("checkpoint-*.pt"))),
                                     "no epoch finished")
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after SIGINT"
    assert proc.returncode == 130 and err.rstrip().endswith("selfmm: interrupted") and "Traceback" not in err, err
    assert_group_gone(proc.pid)


def test_train_with_jobs_stops_every_job_on_ctrl_c(tiny_run, tmp_path):
    """Two seeds side by side (`--jobs 2`): Ctrl-C ends the command and both jobs, within the
    same time as one job, and leaves no process and no temporary file."""
    out = tmp_path / "run"
    argv = [*train_argv(tiny_run["data"], out, tiny_run["bert"], "--max-epochs", "50", "--set", "batch_size=2",
                        "--jobs", "2")]
    argv[argv.index("--seeds") + 1:argv.index("--seeds") + 2] = ["7", "8"]
    command = [sys.executable, "-m", "selfmm", *argv]
    proc, took, err = interrupt_when(command, lambda: bool(list(out.glob("seed-*/checkpoint-*.pt"))),
                                     "no epoch finished")
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after SIGINT"
    assert proc.returncode == 130 and err.rstrip().endswith("selfmm: interrupted") and "Traceback" not in err, err
    assert_group_gone(proc.pid)
    assert not list(out.rglob("*.tmp"))


def children(pid: int) -> list[int]:
    return _live_processes(1, pid)


def fork_server(pid: int) -> int | None:
    for child in children(pid):
        try:
            if "forkserver" in Path(f"/proc/{child}/cmdline").read_text():
                return child
        except OSError:
            pass
    return None


# (moment, signal, to the whole group as Ctrl-C does or to the command alone as `kill` does)
MOMENTS = [("importing", signal.SIGINT, True), ("workers starting", signal.SIGTERM, False),
           ("workers starting", signal.SIGINT, True), ("serving", signal.SIGTERM, False)]


@pytest.fixture
def short_temp():
    """A temporary folder of a short path: the fork server's socket is made in it, and an
    AF_UNIX path may have 107 bytes, which pytest's own folders pass under xdist."""
    path = Path(tempfile.mkdtemp(prefix="selfmm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("moment, sig, group", MOMENTS, ids=[f"{m}-{s.name}" for m, s, _ in MOMENTS])
def test_serve_stops_on_a_signal_at_any_moment(moment, sig, group, tiny_run, tmp_path, short_temp):
    """Ctrl-C or SIGTERM while the command imports, while its scoring workers start (the fork
    server importing torch, the workers loading the run), or while it serves: status 130 or 143
    and one line, no traceback from any process, no process left, nothing left in the temp
    folder (multiprocessing's pymp-* folder stayed after SIGTERM; torch's own compile cache,
    torchinductor_*, is a cache it keeps by design)."""
    pytest.importorskip("fastapi")
    temp = short_temp
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "selfmm", "serve", "--run", str(tiny_run["run"]), "--port", "0",
               "--workers", "1", "--device", "cpu"]
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**environment(), "TMPDIR": str(temp)})
    ready = {
        "importing": lambda: "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text(),
        "workers starting": lambda: (server := fork_server(proc.pid)) is not None and bool(children(server))
        and "serving" not in log.read_text(),
        "serving": lambda: "Application startup complete" in log.read_text(),
    }[moment]
    try:
        wait_until(ready, proc, moment, log.read_text)
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    expected = {signal.SIGINT: (130, "selfmm: interrupted"), signal.SIGTERM: (143, "selfmm: terminated")}[sig]
    assert (proc.returncode, output.rstrip().splitlines()[-1]) == expected, output
    assert "Traceback" not in output and "Error" not in output, output
    assert_group_gone(proc.pid)
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")] == []


def test_a_background_thread_failing_after_ctrl_c_shows_no_traceback(monkeypatch, capsys):
    """A library's thread that fails while the command ends on Ctrl-C (multiprocessing's resource
    sharer losing a data-loader worker the signal ended) prints no traceback after the one line."""
    import selfmm.cli

    shown = []  # what would be printed: Python's own hook prints each thread's traceback
    monkeypatch.setattr(threading, "excepthook", shown.append)
    released = threading.Event()

    def fails_later() -> None:
        released.wait(10)
        raise ConnectionResetError("the worker is gone")

    def interrupted(args):
        threading.Thread(target=fails_later, daemon=True).start()
        raise KeyboardInterrupt

    monkeypatch.setattr(selfmm.cli, "dispatch", interrupted)
    thread_count = threading.active_count()
    assert main(["synth", "--profile", "mosi", "--out", "x.pkl"]) == 130
    released.set()
    deadline = time.monotonic() + 10
    while threading.active_count() > thread_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert capsys.readouterr().err == "selfmm: interrupted\n" and shown == []
