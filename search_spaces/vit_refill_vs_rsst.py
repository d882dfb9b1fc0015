"""Refill against RSST on ViT-tiny, with the fillback rate and the unstructured rate searched."""

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
    method = trial.suggest_categorical("method", ["refill", "rsst"])
    cfg: dict[str, Any] = {
        "method": method,
        "rate": trial.suggest_float("rate", 0.1, 0.4),
        "fillback_rate": trial.suggest_float("fillback_rate", 0.0, 0.5),
        "criteria": suggest_criteria(trial),
    }
    if method == "rsst":  # Refill has no regularizer
        cfg.update(suggest_regularizer(trial))
    cfg["lr"] = suggest_lr(trial, VIT_LR)
    return cfg


SPACE = SearchSpace(
    description="Refill vs RSST on vit_tiny/CIFAR-10: method, rate, fillback_rate, criteria, lr",
    base={**VIT_CIFAR, "target": "both"},
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable=overridable(VIT_MODELS),
    starting_points=(
        {"method": "refill", "rate": 0.3, "fillback_rate": 0.0, "criteria": "l1", "lr": 3e-3},
    ),
)
