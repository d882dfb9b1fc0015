"""A finished (or interrupted) sweep as data: the contract between the sweep and its report.

`rsst_tune.load_experiment(path)` reads one from an experiment directory
(`rsst_tune.experiment.reader`); `rsst_tune.write_report(experiment)` renders it.

    experiment = rsst_tune.load_experiment("experiments/vit_head_mlp-smoke-20250101-120000")
    best = experiment.best(macs=0.5)        # a Ticket: one pruning state of one trial
    print(best.trial_id, best.state, best.val_acc, best.macs_frac)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.records import PARETO_COSTS, Confirmation, Objective, TrialRecord
from rsst_tune.experiment.seeds import best_choices
from rsst_tune.experiment.select import ticket_front
from rsst_tune.experiment.tickets import Ticket, collect_tickets


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
    sweep_file: str = ""  # its options as a sweep file (sweep.yaml; "" for older sweeps)
    latency_batch: int | None = None  # the batch `latency_ms` is predicted at (None: no table)
    latency_table: str | None = None  # the file it is predicted from (None: no table)
    latency_budget_ms: float | None = None  # --latency-budget (None: none)

    # Every (trial, state) pair is a candidate *ticket*, chosen by validation accuracy; test
    # accuracy is reported beside it and never used to choose (`rsst_tune.experiment.select`).

    def tickets(self) -> list[Ticket]:
        """Every (trial, state) of the sweep as a `Ticket`, in trial then state order.
        The same Ticket objects on every call (and in `pareto` and `best`), so
        `experiment.best() in experiment.pareto()` compares as expected.

        >>> [(t.label, t.val_acc, t.macs_frac) for t in experiment.tickets()]
        [('a1b2c3d4/s0', 0.95, 1.0), ('a1b2c3d4/s1', 0.93, 0.61), ...]
        """
        return list(self._tickets)

    @functools.cached_property
    def _tickets(self) -> tuple[Ticket, ...]:  # the records are frozen: computed once
        return tuple(collect_tickets(self))

    def pareto(self, cost: str = "macs_frac") -> list[Ticket]:
        """The tickets on the front of `val_acc` (higher is better) against `cost` (lower is
        better; one of PARETO_COSTS, e.g. "params_frac"), cheapest first.

        >>> for t in experiment.pareto():
        ...     print(f"{t.label}: {t.val_acc:.3f} at {t.macs_frac:.0%} MACs")
        """
        if cost not in PARETO_COSTS:
            raise ConfigError(f"unknown cost {cost!r}; choose one of: {', '.join(PARETO_COSTS)}")
        return ticket_front(self.tickets(), cost)

    def best(self, macs: float | None = None) -> Ticket | None:
        """The ticket the report chooses at a MACs budget (`macs`: a fraction of the dense
        model's; None, the default: the best overall), or None when no ticket is within the
        budget. Tickets
        whose 95 % val_acc interval overlaps the top one's are tied with it, and the tie goes
        to fewer MACs (`rsst_tune.experiment.select.TIE_RULE`); after seed confirmation
        (`--confirm K`) the choice among the confirmed tickets by their mean over seeds, as in
        the report (`rsst_tune.experiment.seeds.best_choices`). The report's
        `best_config.json` answers for `macs=0.5`.

        >>> ticket = experiment.best(macs=0.25)
        >>> ticket.config if ticket else "no ticket at <= 25 % MACs"
        """
        return best_choices(self.tickets(), self.confirmation, (macs,)).bests[macs]

    def to_dataframe(self) -> Any:
        """One row per (trial, state): trial_id, status, state, the state's reported metrics
        (`StateResult` keys; per-layer lists as lists) and the trial's searched parameters
        prefixed `param_` (as Optuna's `trials_dataframe` does), as a pandas DataFrame."""
        import pandas as pd  # a Ray Tune dependency; imported only when a frame is asked for

        rows = []
        for t in self.tickets():
            if t.result is None:
                continue
            row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status}
            row.update(t.metrics)
            row.update({f"param_{k}": v for k, v in sorted(t.params.items())})
            rows.append(row)
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        """In a notebook: the sweep's size and its Pareto front (val_acc against MACs)."""
        from html import escape

        done = sum(t.status == "complete" for t in self.trials)
        head = (
            f"<p><b>{escape(self.name)}</b> ({escape(self.space)}): {len(self.trials)} trials, "
            f"{done} complete; Pareto front of val_acc against MACs:</p>"
        )
        cells = "".join(
            f"<tr><td>{escape(t.label)}</td><td>{_pct(t.val_acc)}</td>"
            f"<td>{_pct(t.test_acc)}</td><td>{_pct(t.macs_frac)}</td></tr>"
            for t in self.pareto()
        )
        return (
            f"{head}<table><tr><th>ticket</th><th>val_acc</th><th>test_acc</th>"
            f"<th>MACs</th></tr>{cells}</table>"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
