"""Refill against RSST on ViT-tiny, with the fillback rate and the unstructured rate searched."""

from __future__ import annotations

from typing import Any

from rsst_tune.tune.records import Objective
from rsst_tune.tune.space import SearchSpace
from search_spaces._common import VIT_MODELS, suggest_criteria, suggest_regularizer


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
    cfg["lr"] = trial.suggest_float("lr", 5e-4, 5e-3, log=True)
    return cfg


SPACE = SearchSpace(
    description="Refill vs RSST on vit_tiny/CIFAR-10: method, rate, fillback_rate, criteria, lr",
    base={
        "model": "vit_tiny",
        "dataset": "cifar10",
        "method": "rsst",
        "target": "both",
        "pruning_times": 4,
        "epochs": 30,
        "prune_type": "lt",
        "optimizer": "adamw",
        "batch_size": 128,
        "warmup_epochs": 2.0,
        "augment": True,
    },
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable={
        "dataset": ("*",),
        "model": VIT_MODELS,
        "pruning_times": ("*",),
        "epochs": ("*",),
    },
    starting_points=(
        {"method": "refill", "rate": 0.3, "fillback_rate": 0.0, "criteria": "l1", "lr": 3e-3},
    ),
)
