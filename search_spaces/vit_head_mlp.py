"""RSST on ViT-tiny / CIFAR-10: which heads and MLP neurons to remove, and how fast."""

from __future__ import annotations

from typing import Any

from rsst_tune.experiment.records import Objective
from rsst_tune.tune.space import SearchSpace
from search_spaces._common import (
    VIT_CIFAR,
    VIT_LR,
    VIT_MODELS,
    overridable,
    suggest_rate,
    suggest_rsst_recipe,
)


def define(trial: Any) -> dict[str, Any]:
    target = trial.suggest_categorical("target", ["both", "head", "mlp"])
    cfg: dict[str, Any] = {"target": target}
    if target in ("head", "both"):  # head_ratio only when heads are pruned
        cfg["head_ratio"] = trial.suggest_float("head_ratio", 0.1, 0.5)
    if target in ("mlp", "both"):  # mlp_ratio only when the MLP is pruned
        cfg["mlp_ratio"] = trial.suggest_float("mlp_ratio", 0.1, 0.6)
    cfg.update(suggest_rate(trial))
    cfg.update(suggest_rsst_recipe(trial, VIT_LR))
    # distillation from the trial's own dense state 0 (docs/methods.md §4b): conditional
    if trial.suggest_categorical("distill", ["off", "on"]) == "on":
        cfg["distill_alpha"] = trial.suggest_float("distill_alpha", 0.3, 0.9)
        cfg["distill_T"] = trial.suggest_categorical("distill_T", [2.0, 4.0, 8.0])
    return cfg


SPACE = SearchSpace(
    description="RSST on vit_tiny/CIFAR-10: head and MLP ratios, rate, regularizer, criteria, lr, "
    "distillation",
    base={**VIT_CIFAR, "weight_decay": 0.05},
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable=overridable(VIT_MODELS),
    starting_points=(
        {
            "target": "both",
            "head_ratio": 0.3,
            "mlp_ratio": 0.4,
            "rate_mode": "derived",
            "reg_granularity_prune": 1.0,
            "RST_schedule": "x^2",
            "criteria": "l1",
            "lr": 3e-3,
            "distill": "off",
        },
    ),
)
