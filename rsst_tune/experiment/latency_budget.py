"""A sweep's latency budget read back: the budget, its table's margin, and the ticket chosen
within it.

    facts = latency_budget(experiment)         # None: the sweep had no --latency-budget
    ticket = best_within_latency(experiment.tickets(), facts)

A sweep under `--latency-budget MS` admits a trial when its last state's predicted latency,
raised by the latency table's margin (`rsst_tune.latency_model.LatencyTable.upper_ms`), is
within MS. The ticket it answers with is the one a user would ship under that budget: of the
tickets whose prediction raised by the margin is within it, the one `best_at_budget` chooses
unconstrained (the report's rule at a budget: of the tickets tied with the most accurate, the
one with the fewest MACs). The export step exports it
beside the best tickets per MACs budget, and the report shows whether it measured within.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.select import best_at_budget
from rsst_tune.experiment.tickets import Ticket

if TYPE_CHECKING:
    from rsst_tune.latency_model import LatencyTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyBudget:
    """A sweep's `--latency-budget` and the margin its table adds to a prediction."""

    budget_ms: float
    margin: float | None  # None: the table could not be read (the prediction alone is held)

    def upper_ms(self, predicted_ms: float) -> float:
        """What the budget holds a ticket predicted at `predicted_ms` to."""
        return predicted_ms * (1.0 + (self.margin or 0.0))

    def admits(self, ticket: Ticket) -> bool:
        predicted = ticket.metric("latency_ms")
        return predicted is not None and self.upper_ms(predicted) <= self.budget_ms

    def holds(self, measured_ms: float | None) -> bool | None:
        """Whether a measured latency is within the budget (None: not measured)."""
        return None if measured_ms is None else measured_ms <= self.budget_ms

    def label(self) -> str:
        return f"latency ≤ {self.budget_ms:g} ms"


def read_latency_table(path: str | None) -> LatencyTable | None:
    """The sweep's latency table (None: the sweep had none, or it cannot be read: warned)."""
    from rsst_tune.latency_model import LatencyTable

    if not path:
        return None
    try:
        return LatencyTable.load(path)
    except ConfigError as exc:
        log.warning("the sweep's latency table: %s", exc)
        return None


def latency_budget(experiment: Experiment) -> LatencyBudget | None:
    """The sweep's latency budget and its table's margin (None: the sweep had no budget)."""
    if experiment.latency_budget_ms is None:
        return None
    table = read_latency_table(experiment.latency_table)
    margin = None if table is None else table.margin
    return LatencyBudget(float(experiment.latency_budget_ms), margin)


def best_within_latency(tickets: Sequence[Ticket], budget: LatencyBudget | None) -> Ticket | None:
    """The ticket chosen among those the latency budget admits (None: no budget, or none)."""
    if budget is None:
        return None
    return best_at_budget([t for t in tickets if budget.admits(t)], None)


__all__ = ["LatencyBudget", "best_within_latency", "latency_budget", "read_latency_table"]
