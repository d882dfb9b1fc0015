"""What a finished (or interrupted) sweep is, as data: the contract between sweep and report.

`load_experiment(path)` (in `rsst_tune.tune.experiment`) builds an `Experiment` from an
experiment directory; `rsst_tune.report.write_report(experiment, out_dir)` renders it. Tests
and users can also build these records by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("complete", "pruned", "error", "running")


@dataclass(frozen=True)
class Objective:
    """One optimisation target: a per-state metric and a direction."""

    metric: str  # a key of the per-state result dict, e.g. "test_acc", "macs_frac"
    mode: str  # "max" | "min"


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep."""

    trial_id: str
    status: str  # one of STATUSES
    config: dict[str, Any]  # the full TrialConfig dict the trial ran with
    params: dict[str, Any]  # the searched parameters only (what Optuna proposed)
    states: list[dict[str, Any]]  # per-state results, as PruneLoop.states() yields them
    error: str | None = None
    checkpoint_dir: str | None = None  # where the trial's last state checkpoint lives


@dataclass(frozen=True)
class Experiment:
    """A sweep: its space, objectives and trials, and the Optuna study when it is readable."""

    name: str
    path: str
    space: str
    objectives: tuple[Objective, ...]
    trials: tuple[TrialRecord, ...]
    command: str = ""  # the command line that started the sweep
    study: Any = field(default=None, compare=False)  # optuna.Study | None
