"""Metrics on small arrays whose expected values are worked out by hand in the comments."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from selfmm.metrics import METRIC_NAMES, pearson, regression_metrics

# MOSI/MOSEI case. Two zero labels (indexes 2, 3), values beyond +-3 and +-2, and .5 ties.
MOS_Y = [-2.6, -0.4, 0.0, 0.0, 1.5, 3.4]
MOS_P = [-3.7, 0.3, 0.0, 0.1, 2.5, 2.4]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mosi_by_hand(dtype: type) -> None:
    m = regression_metrics(np.array(MOS_P, dtype), np.array(MOS_Y, dtype), "mosi")
    assert tuple(m) == METRIC_NAMES["mosi"]
    expected = {
        # Has0: p >= 0 -> F T T T T T; y >= 0 -> F F T T T T; 5 of 6 agree.
        "Has0_acc_2": 5 / 6,
        # Class F: support 2, predicted once, right once: P 1, R 1/2, F1 2/3.
        # Class T: support 4, predicted 5 times, right 4: P 4/5, R 1, F1 8/9.
        # Weighted by support: (2 * 2/3 + 4 * 8/9) / 6 = 22/27.
        "Has0_F1_score": 22 / 27,
        # Non0 keeps indexes 0, 1, 4, 5: p > 0 -> F T T T; y > 0 -> F F T T; 3 of 4.
        "Non0_acc_2": 3 / 4,
        # Class F: support 2, P 1, R 1/2, F1 2/3; class T: support 2, P 2/3, R 1, F1 4/5.
        # (2/3 + 4/5) / 2 = 11/15.
        "Non0_F1_score": 11 / 15,
        # Clip to [-2, 2] then round: p -> -2 0 0 0 2 2, y -> -2 -0 0 0 2 2: all agree.
        # (Unclipped, index 0 would round to -4 vs -3 and index 5 to 2 vs 3.)
        "Mult_acc_5": 1.0,
        # Clip to [-3, 3] then round half to even: p -> -3 0 0 0 2 2 (2.5 -> 2),
        # y -> -3 -0 0 0 2 3 (1.5 -> 2, 3.4 -> 3): only index 5 differs, 5 of 6.
        # Half away from zero would give 2.5 -> 3 and 4 of 6.
        "Mult_acc_7": 5 / 6,
        # |p - y| = 1.1 0.7 0 0.1 1.0 1.0, sum 3.9, over 6.
        "MAE": 0.65,
        # Centred sums: Sxy = 21.41 - 6 * (1.6/6) * (1.9/6) = 20.90333, Sxx = 25.37333,
        # Syy = 20.12833; r = Sxy / sqrt(Sxx * Syy).
        "Corr": 20.903333333 / np.sqrt(25.373333333 * 20.128333333),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key


def test_non0_is_nan_without_non_zero_labels() -> None:
    m = regression_metrics([0.5, -0.5], [0.0, 0.0], "mosi")
    assert np.isnan(m["Non0_acc_2"]) and np.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == 0.5  # y = 0 counts as positive for Has0: p >= 0 right once


# SIMS case: labels on every class edge (-0.7, -0.1, 0, 0.1, 0.7) and predictions beyond +-1.
SIMS_Y = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0, 0.4]
SIMS_P = [-1.5, -0.6, -0.05, 0.05, 0.1, 0.8, 1.3, 0.3]


@pytest.mark.parametrize("dataset", ["sims", "simsv2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sims_by_hand(dataset: str, dtype: type) -> None:
    m = regression_metrics(np.array(SIMS_P, dtype), np.array(SIMS_Y, dtype), dataset)
    assert tuple(m) == METRIC_NAMES[dataset]
    # After clipping, p = -1 -0.6 -0.05 0.05 0.1 0.8 1 0.3. Right-closed classes:
    expected = {
        # 2 classes, (-1.01, 0] / (0, 1.01]: y -> 0 0 0 0 1 1 1 1 (0 is negative),
        # p -> 0 0 0 1 1 1 1 1: index 3 differs, 7 of 8.
        "Mult_acc_2": 7 / 8,
        # 3 classes, edges -0.1, 0.1: y -> 0 0 0 1 1 2 2 2 (-0.1 is negative, 0.1 neutral),
        # p -> 0 0 1 1 1 2 2 2: index 2 differs, 7 of 8.
        "Mult_acc_3": 7 / 8,
        # 5 classes, edges -0.7 -0.1 0.1 0.7: y -> 0 0 1 2 2 3 4 3, p -> 0 1 2 2 2 4 4 3:
        # indexes 1, 2, 5 differ, 5 of 8.
        "Mult_acc_5": 5 / 8,
        # Class 0: support 4, predicted 3, right 3: P 1, R 3/4, F1 6/7.
        # Class 1: support 4, predicted 5, right 4: P 4/5, R 1, F1 8/9. (6/7 + 8/9) / 2 = 55/63.
        "F1_score": 55 / 63,
        # On clipped values: |p - y| = 0 0.1 0.05 0.05 0 0.1 0 0.1, sum 0.4, over 8.
        # (Unclipped it would be 0.1 more.)
        "MAE": 0.05,
        # Centred sums of the clipped values: Sxy = 3.085, Sxx = 3.06, Syy = 3.14.
        "Corr": 3.085 / np.sqrt(3.06 * 3.14),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key


def test_sims_edges_single_values() -> None:
    # Predicting the label itself must score 1 at every class edge, in float32 too, where
    # float32(0.1) > float64(0.1) would otherwise push 0.1 out of "neutral".
    edges = np.array([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0], np.float32)
    m = regression_metrics(edges, edges, "sims")
    assert m["Mult_acc_2"] == m["Mult_acc_3"] == m["Mult_acc_5"] == 1.0
    # -0.1 is negative and 0.1 neutral in 3 classes: p = -0.1 for y = -0.11 is right,
    # p = 0.1 for y = 0.11 is wrong (neutral vs positive).
    m = regression_metrics(np.float32([-0.1, 0.1]), np.float32([-0.11, 0.11]), "sims")
    assert m["Mult_acc_3"] == 0.5


def test_corr_by_hand_and_constant() -> None:
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    # Centred: (-1, 0, 1) and (-1, 1, 0): dot 1, norms sqrt(2) each -> 1/2.
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or sklearn warning either
        m = regression_metrics([0.5, 0.5, 0.5], [-1.0, 0.0, 2.0], "mosi")
        assert m["Corr"] == 0.0
        assert regression_metrics([0.2, 0.2], [0.3, -0.4], "sims")["Corr"] == 0.0
        # r itself is undefined there; the metric reports it as no correlation.
        assert np.isnan(pearson([0.5, 0.5, 0.5], [-1.0, 0.0, 2.0]))


def test_accepts_torch_tensors_with_grad() -> None:
    p = torch.tensor(MOS_P, requires_grad=True)
    assert regression_metrics(p, torch.tensor(MOS_Y), "mosi")["MAE"] == pytest.approx(0.65)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="dataset"):
        regression_metrics([0.0], [0.0], "iemocap")
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        regression_metrics([0.0, 1.0], [0.0, 1.0, 2.0], "mosi")
    with pytest.raises(ValueError, match="no samples"):
        regression_metrics([], [], "sims")


