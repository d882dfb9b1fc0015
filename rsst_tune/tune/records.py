"""Moved: the records of a sweep live in `rsst_tune.experiment` (this path stays importable)."""

from __future__ import annotations

from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.records import (
    PARETO_COSTS,
    STATUSES,
    STOPPED_BY_SCHEDULER,
    Confirmation,
    Objective,
    SeedRun,
    TrialRecord,
)

__all__ = [
    "PARETO_COSTS",
    "STATUSES",
    "STOPPED_BY_SCHEDULER",
    "Confirmation",
    "Experiment",
    "Objective",
    "SeedRun",
    "TrialRecord",
]
