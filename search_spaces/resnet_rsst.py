"""RSST filter pruning on ResNet-20 / CIFAR-10 (SGD, the CNN recipe)."""

from __future__ import annotations

from typing import Any

from rsst_tune.experiment.records import Objective
from rsst_tune.tune.space import SearchSpace
from search_spaces._common import (
    CNN_LR,
    CNN_MODELS,
    CNN_RECIPE_START,
    RESNET_CIFAR,
    RESNET_SMOKE,
    overridable,
    suggest_rate,
    suggest_rsst_recipe,
)


def define(trial: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"filter_ratio": trial.suggest_float("filter_ratio", 0.1, 0.5)}
    cfg.update(suggest_rate(trial))
    cfg.update(suggest_rsst_recipe(trial, CNN_LR))
    return cfg


SPACE = SearchSpace(
    description="RSST filter pruning on res20s/CIFAR-10: filter ratio, rate, regularizer, lr",
    base=dict(RESNET_CIFAR),
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable=overridable(CNN_MODELS),
    smoke=dict(RESNET_SMOKE),
    starting_points=(
        {
            "filter_ratio": 0.3,
            "rate_mode": "derived",
            **CNN_RECIPE_START,
        },
    ),
)
