"""Every dataset selfmm knows, one entry each: everything the package reads about a dataset.

An entry holds its label range (the loader's check, the neutral band of predictions, the
reproduction's label check), its metrics (SPEC 6), the text model it is published with, its
published configuration (SPEC 3, as overrides of the dataclass defaults, which are MOSI's), the
shapes of a synthetic stand-in (SPEC 2's sizes and widths) and the published Self-MM numbers
(SPEC 7). configuration, metrics, data.synth, reproduction, predict and the command line read
these entries; nothing else spells a dataset's facts. A new dataset is one
`register(Dataset(...))`, made before the configuration, the data or the command line ask for it.

Light on purpose (no numpy, no torch): the command line's choices come from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .checks import Wrong
from .errors import ConfigError

# SPEC 6: the CMU-MOSI family's metrics (binary with and without zero labels, rounded 5 and 7
# classes) and CH-SIMS's (2, 3 and 5 classes on [-1, 1]). selfmm.metrics computes each family.
MOS_METRICS = ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
               "Mult_acc_5", "Mult_acc_7", "MAE", "Corr")
SIMS_METRICS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
METRIC_FAMILIES = (MOS_METRICS, SIMS_METRICS)
# Where published numbers come from: key -> (column header, name in sentences).
SOURCES = {"paper": ("paper", "the paper"), "mmsa": ("MMSA", "MMSA")}


@dataclass(frozen=True)
class SyntheticProfile:
    """The real file's sizes and shapes, and how its labels are annotated, for selfmm.data.synth."""

    sizes: tuple[int, int, int]  # train, valid, test clips at scale 1
    text_len: int  # Lt
    audio_len: int  # La, unaligned
    vision_len: int  # Lv, unaligned
    audio_dim: int
    vision_dim: int
    annotators: int  # the m-label is the mean of this many integer scores
    score_max: int  # each annotator scores an integer in [-score_max, score_max]


@dataclass(frozen=True)
class Published:
    """One source's test-split numbers for one dataset, under our metric names, as fractions.
    A metric the source does not report is absent."""

    citation: str
    values: Mapping[str, float]


@dataclass(frozen=True)
class Dataset:
    name: str  # what --dataset and selfmm.config(dataset) take
    title: str  # as tables and reports write it
    label_range: tuple[float, float]  # labels lie in [low, high]
    metrics: tuple[str, ...]  # MOS_METRICS or SIMS_METRICS, in the order tables print them
    text_model: str  # the published text encoder
    defaults: Mapping[str, Any] = field(default_factory=dict)  # SPEC 3: config keys -> values
    synthetic: SyntheticProfile | None = None  # None: `selfmm synth` has no profile for it
    published: Mapping[str, Published] = field(default_factory=dict)  # "paper", "mmsa" -> numbers


_REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset, *, replace: bool = False) -> Dataset:
    """Make `dataset` known to the whole package; `replace` to redefine one already known."""
    name = dataset.name
    if not (name and name.isidentifier() and name == name.lower()):
        raise ConfigError(f"dataset name {name!r}: must be a lower-case identifier (the command line "
                          "takes it as a value)")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"dataset {name!r} is registered already; pass replace=True to redefine it")
    low, high = dataset.label_range
    if not low < high:
        raise ConfigError(f"dataset {name!r}: label_range {dataset.label_range} must run from low to high")
    if dataset.metrics not in METRIC_FAMILIES:
        raise ConfigError(f"dataset {name!r}: metrics must be MOS_METRICS or SIMS_METRICS (SPEC 6)")
    for source, numbers in dataset.published.items():
        if source not in SOURCES:
            raise ConfigError(f"dataset {name!r}: published source {source!r} is not one of {', '.join(SOURCES)}")
        unknown = sorted(set(numbers.values) - set(dataset.metrics))
        if unknown:
            raise ConfigError(f"dataset {name!r}: published[{source!r}] has metrics it does not compute: "
                              f"{', '.join(unknown)}")
    _REGISTRY[name] = dataset
    return dataset


def names() -> tuple[str, ...]:
    """The known datasets, in the order they were registered."""
    return tuple(_REGISTRY)


def dataset_name(value: Any) -> str:
    """A rule of selfmm.checks: the name of a known dataset (as the registry holds now)."""
    if not isinstance(value, str):
        raise Wrong(f"a dataset name, one of {', '.join(_REGISTRY)}", kind=True)
    if value not in _REGISTRY:
        raise Wrong(f"one of {', '.join(map(repr, _REGISTRY))}")
    return value


def get(name: str) -> Dataset:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(_REGISTRY)}") from None


T = TypeVar("T")


class Column(Mapping[str, T], Generic[T]):
    """One fact of every known dataset, as a read-only mapping name -> value that follows the
    registry (datasets without the fact, e.g. without a synthetic profile, are left out)."""

    def __init__(self, read: Callable[[Dataset], T | None]) -> None:
        self._read = read

    def __getitem__(self, name: str) -> T:
        value = self._read(_REGISTRY[name]) if name in _REGISTRY else None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name, dataset in _REGISTRY.items() if self._read(dataset) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


# --- the datasets of the paper and of MMSA ----------------------------------------------------

