"""Data-parallel training (gloo, 2 CPU processes) keeps the ULGM identical on every rank and
equal to one process with twice the batch on the same data order, down to a last global batch
smaller than the number of ranks; a train split smaller than the ranks trains; every rank
stops at the epoch rank 0's validation decides."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfmm.data.unpickle import safe_load
from selfmm.distributed import ShardedBatchSampler

WORKER = Path(__file__).with_name("dist_worker.py")


def test_sharded_batches_partition_the_single_process_order():
    single = list(ShardedBatchSampler(37, 8, torch.Generator().manual_seed(3)))
    shards = [list(ShardedBatchSampler(37, 4, torch.Generator().manual_seed(3), r, 2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 5
    for whole, a, b in zip(single, *shards, strict=True):
        assert a + b == whole
    # Same order as a RandomSampler drawing from the same generator.
    flat = [i for batch in single for i in batch]
    assert flat == torch.randperm(37, generator=torch.Generator().manual_seed(3)).tolist()


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_global_batch_is_one_process_batch_and_every_rank_steps(ranks):
    """For every N, the rows the ranks hold (not their stand-ins) make up exactly the batches
    of one process with K times the batch, the short last one included (it used to be merged
    into the one before when it had fewer rows than ranks); every rank runs the same number of
    steps, none of them empty, and a stand-in carries no weight."""
    for n in range(1, 40):
        single = list(ShardedBatchSampler(n, 4 * ranks, torch.Generator().manual_seed(0)))
        samplers = [ShardedBatchSampler(n, 4, torch.Generator().manual_seed(0), r, ranks) for r in range(ranks)]
        pieces = [list(s) for s in samplers]
        assert all(len(p) == len(single) == len(s) for p, s in zip(pieces, samplers, strict=True)), n
        for i, whole in enumerate(single):
            steps = [s.step(i) for s in samplers]
            assert steps[0].rows.tolist() == whole and sum(steps[0].sizes) == len(whole)
            held = [rows[:step.sizes[step.rank]] for rows, step in zip((p[i] for p in pieces), steps, strict=True)]
            assert sum(held, []) == whole, n
            for rows, step in zip((p[i] for p in pieces), steps, strict=True):
                assert rows, n
                assert step.share == pytest.approx(step.sizes[step.rank] * ranks / len(whole))
                if step.sizes[step.rank] == 0:
                    assert step.share == 0 and rows == whole[:1]


def run(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def first_rows(source: Path, out: Path, n: int) -> Path:
    """`source` with only the first `n` clips of its train split."""
    raw = safe_load(source)
    raw["train"] = {k: v[:n] if isinstance(v, (list, np.ndarray)) and len(v) > n else v
                    for k, v in raw["train"].items()}
    out.write_bytes(pickle.dumps(raw, protocol=4))
    return out


def torchrun(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            *args]


@pytest.mark.parametrize("dtype, epochs, clips, port", [
    ("float64", 3, 39, 29533),  # 39 = 4 x 8 + 7: the last global batch splits 4/3
    ("float32", 2, 39, 29535),
    ("float64", 3, 33, 29536),  # 33 = 4 x 8 + 1: one clip in the last batch, rank 1 stands in
])
def test_two_ranks_match_one_process_with_twice_the_batch(tmp_path, synth_path, tiny_bert, dtype, epochs, clips,
                                                          port):
    """In float64 the u-labels come out identical. In float32 the only gap is the order of
    gradient sums (8 clips in one kernel against 4 + 4 averaged across ranks), which the label
    rule's division by alpha_m amplifies: measured up to 1.6e-5 after two epochs, on a label
    of 0.0055. The float32 bound is set above that; the float64 runs are the exact check.
    Before the last short batch was kept, N = 33 differed by up to 4.0 in float32."""
    data = first_rows(synth_path("mosi", scale=0.03), tmp_path / "data.pkl", clips)
    common = [str(data), str(tiny_bert), str(tmp_path)]
    run(torchrun(port, str(WORKER), "labels", *common, "4", str(epochs), dtype), tmp_path)
    run([sys.executable, str(WORKER), "labels", *common, "8", str(epochs), dtype], tmp_path)
    rank0, rank1, single = (torch.load(tmp_path / f"labels-{dtype}-{n}.pt") for n in ("2-0", "2-1", "1-0"))
    assert rank0["m"].shape == (clips,)
    for s in "tav":
        assert torch.equal(rank0[s], rank1[s]), s
        assert not torch.equal(rank0[s], rank0["m"]), "u-labels should have moved"
        if dtype == "float64":
            assert torch.equal(rank0[s], single[s]), s
        torch.testing.assert_close(rank0[s], single[s], atol=1e-5 if dtype == "float64" else 1e-4, rtol=0)


def test_gradients_are_all_reduced_once_per_optimizer_step(tmp_path, synth_path, tiny_bert):
    """Accumulation over 4 batches: the first three backward passes of a window keep their
    gradients on each rank (DDP's no_sync), the fourth all-reduces them; the last, partial
    window once as well. No buffer is broadcast before a forward. 39 clips, 2 ranks of 4: 5
    batches, steps after batches 4 and 5. Before: 5 all-reduces (one per batch) and 5 broadcasts."""
    data = first_rows(synth_path("mosi", scale=0.03), tmp_path / "data.pkl", 39)
    run(torchrun(29539, str(WORKER), "syncs", str(data), str(tiny_bert), str(tmp_path)), tmp_path)
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"syncs-{rank}.json").read_text())
        assert counts == {"allreduce_rounds": 2, "broadcasts": 0, "optimizer_steps": 2, "batches": 5}, rank


def test_torchrun_train_command(tmp_path, synth_path, tiny_bert):
    """The whole `selfmm train` under torchrun: rank 0 writes the run, and it evaluates."""
    run(torchrun(29534, "-m", "selfmm", "train", "--dataset", "mosi", "--data", str(synth_path("mosi", scale=0.03)),
                 "--out", "run", "--text-model", str(tiny_bert), "--seeds", "1", "--max-epochs", "2",
                 "--set", "batch_size=4", "--device", "cpu"), tmp_path)
    assert (tmp_path / "run" / "results.json").exists()
    assert (tmp_path / "run" / "seed-1" / "metrics.json").exists()


def test_a_train_split_smaller_than_the_ranks_trains(tmp_path, synth_path, tiny_bert):
    """One training clip, two processes: rank 1 stands in every step (it used to see an empty
    batch, report a non-finite loss, and leave rank 0 to die inside gloo)."""
    data = first_rows(synth_path("mosi", scale=0.03), tmp_path / "one.pkl", 1)
    run(torchrun(29537, "-m", "selfmm", "train", "--dataset", "mosi", "--data", str(data), "--out", "run",
                 "--text-model", str(tiny_bert), "--seeds", "1", "--max-epochs", "2", "--device", "cpu"),
        tmp_path, timeout=200)
    history = json.loads((tmp_path / "run" / "seed-1" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in history)


def test_every_rank_stops_where_rank_0_decides(tmp_path, synth_path, tiny_bert):
    """Rank 1's own validation loss would improve every epoch; rank 0's is flat, so with
    early_stop=1 it stops after epoch 2. The loss is rank 0's everywhere, so both stop there
    (a rank that went on would wait in DDP's all-reduce until the timeout)."""
    run(torchrun(29538, str(WORKER), "stop", str(synth_path("mosi", scale=0.03)), str(tiny_bert), str(tmp_path)),
        tmp_path, timeout=200)
    ranks = [json.loads((tmp_path / f"stop-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == [[1, 1.0], [2, 1.0]]
    # Each rank draws its own dropout masks.
    assert ranks[0]["seed"] == 3 and ranks[1]["seed"] != 3
