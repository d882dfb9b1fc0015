"""What a finished (or interrupted) sweep is, as data: the contract between sweep and report.

`load_experiment(path)` (in `rsst_tune.tune.experiment`) builds an `Experiment` from an
experiment directory; `rsst_tune.report.write_report(experiment, out_dir)` renders it. Tests
and users can also build these records by hand.

    experiment = rsst_tune.load_experiment("experiments/vit_head_mlp-smoke-20250101-120000")
    best = experiment.best(macs=0.5)        # a report.Ticket: one pruning state of one trial
    print(best.trial_id, best.state, best.val_acc, best.macs_frac)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsst_tune.errors import ConfigError
from rsst_tune.results import StateResult

if TYPE_CHECKING:
    from rsst_tune.report import Ticket

STATUSES = ("complete", "pruned", "error", "running")
# StateResult fields a ticket's accuracy can be traded against (lower is cheaper)
PARETO_COSTS = ("macs_frac", "params_frac", "macs", "params", "density_total")
# TrialRecord.stopped_by of a trial an early-stopping scheduler (MO-ASHA, ASHA) stopped
STOPPED_BY_SCHEDULER = "scheduler"


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
    seeds (`rsst_tune.report.seeds`)."""

    k: int
    seeds: tuple[int, ...]  # the extra seeds each ticket ran with
    tickets: tuple[str, ...]  # labels of the confirmed tickets
    runs: tuple[SeedRun, ...] = ()

    def runs_of(self, label: str) -> list[SeedRun]:
        return [r for r in self.runs if r.ticket == label]


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
    confirmation: Confirmation | None = None  # the seed-confirmation stage, when it ran
    scheduler: str = ""  # the sweep's scheduler ("moasha", "asha", "fifo"; "" when unknown)

    # The methods below are thin views over `rsst_tune.report` (imported when called, so
    # records stay cheap to import): every (trial, state) pair is a candidate *ticket*, chosen
    # by validation accuracy; test accuracy is reported beside it and never used to choose.

    def tickets(self) -> list[Ticket]:
        """Every (trial, state) of the sweep as a `report.Ticket`, in trial then state order.
        The same Ticket objects on every call (and in `pareto` and `best`), so
        `experiment.best() in experiment.pareto()` compares as expected.

        >>> [(t.label, t.val_acc, t.macs_frac) for t in experiment.tickets()]
        [('a1b2c3d4/s0', 0.95, 1.0), ('a1b2c3d4/s1', 0.93, 0.61), ...]
        """
        return list(self._tickets)

    @functools.cached_property
    def _tickets(self) -> tuple[Ticket, ...]:  # the records are frozen: computed once
        from rsst_tune.report import collect_tickets

        return tuple(collect_tickets(self))

    def pareto(self, cost: str = "macs_frac") -> list[Ticket]:
        """The tickets on the front of `val_acc` (higher is better) against `cost` (lower is
        better; one of PARETO_COSTS, e.g. "params_frac"), cheapest first.

        >>> for t in experiment.pareto():
        ...     print(f"{t.label}: {t.val_acc:.3f} at {t.macs_frac:.0%} MACs")
        """
        from rsst_tune.report import ticket_front

        if cost not in PARETO_COSTS:
            raise ConfigError(f"unknown cost {cost!r}; choose one of: {', '.join(PARETO_COSTS)}")
        return ticket_front(self.tickets(), cost)

    def best(self, macs: float | None = 0.5) -> Ticket | None:
        """The ticket the report chooses at a MACs budget (`macs`: a fraction of the dense
        model's; None: unconstrained), or None when no ticket is within the budget. Tickets
        whose 95 % val_acc interval overlaps the top one's are tied with it, and the tie goes
        to fewer MACs (`rsst_tune.report.select.TIE_RULE`). The default, 0.5, is the budget
        the report's `best_config.json` answers for.

        >>> ticket = experiment.best(macs=0.25)
        >>> ticket.config if ticket else "no ticket at <= 25 % MACs"
        """
        from rsst_tune.report import best_at_budget

        return best_at_budget(self.tickets(), macs)

    def write_report(self, out_dir: str | Path | None = None, **options: Any) -> Path:
        """Write the report (`report.md`, `report.html`, plots, `best_config.json`) to `out_dir`
        (default: the experiment directory) and return the path of `report.md`. `options` go
        to `rsst_tune.report.write_report`.

        >>> experiment.write_report("/tmp/report")
        PosixPath('/tmp/report/report.md')
        """
        from rsst_tune.report import write_report

        return Path(write_report(self, self.path if out_dir is None else out_dir, **options))
