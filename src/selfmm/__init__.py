"""Self-MM: self-supervised multi-task learning for multimodal sentiment analysis.

    import selfmm
    data = selfmm.load_features("mosi.pkl", dataset="mosi")
    cfg = selfmm.config("mosi", text_model="minilm", max_epochs=4)
    run = selfmm.fit(cfg, data, "runs/nb", seeds=[1111, 1112], device="cpu")
    selfmm.load_run("runs/nb").seeds[1111].ulabels

The names below load on first use, so that `import selfmm` (and the command line's --help)
does not pay for torch until something needs it. docs/api.md lists them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_features": "selfmm.data.mmsa",
    "FeatureData": "selfmm.data.types",
    "DataSpec": "selfmm.data.types",
    "Batch": "selfmm.data.batch",
    "config": "selfmm.api",
    "fit": "selfmm.api",
    "load_run": "selfmm.trained",
    "reproduce": "selfmm.api",
    "Run": "selfmm.trained",
    "SeedRun": "selfmm.trained",
    "Config": "selfmm.configuration",
    "SelfMM": "selfmm.model",
    "SelfMMOutput": "selfmm.model",
    "Heads": "selfmm.model",
    "UnimodalLabelGenerator": "selfmm.ulgm",
    "regression_metrics": "selfmm.metrics",
    "Predictor": "selfmm.predict",
    "SelfMMError": "selfmm.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'selfmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    # The public names only: not this module's own imports (Any, importlib, ...) nor the
    # submodules that importing them has set as attributes.
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ does this
    from .api import config, fit, reproduce
    from .configuration import Config
    from .data.batch import Batch
    from .data.mmsa import load_features
    from .data.types import DataSpec, FeatureData
    from .errors import SelfMMError
    from .metrics import regression_metrics
    from .model import Heads, SelfMM, SelfMMOutput
    from .predict import Predictor
    from .trained import Run, SeedRun, load_run
    from .ulgm import UnimodalLabelGenerator
