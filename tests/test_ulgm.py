"""ULGM: hand-computed equations, the official trajectory, incremental vs full centres, edge cases."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from selfmm.ulgm import (
    MODALITIES,
    UnimodalLabelGenerator,
    candidate_label,
    class_masks,
    full_centres,
    momentum_update,
    relative_distance,
)

REF = Path(__file__).parent / "data" / "ulgm_trajectory.npz"
REF_NAMES = {"m": "fusion", "t": "text", "a": "audio", "v": "vision"}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


def ref_batches(ref: dict[str, np.ndarray], epochs: range):
    """(epoch, indexes, features) in the order the official implementation visited them."""
    n, b = int(ref["n"]), int(ref["batch"])
    for e in epochs:
        for k in range(n // b):
            sl = slice(k * b, (k + 1) * b)
            feats = {s: torch.from_numpy(ref[f"feat_{REF_NAMES[s]}"][e - 1, sl]) for s in MODALITIES}
            yield e, torch.from_numpy(ref["perm"][e - 1, sl]), feats


def make_ref_generator(ref: dict[str, np.ndarray], centres: str) -> UnimodalLabelGenerator:
    dims = {s: ref[f"feat_{REF_NAMES[s]}"].shape[-1] for s in MODALITIES}
    n = int(ref["n"])
    g = UnimodalLabelGenerator(n, dims, H=float(ref["H"]), exclude_zero=bool(ref["exclude_zero"]),
                               centres=centres)
    g.init_labels(torch.arange(n), torch.from_numpy(ref["m_labels"]))
    return g


def label_matrix(g: UnimodalLabelGenerator) -> np.ndarray:
    return torch.stack([g.labels[s] for s in MODALITIES]).numpy()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


# ---- the equations by hand ------------------------------------------------------------------


def test_relative_distance_by_hand() -> None:
    pos, neg = torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    # Row 0: D_pos = 5, D_neg = 10 -> (10 - 5) / 5 = 1. Row 1 sits on C_pos: 5 / 1e-8 = 5e8.
    # Row 2 sits on C_neg: (0 - 5) / 5 = -1.
    alpha = relative_distance(feats, pos, neg)
    assert alpha.shape == (3,)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 5e8, -1.0]))


def test_candidate_label_by_hand() -> None:
    y_m = torch.tensor([1.0, -2.0, 2.0, 1.0])
    alpha_s = torch.tensor([1.0, -1.0, -3.0, 1.0])
    alpha_m = torch.tensor([0.5, 1.0, 1.0, 0.5])
    # 0: 0.5*(1/0.5)*1 + 0.5*(1 + 1 - 0.5) = 1 + 0.75 = 1.75
    # 1: 0.5*(-1/1)*(-2) + 0.5*(-2 - 1 - 1) = 1 - 2 = -1
    # 2: 0.5*(-3/1)*2 + 0.5*(2 - 3 - 1) = -3 - 1 = -4 -> clamped to -3
    # 3: same as 0 but with H = 1 below
    out = candidate_label(y_m, alpha_s, alpha_m, H=3.0)
    torch.testing.assert_close(out[:3], torch.tensor([1.75, -1.0, -3.0]))
    assert float(candidate_label(y_m[3:], alpha_s[3:], alpha_m[3:], H=1.0)) == 1.0


def test_momentum_is_epoch_weighted_average() -> None:
    y_hats = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4])
    y = torch.tensor(123.0)  # epoch 1 has weight 0 on the previous value, so this is forgotten
    for e, y_hat in enumerate(y_hats, start=1):
        y = momentum_update(y, y_hat, e)
        ks = torch.arange(1, e + 1, dtype=torch.float32)
        expected = (2 * ks / (e * (e + 1)) * y_hats[:e]).sum()
        torch.testing.assert_close(y, expected)
    # By hand at e = 2: 1/3 * 0.3 + 2/3 * (-1.2) = -0.7
    torch.testing.assert_close(momentum_update(torch.tensor(0.3), torch.tensor(-1.2), 2),
                               torch.tensor(-0.7))


def test_class_masks_exclude_zero() -> None:
    labels = torch.tensor([0.0, 1.0, -1.0])
    pos, neg = class_masks(labels, exclude_zero=True)
    assert pos.tolist() == [False, True, False] and neg.tolist() == [False, False, True]
    pos, neg = class_masks(labels, exclude_zero=False)
    assert pos.tolist() == [True, True, False] and neg.tolist() == [False, False, True]


@pytest.mark.parametrize("exclude_zero, expected_pos", [(True, [1.0, 2.0]), (False, [0.5, 1.0])])
def test_zero_label_membership_in_centres(exclude_zero: bool, expected_pos: list[float]) -> None:
    g = UnimodalLabelGenerator(3, {s: 2 for s in MODALITIES}, H=1.0, exclude_zero=exclude_zero)
    g.init_labels([0, 1, 2], [0.0, 1.0, -1.0])
    feats = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, -2.0]])
    g.step([0, 1, 2], {s: feats for s in MODALITIES}, epoch=1)
    # Positive: sample 1 alone, or the mean of samples 0 and 1 when a zero label counts.
    for s in MODALITIES:
        pos, neg = g.centres[s]
        torch.testing.assert_close(pos, torch.tensor(expected_pos))
        torch.testing.assert_close(neg, torch.tensor([-1.0, -2.0]))


# ---- the official trajectory ----------------------------------------------------------------


@pytest.mark.parametrize("centres, label_tol", [("full", 1e-5), ("incremental", 1e-3)])
def test_reference_trajectory(ref: dict[str, np.ndarray], centres: str, label_tol: float) -> None:
    # Measured: full 0.0 (bit-identical labels and centres); incremental labels 6.1e-5,
    # centres 1.2e-7 absolute.
    g = make_ref_generator(ref, centres)
    np.testing.assert_array_equal(label_matrix(g), ref["label_map"][0])
    for e in range(1, int(ref["epochs"]) + 1):
        for epoch, idx, feats in ref_batches(ref, range(e, e + 1)):
            g.step(idx, feats, epoch)
        diff = np.abs(label_matrix(g) - ref["label_map"][e]).max()
        assert diff <= label_tol, f"{centres}: labels after epoch {e} differ by {diff}"
        for s in MODALITIES:
            pos, neg = g.centres[s]
            for c, key in ((pos, "center_pos"), (neg, "center_neg")):
                cdiff = np.abs(c.numpy() - ref[f"{key}_{REF_NAMES[s]}"][e]).max()
                assert cdiff <= 1e-6, f"{centres}: {key} {s} after epoch {e} differs by {cdiff}"


def test_incremental_centres_match_full_every_step(ref: dict[str, np.ndarray]) -> None:
    # Measured: 2.4e-7 relative (max abs diff / max abs centre), both comparisons.
    inc, full = make_ref_generator(ref, "incremental"), make_ref_generator(ref, "full")
    worst_own = worst_side = 0.0
    for epoch, idx, feats in ref_batches(ref, range(1, int(ref["epochs"]) + 1)):
        inc.step(idx, feats, epoch)
        full.step(idx, feats, epoch)
        for s in MODALITIES:
            # Against a float32 recomputation from the incremental generator's own state ...
            recomputed = full_centres(inc.state_dict()[f"reps_{s}"], inc.labels[s], True)
            for c, r in zip(inc.centres[s], recomputed, strict=True):
                assert r is not None
                worst_own = max(worst_own, rel_diff(c, r))
            # ... and against the full-mode generator run side by side.
            for c, r in zip(inc.centres[s], full.centres[s], strict=True):
                worst_side = max(worst_side, rel_diff(c, r))
    assert worst_own <= 1e-6, worst_own
    assert worst_side <= 1e-6, worst_side


@pytest.mark.parametrize("centres", ["full", "incremental"])
def test_state_dict_resume_is_bit_exact(ref: dict[str, np.ndarray], centres: str) -> None:
    batches = list(ref_batches(ref, range(1, int(ref["epochs"]) + 1)))
    half = len(batches) // 2 + 3  # mid-epoch, after label updates have started
    straight = make_ref_generator(ref, centres)
    for epoch, idx, feats in batches[:half]:
        straight.step(idx, feats, epoch)
    buf = io.BytesIO()
    torch.save(straight.state_dict(), buf)
    buf.seek(0)
    resumed = UnimodalLabelGenerator(straight.num_samples, straight.dims, H=straight.H, centres=centres)
    resumed.load_state_dict(torch.load(buf))
    # Both go on side by side and must agree to the bit after every batch.
    for epoch, idx, feats in batches[half:]:
        straight.step(idx, feats, epoch)
        resumed.step(idx, feats, epoch)
        for key, value in straight.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[key]), (key, epoch)


# ---- edge cases -----------------------------------------------------------------------------


def tiny(centres: str = "incremental") -> UnimodalLabelGenerator:
    """Samples 0, 1 positive at (1, 0); sample 2 slightly negative at (-1, 0); all stored."""
    g = UnimodalLabelGenerator(3, {s: 2 for s in MODALITIES}, H=1.0, centres=centres)
    g.init_labels([0, 1, 2], [1.0, 1.0, -0.1])
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    g.step([0, 1, 2], {s: feats for s in MODALITIES}, epoch=1)
    return g


@pytest.mark.parametrize("centres", ["full", "incremental"])
def test_batch_of_one_sample(centres: str) -> None:
    g = tiny(centres)
    before = {s: tuple(c.clone() for c in g.centres[s]) for s in MODALITIES}
    f_m, f_t = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]])
    g.step(torch.tensor([0]), {"m": f_m, "t": f_t, "a": f_t, "v": f_t}, epoch=2)
    alpha_m = relative_distance(f_m, *before["m"])
    alpha_t = relative_distance(f_t, *before["t"])
    y_hat = candidate_label(torch.tensor([1.0]), alpha_t, alpha_m, H=1.0)
    expected = momentum_update(torch.tensor([1.0]), y_hat, 2)
    for s in ("t", "a", "v"):
        torch.testing.assert_close(g.labels[s][:1], expected)
    assert g.weights([0])["t"].shape == (1,)
    torch.testing.assert_close(g.weights(torch.tensor([0]))["t"], torch.tanh((expected - 1.0).abs()))


@pytest.mark.parametrize("centres", ["full", "incremental"])
def test_class_never_present_skips_updates(centres: str) -> None:
    g = UnimodalLabelGenerator(4, {s: 3 for s in MODALITIES}, H=3.0, centres=centres)
    m = torch.tensor([0.5, 1.0, 2.0, 3.0])  # no negative sample: no negative centre, ever
    g.init_labels(torch.arange(4), m)
    gen = torch.Generator().manual_seed(0)
    for epoch in (1, 2, 3):
        feats = {s: torch.randn(4, 3, generator=gen) for s in MODALITIES}
        g.step(torch.arange(4), feats, epoch)
    for s in MODALITIES:
        assert torch.equal(g.labels[s], m), s
        assert torch.isfinite(g.centres[s][0]).all() and torch.equal(g.centres[s][1], torch.zeros(3))


@pytest.mark.parametrize("centres", ["full", "incremental"])
def test_emptied_class_keeps_previous_centre(centres: str) -> None:
    g = tiny(centres)
    # Sample 2's fused vector sits on the negative centre (alpha_m = -1) and its unimodal vectors
    # on the positive one (alpha_s = 2e8): the candidate clamps to H = 1, and the momentum gives
    # 1/3 * (-0.1) + 2/3 * 1 > 0, so the unimodal negative classes lose their only member.
    g.step([2], {"m": torch.tensor([[-1.0, 0.0]]), "t": torch.tensor([[1.0, 0.0]]),
                 "a": torch.tensor([[1.0, 0.0]]), "v": torch.tensor([[1.0, 0.0]])}, epoch=2)
    for s in ("t", "a", "v"):
        torch.testing.assert_close(g.labels[s][2], torch.tensor(1 / 3 * -0.1 + 2 / 3))
        assert g.state_dict()[f"counts_{s}"].tolist() == [3, 0]
        torch.testing.assert_close(g.centres[s][1], torch.tensor([-1.0, 0.0]))
    # Updates go on against the kept centre and stay finite.
    g.step([0], {s: torch.tensor([[0.2, 0.3]]) for s in MODALITIES}, epoch=2)
    for s in MODALITIES:
        assert torch.isfinite(g.labels[s]).all()


def test_non_finite_features_raise_before_any_change() -> None:
    g = tiny()
    before = snapshot(g)
    feats = {s: torch.zeros(1, 2) for s in MODALITIES}
    feats["a"] = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(ValueError, match="'a'"):
        g.step([0], feats, epoch=2)
    assert_state_equal(g, before)


def test_wrong_feature_shape_raises() -> None:
    g = tiny()
    feats = {s: torch.zeros(2, 2) for s in MODALITIES}
    feats["v"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'v'"):
        g.step([0, 1], feats, epoch=1)


# ---- the generator as a module --------------------------------------------------------------

KINDS = ("labels", "reps", "sums", "counts", "centres", "existed")
DTYPES = {"labels": torch.float32, "reps": torch.float32, "sums": torch.float64,
          "counts": torch.int64, "centres": torch.float32, "existed": torch.bool}


def snapshot(g: UnimodalLabelGenerator) -> dict[str, torch.Tensor]:
    # Module.state_dict shares storage with the buffers, so a "before" picture must be cloned.
    return {k: v.clone() for k, v in g.state_dict().items()}


def assert_state_equal(g: UnimodalLabelGenerator, before: dict[str, torch.Tensor]) -> None:
    after = g.state_dict()
    assert list(after) == list(before)
    for key, value in after.items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key


def test_state_is_buffers_only() -> None:
    g = tiny()
    assert list(g.parameters()) == []
    sd = g.state_dict()
    assert list(sd) == [f"{kind}_{s}" for s in MODALITIES for kind in KINDS]
    assert [name for name, _ in g.named_buffers()] == list(sd)  # every buffer is persistent
    for key, value in sd.items():
        assert value.dtype == DTYPES[key.split("_")[0]], key
    assert sd["labels_t"].shape == (3,) and sd["reps_a"].shape == (3, 2) and sd["sums_v"].shape == (2, 2)
    # The public views are the buffers themselves, not copies that could fall behind.
    assert g.labels["t"].data_ptr() == sd["labels_t"].data_ptr()
    assert g.centres["m"][1].data_ptr() == sd["centres_m"][1].data_ptr()


def test_to_device_moves_buffers_and_keeps_dtypes() -> None:
    g = tiny()
    before = snapshot(g)
    assert g.to("cpu") is g and g.to(torch.device("cpu")) is g
    assert g.device == torch.device("cpu")
    assert_state_equal(g, before)
    # "meta" is a real move on any machine: the device follows the buffers, the dtypes stay.
    g.to("meta")
    assert g.device == torch.device("meta")
    for key, value in g.state_dict().items():
        assert value.device == torch.device("meta") and value.dtype == before[key].dtype, key


@pytest.mark.parametrize("cast", [
    lambda g: g.to(torch.float32),
    lambda g: g.to("cpu", torch.float64),
    lambda g: g.double(),
    lambda g: g.half(),
    lambda g: g.float(),
], ids=["to(float32)", "to(cpu, float64)", "double", "half", "float"])
def test_dtype_casts_are_refused_before_anything_changes(
        cast: Callable[[UnimodalLabelGenerator], object]) -> None:
    g = tiny()
    before = snapshot(g)
    with pytest.raises(TypeError, match=r"keeps (labels|sums)_m in torch\.float(32|64)"):
        cast(g)
    assert_state_equal(g, before)


def broken_states() -> dict[str, tuple[dict[str, object], str]]:
    """(state dict, expected message) for a generator of 3 samples and widths 2."""
    good = tiny().state_dict()
    old_names = {k.replace("labels_m", "labels"): v for k, v in good.items()}
    return {
        "shape": (dict(UnimodalLabelGenerator(4, {s: 2 for s in MODALITIES}, H=1.0).state_dict()),
                  r"labels_m: expected torch\.float32 \(3,\), got torch\.float32 \(4,\)"),
        "dtype": ({**good, "sums_t": good["sums_t"].float()},
                  r"sums_t: expected torch\.float64 \(2, 2\), got torch\.float32 \(2, 2\)"),
        "keys": (old_names, r"missing \['labels_m'\], unexpected \['labels'\]"),
        "not a tensor": ({**good, "counts_a": [3, 0]}, r"counts_a: expected a tensor, got list"),
    }


@pytest.mark.parametrize("case", ["shape", "dtype", "keys", "not a tensor"])
def test_load_state_dict_refuses_bad_states(case: str) -> None:
    sd, message = broken_states()[case]
    g = UnimodalLabelGenerator(3, {s: 2 for s in MODALITIES}, H=1.0)
    before = snapshot(g)
    with pytest.raises(ValueError, match=message):
        g.load_state_dict(sd)  # type: ignore[arg-type]
    assert_state_equal(g, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip() -> None:
    g, on_cpu = tiny(), tiny()
    g.to("cuda")
    assert g.device.type == "cuda" and all(v.is_cuda for v in g.state_dict().values())
    assert g.state_dict()["sums_m"].dtype == torch.float64
    feats = {s: torch.tensor([[0.2, 0.3]]) for s in MODALITIES}  # CPU features are moved in
    g.step([0], feats, epoch=2)
    on_cpu.step([0], feats, epoch=2)
    resumed = UnimodalLabelGenerator(3, {s: 2 for s in MODALITIES}, H=1.0)
    resumed.load_state_dict(g.state_dict())  # CUDA state into a CPU generator stays on the CPU
    assert resumed.device == torch.device("cpu")
    g.to("cpu")
    for key, value in on_cpu.state_dict().items():
        torch.testing.assert_close(g.state_dict()[key], value, rtol=1e-6, atol=1e-7)
        assert torch.equal(resumed.state_dict()[key], g.state_dict()[key]), key


def test_a_state_saved_before_the_buffers_loads() -> None:
    """Checkpoints written before the ULGM kept its state in buffers (ef286d0) hold one (4, N)
    "labels" tensor and "kind.s" keys; they used to fail with "ULGM state keys differ"."""
    g = tiny()
    g.step([0, 2], {s: torch.tensor([[0.5, 0.5], [-1.0, 1.0]]) for s in MODALITIES}, epoch=2)
    before = snapshot(g)
    old = {"labels": torch.stack([before[f"labels_{s}"] for s in MODALITIES])}
    old.update({f"{kind}.{s}": before[f"{kind}_{s}"] for s in MODALITIES for kind in KINDS if kind != "labels"})
    fresh = UnimodalLabelGenerator(3, {s: 2 for s in MODALITIES}, H=1.0)
    fresh.load_state_dict(old)
    assert_state_equal(fresh, before)
    with pytest.raises(ValueError, match="keys differ"):  # a damaged old state is still refused
        fresh.load_state_dict({k: v for k, v in old.items() if k != "sums.t"})
