"""Moved: a config's unit budgets and MACs plan left the pruning package.

`rsst_tune.pruning` takes tensors, modules and plain numbers only; what reads a
`TrialConfig`, loads a dataset or builds a model now lives above it:

* `rsst_tune.unit_budget`: `layer_ratios`, `check_layer_ratios`, `planned_alive` (the pure
  rule: `rsst_tune.pruning.select.planned_keep`; `LAYER_WORD` is `rsst_tune.units`'
  `UnitKind.layers`);
* `rsst_tune.macs_plan`: `planned_macs_frac`, `analytic_model`, `MacsBudget`,
  `layer_counts`, `conv_layers`, `ConvLayer`.

The old names still resolve here, imported on first use (so importing this module imports
no config): callers that have not moved yet, and searchers pickled before the move, which
name `rsst_tune.pruning.budget.MacsBudget`.
"""

from __future__ import annotations

import importlib
from typing import Any

_MOVED = {
    "check_layer_ratios": "rsst_tune.unit_budget",
    "layer_ratios": "rsst_tune.unit_budget",
    "planned_alive": "rsst_tune.unit_budget",
    "ConvLayer": "rsst_tune.macs_plan",
    "MacsBudget": "rsst_tune.macs_plan",
    "analytic_model": "rsst_tune.macs_plan",
    "conv_layers": "rsst_tune.macs_plan",
    "layer_counts": "rsst_tune.macs_plan",
    "planned_macs_frac": "rsst_tune.macs_plan",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MOVED})
