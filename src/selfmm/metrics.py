"""Test metrics of the regression output (SPEC section 6), as MMSA reports them.

Conventions worth knowing:
- Class thresholds are compared in the inputs' own floating dtype (float32 for model outputs),
  as MMSA's numpy comparisons do: SIMS labels such as 0.1 or 0.7 sit exactly on class edges,
  and float32(0.1) > float64(0.1) would move them to the wrong class.
- Rounding for Mult_acc_5/7 is numpy's round-half-to-even, as in MMSA (2.5 -> 2, -0.5 -> -0).
- `Corr` is Pearson's r, reported as 0.0 when either side is constant (where r is undefined),
  so that a collapsed model scores "no correlation" rather than breaking tables and averages.
- `Non0_*` are NaN when no label is non-zero: there is nothing to score.
- MAE and Corr are computed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from .checks import Wrong, checked
from .datasets import MOS_METRICS, SIMS_METRICS, Column, dataset_name

METRIC_NAMES = Column(lambda dataset: dataset.metrics)  # dataset -> its metrics, in table order

# Interior edges of SIMS's right-closed classes; the outer edges -1.01 and 1.01 hold every
# clipped value, so (-1.01, e1], (e1, e2], ..., (ek, 1.01] is what np.digitize(right=True) gives.
_SIMS_EDGES: dict[int, tuple[float, ...]] = {
    2: (0.0,),
    3: (-0.1, 0.1),
    5: (-0.7, -0.1, 0.1, 0.7),
}


def _numbers(value: Any) -> Any:
    """A rule: an array-like of numbers (a list, a numpy array, a tensor)."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise Wrong("an array of numbers (a list, a numpy array or a tensor)", kind=True)
    try:
        _as_array(value).astype(np.float64)
    except (TypeError, ValueError):
        raise Wrong("an array of numbers (a list, a numpy array or a tensor)", kind=True) from None
    return value


@checked(y_pred=_numbers, y_true=_numbers, dataset=dataset_name)
def regression_metrics(y_pred: Any, y_true: Any, dataset: str) -> dict[str, float]:
    """All SPEC 6 metrics of one split, keys in METRIC_NAMES[dataset] order, as fractions."""
    if dataset not in METRIC_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(METRIC_NAMES)}")
    p, y = _as_array(y_pred), _as_array(y_true)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions but {y.size} labels")
    if p.size == 0:
        raise ValueError("no samples to score")
    dtype = np.result_type(p.dtype, y.dtype, np.float32)
    p, y = p.astype(dtype, copy=False), y.astype(dtype, copy=False)
    return _FAMILIES[METRIC_NAMES[dataset]](p, y)


def _mos_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    non0 = y != 0
    if non0.any():
        non0_acc, non0_f1 = _binary(p[non0] > 0, y[non0] > 0)
    else:
        non0_acc = non0_f1 = float("nan")
    has0_acc, has0_f1 = _binary(p >= 0, y >= 0)
    return {
        "Has0_acc_2": has0_acc,
        "Has0_F1_score": has0_f1,
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _rounded_acc(p, y, 2.0),
        "Mult_acc_7": _rounded_acc(p, y, 3.0),
        "MAE": _mae(p, y),
        "Corr": _corr(p, y),
    }


def _sims_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)
    cls = {k: (_sims_classes(p, k), _sims_classes(y, k)) for k in _SIMS_EDGES}
    return {
        "Mult_acc_2": float(np.mean(cls[2][0] == cls[2][1])),
        "Mult_acc_3": float(np.mean(cls[3][0] == cls[3][1])),
        "Mult_acc_5": float(np.mean(cls[5][0] == cls[5][1])),
        "F1_score": float(f1_score(cls[2][1], cls[2][0], average="weighted", zero_division=0)),
        "MAE": _mae(p, y),
        "Corr": _corr(p, y),
    }


_FAMILIES = {MOS_METRICS: _mos_metrics, SIMS_METRICS: _sims_metrics}


def pearson(a: Any, b: Any) -> float:
    """Pearson's r in float64; NaN when either side is constant, where r is undefined.

    "Constant" allows for rounding: a spread below 1e-9 (labels and scores are of order 1)
    is zero that arithmetic left behind, e.g. the residual of an exact linear fit.
    """
    a = np.asarray(a, dtype=np.float64) - np.mean(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64) - np.mean(b, dtype=np.float64)
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.clip(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)), -1.0, 1.0))


def _corr(p: np.ndarray, y: np.ndarray) -> float:
    r = pearson(p, y)
    return 0.0 if np.isnan(r) else r


def _as_array(x: Any) -> np.ndarray:
    # Duck-typed so the module needs no torch: tensors (on any device, with grad) become numpy.
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr.reshape(-1)


def _binary(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    acc = float(np.mean(pred == true))
    return acc, float(f1_score(true, pred, average="weighted", zero_division=0))


def _rounded_acc(p: np.ndarray, y: np.ndarray, bound: float) -> float:
    rp = np.round(np.clip(p, -bound, bound))
    ry = np.round(np.clip(y, -bound, bound))
    return float(np.mean(rp == ry))


def _mae(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(p.astype(np.float64) - y.astype(np.float64))))


def _sims_classes(x: np.ndarray, k: int) -> np.ndarray:
    edges = np.asarray(_SIMS_EDGES[k], dtype=x.dtype)
    return np.digitize(x, edges, right=True)
