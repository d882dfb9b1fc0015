"""Sweeps: Ray Tune runs trials of the prune loop, Optuna proposes their configurations.

Public API (importing it does not import torch or Ray); `rsst_tune.sweep` wraps these steps:

    from rsst_tune.tune import SweepOptions, resolve_plan, describe_plan, run_sweep, load_plan
    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke"))
    print(describe_plan(plan))                          # what --dry-run prints
    experiment = run_sweep(plan)                        # records.Experiment, when finished
    # raises rsst_tune.errors.SweepInterrupted when interrupted; then:
    experiment = run_sweep(load_plan(plan.experiment_dir), resume=True)
    experiment = load_experiment(plan.experiment_dir)   # read back at any time

Modules: `plan` (options -> a checked plan, `sweep.json`), `storage` (writable storage
checks), `ray_setup` (a quiet local Ray or a cluster's address), `sweep` (`run_sweep`),
`runner` (the Ray Tuner: build, fit, finish), `trainable` (the Ray function trainable),
`searcher` (the Optuna searcher that tells PRUNED), `space` (the `SearchSpace` that
`search_spaces/*.py` declare), `experiment` + `records` (an experiment directory as data).
"""

from __future__ import annotations

from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.objectives import parse_objectives, trial_value
from rsst_tune.experiment.reader import load_experiment
from rsst_tune.experiment.records import Objective, TrialRecord
from rsst_tune.tune.plan import SweepOptions, SweepPlan, describe_plan, load_plan, resolve_plan
from rsst_tune.tune.space import SearchSpace
from rsst_tune.tune.sweep import run_sweep

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
