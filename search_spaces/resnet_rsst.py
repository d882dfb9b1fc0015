"""RSST filter pruning on ResNet-20 / CIFAR-10 (SGD, the CNN recipe)."""

from __future__ import annotations

from typing import Any

from rsst_tune.tune.records import Objective
from rsst_tune.tune.space import SMOKE_DIGITS, SearchSpace
from search_spaces._common import CNN_MODELS, suggest_criteria, suggest_rate, suggest_regularizer


def define(trial: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"filter_ratio": trial.suggest_float("filter_ratio", 0.1, 0.5)}
    cfg.update(suggest_rate(trial))
    cfg.update(suggest_regularizer(trial))
    cfg["criteria"] = suggest_criteria(trial)
    cfg["lr"] = trial.suggest_float("lr", 0.02, 0.2, log=True)
    return cfg


SPACE = SearchSpace(
    description="RSST filter pruning on res20s/CIFAR-10: filter ratio, rate, regularizer, lr",
    base={
        "model": "resnet20",
        "dataset": "cifar10",
        "method": "rsst",
        "pruning_times": 5,
        "epochs": 40,
        "prune_type": "lt",
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "warmup_epochs": 1.0,
        "label_smoothing": 0.0,
        "augment": True,
    },
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable={
        "dataset": ("*",),
        "model": CNN_MODELS,
        "pruning_times": ("*",),
        "epochs": ("*",),
    },
    smoke={
        **SMOKE_DIGITS,
        "model": "resnet20",
        "optimizer": "sgd",
        "weight_decay": 5e-4,
        "label_smoothing": 0.0,
        "epochs": 15,
    },
    starting_points=(
        {
            "filter_ratio": 0.3,
            "rate_mode": "derived",
            "reg_granularity_prune": 1.0,
            "RST_schedule": "x^2",
            "criteria": "l1",
            "lr": 0.1,
        },
    ),
)
