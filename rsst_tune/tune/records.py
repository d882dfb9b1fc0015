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
    # A budgeted objective ("val_acc@macs<=0.5"): only states whose `budget_metric` is at most
    # `budget` count; see `rsst_tune.tune.objectives.trial_value` for the exact definition.
    budget_metric: str | None = None
    budget: float | None = None

    @property
    def key(self) -> str:
        """The name of the objective, and its key in every reported result."""
        if self.budget_metric is None or self.budget is None:
            return self.metric
        short = self.budget_metric.removesuffix("_frac").removesuffix("_total")
        return f"{self.metric}@{short}<={self.budget:g}"


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
    # state index -> the checkpoint directory of that state (theta0.pt, state_XX.pt,
    # config.json, results.json); what exporting the best state of a trial needs
    state_checkpoints: dict[int, str] = field(default_factory=dict)


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
