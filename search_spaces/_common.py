"""Parameter groups and base configs shared by several spaces (a helper module, not a space)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rsst_tune.tune.space import ANY, SMOKE_DIGITS

# The searched choices are fixed lists, not the registries: a study's categorical choices
# must not change when someone registers a criterion (Optuna refuses the changed distribution
# on resume). A space that searches a user's criterion lists it itself.
CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
SCHEDULES = ("constant", "x", "x^2", "x^3", "exp", "exp_custom_exponents")
VIT_MODELS = ("vit_*", "timm:vit_*", "timm:deit_*")
CNN_MODELS = ("resnet*", "res*s", "vgg*")
# The RSST regularizer ceiling g spans about [1e-2, 1e2] on a log scale (docs/methods.md §4).
REG_LOW, REG_HIGH = 1e-2, 1e2
# Learning-rate ranges (log scale): AdamW for ViTs, SGD with momentum for CNNs.
VIT_LR = (5e-4, 5e-3)
CNN_LR = (0.02, 0.2)

# The ViT recipe on CIFAR-10 that the vit_* spaces start from (each adds its own fields).
VIT_CIFAR: dict[str, Any] = {
    "model": "vit_tiny",
    "dataset": "cifar10",
    "method": "rsst",
    "pruning_times": 4,
    "epochs": 30,
    "prune_type": "lt",
    "optimizer": "adamw",
    "batch_size": 128,
    "warmup_epochs": 2.0,
    "augment": True,
}
# The CNN recipe (SGD) on CIFAR-10, and its offline digits smoke profile.
RESNET_CIFAR: dict[str, Any] = {
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
}
RESNET_SMOKE: dict[str, Any] = {
    **SMOKE_DIGITS,
    "model": "resnet20",
    "optimizer": "sgd",
    "weight_decay": 5e-4,
    "label_smoothing": 0.0,
    "epochs": 15,
}

# The known-good RSST recipe of the CNN spaces' starting points (Optuna parameter values).
CNN_RECIPE_START: dict[str, Any] = {
    "reg_granularity_prune": 1.0,
    "RST_schedule": "x^2",
    "criteria": "l1",
    "lr": 0.1,
}


def overridable(models: Sequence[str]) -> dict[str, Sequence[str]]:
    """What the CLI may override: any dataset, state count and epochs; models by pattern."""
    return {"dataset": ANY, "model": tuple(models), "pruning_times": ANY, "epochs": ANY}


def suggest_regularizer(trial: Any) -> dict[str, Any]:
    """RSST's λ schedule: the ceiling (log scale), the shape, and `exponents` for exp_custom."""
    out: dict[str, Any] = {
        "reg_granularity_prune": trial.suggest_float(
            "reg_granularity_prune", REG_LOW, REG_HIGH, log=True
        ),
        "RST_schedule": trial.suggest_categorical("RST_schedule", list(SCHEDULES)),
    }
    if out["RST_schedule"] == "exp_custom_exponents":  # conditional: only this schedule uses k
        out["exponents"] = trial.suggest_float("exponents", 1.0, 8.0)
    return out


def suggest_criteria(trial: Any) -> str:
    return str(trial.suggest_categorical("criteria", list(CRITERIA)))


def suggest_lr(trial: Any, lr: tuple[float, float]) -> float:
    return float(trial.suggest_float("lr", *lr, log=True))


def suggest_rsst_recipe(trial: Any, lr: tuple[float, float]) -> dict[str, Any]:
    """The RSST training recipe every RSST-only space searches after its pruning budget: the
    regularizer (`suggest_regularizer`), the criterion and the learning rate, in this order
    (the order of the suggestions is part of a seeded sampler's behaviour)."""
    out = suggest_regularizer(trial)
    out["criteria"] = suggest_criteria(trial)
    out["lr"] = suggest_lr(trial, lr)
    return out


def suggest_rate(trial: Any, low: float = 0.1, high: float = 0.5) -> dict[str, Any]:
    """Either derive `rate` from the unit ratios (docs/methods.md §2.4.1) or search it."""
    if trial.suggest_categorical("rate_mode", ["derived", "explicit"]) == "explicit":
        return {"rate": trial.suggest_float("rate", low, high)}
    return {}
