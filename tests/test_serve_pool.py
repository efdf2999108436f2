"""selfmm.serve.pool alone: worker processes that load a run, run the worker's jobs, and are
replaced when one dies, whether idle or in the middle of a job."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

pytest.importorskip("av")
pytest.importorskip("fastapi")

from selfmm.cli import main  # noqa: E402
from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.predict import Predictor  # noqa: E402
from selfmm.serve.pool import ScoringPool, WorkerDied  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory, synth_path, tiny_bert):
    """One worker holding a one-epoch run of a tiny synthetic file, closed after the module."""
    root = tmp_path_factory.mktemp("pool")
    assert main(["train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.02)), "--out",
                 str(root / "run"), "--text-model", str(tiny_bert), "--seeds", "7", "--max-epochs", "1",
                 "--device", "cpu"]) == 0
    scoring = ScoringPool(Predictor(root / "run", device="cpu"), workers=1)
    asyncio.run(scoring.start())
    yield scoring
    scoring.close()


def worker_pids(pool: ScoringPool) -> list[int]:
    return [process.pid for process in pool._executor._processes.values()]


def score_junk(pool: ScoringPool, tmp_path) -> str:
    """A job that a loaded worker refuses: its message, naming the field and not the file."""
    junk = tmp_path / "junk.upload"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(SelfMMError) as caught:
        asyncio.run(pool.score(junk, "words", 5.0))
    assert str(junk) not in str(caught.value)
    return str(caught.value)


def test_the_worker_has_loaded_the_run_and_scores(pool, tmp_path):
    assert pool.workers == 1 and len(worker_pids(pool)) == 1
    assert worker_pids(pool)[0] != os.getpid()
    assert score_junk(pool, tmp_path).startswith("video: not a readable video file")


def test_a_worker_killed_mid_job_is_reported_and_replaced(pool, tmp_path):
    fifo = tmp_path / "stuck.upload"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: a job that never ends

    async def kill_mid_job() -> None:
        job = asyncio.ensure_future(pool.score(fifo, "words", 5.0))
        await asyncio.sleep(1.0)
        assert not job.done()
        os.kill(worker_pids(pool)[0], signal.SIGKILL)
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(job, 60)

    before = worker_pids(pool)
    asyncio.run(kill_mid_job())
    assert score_junk(pool, tmp_path).startswith("video: not a readable video file")
    assert worker_pids(pool) and worker_pids(pool) != before


def test_a_worker_dead_while_idle_costs_no_job(pool, tmp_path):
    before = worker_pids(pool)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not pool._executor._broken and time.monotonic() < deadline:  # the executor notices
        time.sleep(0.05)
    assert pool._executor._broken
    # The next job goes to a fresh pool rather than failing with the dead one.
    assert score_junk(pool, tmp_path).startswith("video: not a readable video file")
    assert worker_pids(pool) != before
