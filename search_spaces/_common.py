"""Parameter groups shared by several spaces (a helper module, not a space)."""

from __future__ import annotations

from typing import Any

# The searched choices are fixed lists, not the registries: a study's categorical choices
# must not change when someone registers a criterion (Optuna refuses the changed distribution
# on resume). A space that searches a user's criterion lists it itself.
CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
SCHEDULES = ("constant", "x", "x^2", "x^3", "exp", "exp_custom_exponents")
VIT_MODELS = ("vit_*", "timm:vit_*", "timm:deit_*")
CNN_MODELS = ("resnet*", "res*s", "vgg*")
# The RSST regularizer ceiling g spans about [1e-2, 1e2] on a log scale (ALGORITHMS.md §4).
REG_LOW, REG_HIGH = 1e-2, 1e2


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


def suggest_rate(trial: Any, low: float = 0.1, high: float = 0.5) -> dict[str, Any]:
    """Either derive `rate` from the unit ratios (ALGORITHMS.md §2 step 4.1) or search it."""
    if trial.suggest_categorical("rate_mode", ["derived", "explicit"]) == "explicit":
        return {"rate": trial.suggest_float("rate", low, high)}
    return {}