_PAPER = ("Yu, Xu, Yuan, Wu. Learning Modality-Specific Representations with Self-Supervised Multi-Task "
          "Learning for Multimodal Sentiment Analysis. AAAI 2021 (arXiv:2102.04830)")
_MMSA = ("MMSA framework, github.com/thuiar/MMSA, results/result-stat.md (last changed in commit 698bae0, "
         "2023-12-27)")

# The paper writes Acc-2 and F1 as "a / b": a is Has0 (negative vs non-negative), b is Non0
# (negative vs positive, zero labels left out). Its SIMS "Acc-2" is our Mult_acc_2. The
# configurations are MMSA's published self_mm settings (SPEC 3); the synthetic profiles, the
# real files' sizes and shapes (SPEC 2).
register(Dataset(
    "mosi", "MOSI", (-3.0, 3.0), MOS_METRICS, "bert-base-uncased",
    defaults={},
    synthetic=SyntheticProfile((1284, 229, 686), 50, 500, 375, 5, 20, annotators=3, score_max=3),
    published={
        "paper": Published(f"{_PAPER}, Table 2 (MOSI), row Self-MM, mean of 5 seeds", {
            "Has0_acc_2": 0.8400, "Has0_F1_score": 0.8442, "Non0_acc_2": 0.8598, "Non0_F1_score": 0.8595,
            "MAE": 0.713, "Corr": 0.798}),
        "mmsa": Published(f"{_MMSA}, Regression, MOSI, row self_mm (unaligned)", {
            "Has0_acc_2": 0.8344, "Has0_F1_score": 0.8336, "Non0_acc_2": 0.8546, "Non0_F1_score": 0.8543,
            "Mult_acc_5": 0.5347, "Mult_acc_7": 0.4667, "MAE": 0.7080, "Corr": 0.7963}),
    }))
register(Dataset(
    "mosei", "MOSEI", (-3.0, 3.0), MOS_METRICS, "bert-base-uncased",
    defaults={
        "batch_size": 32, "lr_vision": 1e-4,
        "weight_decay_audio": 0.0, "weight_decay_vision": 0.0, "weight_decay_other": 1e-2,
        "post_fusion_dropout": 0.1, "post_text_dropout": 0.0, "post_audio_dropout": 0.0,
    },
    synthetic=SyntheticProfile((16326, 1871, 4659), 50, 500, 375, 74, 35, annotators=3, score_max=3),
    published={
        "paper": Published(f"{_PAPER}, Table 2 (MOSEI), row Self-MM, mean of 5 seeds", {
            "Has0_acc_2": 0.8281, "Has0_F1_score": 0.8253, "Non0_acc_2": 0.8517, "Non0_F1_score": 0.8530,
            "MAE": 0.530, "Corr": 0.765}),
        "mmsa": Published(f"{_MMSA}, Regression, MOSEI, row self_mm (unaligned)", {
            "Has0_acc_2": 0.8376, "Has0_F1_score": 0.8382, "Non0_acc_2": 0.8515, "Non0_F1_score": 0.8490,
            "Mult_acc_5": 0.5553, "Mult_acc_7": 0.5387, "MAE": 0.5309, "Corr": 0.7649}),
    }))
register(Dataset(
    "sims", "SIMS", (-1.0, 1.0), SIMS_METRICS, "bert-base-chinese",
    defaults={
        "batch_size": 32, "weight_decay_audio": 1e-2, "weight_decay_vision": 1e-2,
        "vision_hidden": 64, "post_text_dim": 64, "H": 1.0,
    },
    # Five annotators each scoring -1, 0 or 1, so labels are multiples of 0.2.
    synthetic=SyntheticProfile((1368, 456, 457), 39, 400, 55, 33, 709, annotators=5, score_max=1),
    published={
        "paper": Published(f"{_PAPER}, Table 3 (SIMS), row Self-MM, mean of 5 seeds", {
            "Mult_acc_2": 0.8074, "F1_score": 0.8078, "MAE": 0.419, "Corr": 0.616}),
        "mmsa": Published(f"{_MMSA}, Regression, SIMS, row self_mm (unaligned)", {
            "Mult_acc_2": 0.8004, "Mult_acc_3": 0.6547, "Mult_acc_5": 0.4153, "F1_score": 0.8044,
            "MAE": 0.4250, "Corr": 0.5952}),
    }))
register(Dataset(
    "simsv2", "SIMSv2", (-1.0, 1.0), SIMS_METRICS, "bert-base-chinese",
    defaults={
        "lr_audio": 1e-3, "lr_vision": 1e-3,
        "weight_decay_text": 1e-2, "weight_decay_audio": 0.0, "weight_decay_vision": 0.0,
        "vision_hidden": 64, "post_text_dim": 64, "post_audio_dim": 32,
        "post_text_dropout": 0.0,
    },
    # SIMSv2 came after the paper; MMSA added a self_mm row for it later.
    published={
        "mmsa": Published(f"{_MMSA}, Regression, SIMSv2, row self_mm (unaligned)", {
            "Mult_acc_2": 0.7969, "Mult_acc_3": 0.7261, "Mult_acc_5": 0.5277, "F1_score": 0.7976,
            "MAE": 0.3106, "Corr": 0.6952}),
    }))
