"""Sweeps: Ray Tune runs trials of the prune loop, Optuna proposes their configurations.

Public API (importing it does not import torch or Ray):

    from rsst_tune.tune import SweepOptions, resolve_plan, describe_plan, run_sweep
    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke"))
    run_sweep(plan)                                  # 0 finished, 130 interrupted
    run_sweep(load_plan(plan.experiment_dir), resume=True)
    experiment = load_experiment(plan.experiment_dir)   # records.Experiment

`rsst_tune.tune.trainable.train_trial` is the Ray function trainable, `searcher` holds the
Optuna searcher that tells PRUNED, `space` the `SearchSpace` that `search_spaces/*.py` declare.
"""

from __future__ import annotations

from rsst_tune.tune.experiment import load_experiment
from rsst_tune.tune.objectives import parse_objectives, trial_value
from rsst_tune.tune.records import Experiment, Objective, TrialRecord
from rsst_tune.tune.space import SearchSpace
from rsst_tune.tune.sweep import (
    SweepOptions,
    SweepPlan,
    describe_plan,
    load_plan,
    resolve_plan,
    run_sweep,
)

__all__ = [
    "Experiment",
    "Objective",
    "SearchSpace",
    "SweepOptions",
    "SweepPlan",
    "TrialRecord",
    "describe_plan",
    "load_experiment",
    "load_plan",
    "parse_objectives",
    "resolve_plan",
    "run_sweep",
    "trial_value",
]
