"""The records of a sweep: its objectives, its trials and their seed re-runs, as plain
frozen data. `rsst_tune.experiment.Experiment` gathers them; tests and users may build them by
hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rsst_tune.results import StateResult

STATUSES = ("complete", "pruned", "error", "running")
# StateResult fields a ticket's accuracy can be traded against (lower is cheaper)
PARETO_COSTS = ("macs_frac", "params_frac", "macs", "params", "density_total", "latency_ms")
# TrialRecord.stopped_by of a trial an early-stopping scheduler (MO-ASHA, ASHA) stopped
STOPPED_BY_SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Objective:
    """One optimisation target: a per-state metric and a direction."""

    metric: str  # a key of the per-state result dict, e.g. "test_acc", "macs_frac"
    mode: str  # "max" | "min"
    # A budgeted objective ("val_acc@macs<=0.5"): only states whose `budget_metric` is at most
    # `budget` count; see `rsst_tune.experiment.objectives.trial_value` for the exact definition.
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
    states: tuple[StateResult, ...]  # per-state results, as PruneLoop.states() yields them
    error: str | None = None
    checkpoint_dir: str | None = None  # where the trial's last state checkpoint lives
    # state index -> the checkpoint directory of that state (theta0.pt, state_XX.pt,
    # config.json, results.json); what exporting the best state of a trial needs
    state_checkpoints: dict[int, str] = field(default_factory=dict)
    # Why a `pruned` trial ended before its last state, as the Optuna study recorded it:
    # STOPPED_BY_SCHEDULER (an early-stopping scheduler stopped it), "time_budget" (running
    # when `--time-budget` ran out), "stopped" (the sweep ended it otherwise); None when not
    # pruned or not recorded
    stopped_by: str | None = None


@dataclass(frozen=True)
class SeedRun:
    """One re-run of a ticket with another seed (seed confirmation, `--confirm K`): the
    ticket's config with `seed` changed, run to the ticket's state."""

    ticket: str  # the confirmed ticket's label, "<trial_id>/s<state>"
    seed: int
    status: str  # "complete" | "error"
    result: StateResult | None = None  # the run's state `state` (None when it failed)
    error: str | None = None


@dataclass(frozen=True)
class Confirmation:
    """The seed-confirmation stage of a sweep (`confirm.json`): the tickets it re-ran (the top
    `k` of each budget) and every seed run; the report chooses among them by the mean over
    seeds (`rsst_tune.experiment.seeds`)."""

    k: int
    seeds: tuple[int, ...]  # the extra seeds each ticket ran with
    tickets: tuple[str, ...]  # labels of the confirmed tickets
    runs: tuple[SeedRun, ...] = ()

    def runs_of(self, label: str) -> list[SeedRun]:
        return [r for r in self.runs if r.ticket == label]
