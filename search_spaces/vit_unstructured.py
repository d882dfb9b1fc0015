"""Element-wise IMP against RSST on ViT-tiny, at the same element-wise rate in every state.

Both methods remove the same fraction `rate` of the weights per state (RSST keeps as many
weights in whole heads and neurons as IMP keeps element-wise, with fillback_rate 0), so trials
are comparable state by state and ASHA can stop the weak ones early.
"""

from __future__ import annotations

from typing import Any

from rsst_tune.experiment.records import Objective
from rsst_tune.tune.space import SearchSpace
from search_spaces._common import (
    VIT_CIFAR,
    VIT_LR,
    VIT_MODELS,
    overridable,
    suggest_criteria,
    suggest_lr,
    suggest_regularizer,
)


def define(trial: Any) -> dict[str, Any]:
    method = trial.suggest_categorical("method", ["imp", "rsst"])
    cfg: dict[str, Any] = {"method": method}
    if method == "rsst":  # the criterion and the regularizer only exist for RSST
        cfg["criteria"] = suggest_criteria(trial)
        cfg.update(suggest_regularizer(trial))
    cfg["lr"] = suggest_lr(trial, VIT_LR)
    return cfg


SPACE = SearchSpace(
    description="element-wise IMP vs RSST on vit_tiny at a fixed rate (ASHA over states)",
    base={
        **VIT_CIFAR,
        "target": "both",
        "rate": 0.2,
        "fillback_rate": 0.0,
        "pruning_times": 5,
    },
    define=define,
    objectives=(Objective("val_acc", "max"),),
    scheduler="asha",
    overridable=overridable(VIT_MODELS),
    starting_points=({"method": "imp", "lr": 3e-3},),
)
