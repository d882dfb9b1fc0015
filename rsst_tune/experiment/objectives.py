"""What a sweep optimises: parsing `--objective`, and the value of a trial under an objective.

A trial runs several pruning states; an objective turns its per-state results into one number:

* a plain objective (`val_acc`, `macs_frac`, ...) is the metric **at the trial's last state**
  (the final ticket of the trial);
* a budgeted objective `METRIC@BUDGET<=B` (e.g. `val_acc@macs<=0.5`, "best accuracy at a MACs
  budget") is the best METRIC (by its mode) over the trial's states whose BUDGET metric is at
  most B. When no state has reached the budget yet, the value is `-(min BUDGET - B)`: negative,
  so every trial that meets the budget ranks above every trial that does not, and among those
  that do not, the one closest to the budget ranks first. Budgets need a metric maximised
  (accuracy-like).

Model selection uses validation accuracy; `test_acc` is reported but never optimised. A state
whose accuracies or training loss are not finite numbers (a diverged state: `finite_state`) has
no value and is never selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rsst_tune.errors import ConfigError, unknown_choice
from rsst_tune.experiment.records import Objective
from rsst_tune.results import StateResult

# Per-state metrics that may be optimised, with their direction.
METRIC_MODES: dict[str, str] = {
    "val_acc": "max",
    "macs_frac": "min",
    "params_frac": "min",
    "density_total": "min",
    "sparsity": "max",
    "train_loss": "min",
    "latency_ms": "min",  # predicted by the sweep's latency table (--latency-batch)
}
REPORT_ONLY = {"test_acc": "val_acc", "acc_before_structure": "val_acc"}
# `macs` in `val_acc@macs<=0.5` is short for the per-state key `macs_frac`.
BUDGET_METRICS: dict[str, str] = {
    "macs": "macs_frac",
    "macs_frac": "macs_frac",
    "params": "params_frac",
    "params_frac": "params_frac",
    "density": "density_total",
    "density_total": "density_total",
}
_EPS = 1e-9
# A state counts only when these are finite numbers (NaN marks a diverged or broken state).
HEALTH_METRICS = ("val_acc", "test_acc", "train_loss")


def finite_state(state: StateResult) -> bool:
    """Whether a state may be selected: its accuracies and training loss are finite."""
    return all(state.metric(key) is not None for key in HEALTH_METRICS)


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """`val_acc`, `val_acc@macs<=0.5`, or several joined by commas (multi-objective)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError("--objective is empty; e.g. val_acc, val_acc@macs<=0.5")
    objectives = tuple(_parse_one(p) for p in parts)
    keys = [o.key for o in objectives]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--objective names an objective twice: {text}")
    return objectives


def _parse_one(text: str) -> Objective:
    metric, sep, budget_part = text.partition("@")
    metric = _metric(metric.strip())
    mode = METRIC_MODES[metric]
    if not sep:
        return Objective(metric, mode)
    name, le, value = budget_part.partition("<=")
    if not le:
        raise ConfigError(f"objective {text!r}: write a budget as METRIC@macs<=0.5")
    name = name.strip()
    if name not in BUDGET_METRICS:
        raise unknown_choice("budget metric", name, BUDGET_METRICS)
    try:
        budget = float(value)
    except ValueError:
        raise ConfigError(f"objective {text!r}: budget {value!r} is not a number") from None
    if not 0.0 < budget <= 1.0:
        raise ConfigError(f"objective {text!r}: budget must be a fraction in (0, 1]")
    if mode != "max":
        raise ConfigError(f"objective {text!r}: a budget needs a maximised metric (e.g. val_acc)")
    return Objective(metric, mode, budget_metric=BUDGET_METRICS[name], budget=budget)


def _metric(name: str) -> str:
    if name in REPORT_ONLY:
        raise ConfigError(
            f"{name} is reported, never optimised (selection must not see the test set); "
            f"use {REPORT_ONLY[name]}"
        )
    if name not in METRIC_MODES:
        raise unknown_choice("objective metric", name, METRIC_MODES)
    return name


def objectives_to_json(objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    return [
        {"metric": o.metric, "mode": o.mode, "budget_metric": o.budget_metric, "budget": o.budget}
        for o in objectives
    ]


def objectives_from_json(data: Sequence[Mapping[str, Any]]) -> tuple[Objective, ...]:
    return tuple(
        Objective(
            str(d["metric"]),
            str(d["mode"]),
            budget_metric=d.get("budget_metric"),
            budget=None if d.get("budget") is None else float(d["budget"]),
        )
        for d in data
    )


def trial_value(objective: Objective, states: Sequence[StateResult]) -> float | None:
    """The trial's value under `objective` from its states so far (None before any state)."""
    if not states:
        return None
    if objective.budget_metric is None or objective.budget is None:
        last = states[-1]
        return last.metric(objective.metric) if finite_state(last) else None
    budget_metric = objective.budget_metric
    usable = [
        (value, cost)
        for s in states
        if finite_state(s)
        and (value := s.metric(objective.metric)) is not None
        and (cost := s.metric(budget_metric)) is not None
    ]
    if not usable:
        return None
    feasible = [value for value, cost in usable if cost <= objective.budget + _EPS]
    if feasible:
        return max(feasible)
    closest = min(cost for _, cost in usable)
    return -(closest - objective.budget)


def objective_metrics(
    objectives: Sequence[Objective], states: Sequence[StateResult]
) -> dict[str, float]:
    """The values a trial reports for its budgeted objectives (plain ones are state metrics)."""
    out: dict[str, float] = {}
    for o in objectives:
        if o.key != o.metric:
            value = trial_value(o, states)
            if value is not None:
                out[o.key] = value
    return out


def describe(objectives: Sequence[Objective]) -> str:
    return ", ".join(f"{o.key} ({o.mode})" for o in objectives)
