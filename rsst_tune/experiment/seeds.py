"""Seed confirmation: which tickets to re-run with more seeds, and the choice by their mean.

A single run's val_acc moves with its seed by about as much as the tie rule's intervals are
wide (on the digits default, 0.4–2 points over 3 seeds), so the top of a budget is partly
luck. `--confirm K` re-runs the top K tickets of each budget with more seeds
(`rsst_tune.tune.confirm`), and the report then chooses among those tickets by the mean over
seeds (`choose_confirmed`). Pure functions on records; nothing here runs or renders.

    labels = confirm_candidates(tickets, k=2)              # what to re-run
    stats = seed_stats(experiment.confirmation, tickets)   # per ticket: every seed's accuracy
    choice = choose_confirmed(stats, budget=0.5)           # chosen by mean val_acc
    bests = best_tickets(experiment)                       # the answer per budget, as reported

`best_choices` / `best_tickets` are *the* answer at each budget: the seed-confirmed choice
where there is one, else the single-seed choice. The report renders it and the export step
(`rsst_tune.best_exports`) exports it, so the two always agree.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rsst_tune.experiment.records import Confirmation
from rsst_tune.experiment.select import (
    BUDGETS,
    Choice,
    choices_by_budget,
    choose_at_budget,
    or_default,
    within_budget,
)
from rsst_tune.experiment.tickets import SELECT_METRIC, Ticket, finite
from rsst_tune.stats import accuracy_interval, overlaps

EXTRA_SEEDS = 2  # seeds each confirmed ticket runs with besides its own
CONFIRM_RULE = (
    "Seed confirmation re-ran the top {k} tickets of each budget with {extra} more seeds. "
    "Among the confirmed tickets within a budget the one with the highest mean val_acc leads; "
    "tickets whose 95 % Wilson interval of the mean (over all images of all seeds) overlaps "
    "the leader's are tied with it, and among tied tickets the fewest MACs wins, then the "
    "higher mean. A seed run that failed is left out of the mean (the count of seeds is shown)."
)


def ranked_at_budget(tickets: Sequence[Ticket], budget: float | None) -> list[Ticket]:
    """The selectable tickets within `budget` in the order the report would pick them: the
    tie rule's choice and the tickets tied with it first (in the rule's order), then the rest
    by val_acc (higher first; equal: fewer MACs, then earlier)."""
    choice = choose_at_budget(tickets, budget)
    if choice is None:
        return []
    first = list(choice.tied)
    rest = sorted(
        (
            t
            for t in tickets
            if t.selectable
            and t.val_acc is not None
            and within_budget(t, budget)
            and all(t is not f for f in first)
        ),
        key=lambda t: (
            -or_default(t.val_acc, -math.inf),
            or_default(t.macs_frac, math.inf),
            t.order,
        ),
    )
    return first + rest


def confirm_candidates(
    tickets: Sequence[Ticket], k: int, budgets: Sequence[float | None] = BUDGETS
) -> list[Ticket]:
    """The top `k` tickets of each budget (`ranked_at_budget`), each once, in first-seen order."""
    if k < 1:
        return []
    out: list[Ticket] = []
    for budget in budgets:
        for ticket in ranked_at_budget(tickets, budget)[:k]:
            if all(ticket is not t for t in out):
                out.append(ticket)
    return out


@dataclass(frozen=True)
class SeedStats:
    """A confirmed ticket's accuracies over its seeds (its own run first)."""

    ticket: Ticket
    seeds: tuple[int, ...]
    val: tuple[float, ...]
    test: tuple[float, ...]
    val_images: int | None  # images behind the mean val_acc (all seeds), when every size is known
    failed: int = 0  # seed runs that ended in an error (left out)

    @property
    def mean_val(self) -> float:
        return statistics.fmean(self.val)

    @property
    def std_val(self) -> float:
        """Sample standard deviation over seeds (0 with a single seed)."""
        return statistics.stdev(self.val) if len(self.val) > 1 else 0.0

    @property
    def mean_test(self) -> float | None:
        return statistics.fmean(self.test) if self.test else None

    @property
    def std_test(self) -> float | None:
        if not self.test:
            return None
        return statistics.stdev(self.test) if len(self.test) > 1 else 0.0

    def interval(self) -> tuple[float, float] | None:
        """The 95 % Wilson interval of the mean val_acc over all images of all seeds."""
        return accuracy_interval(self.mean_val, self.val_images)


def seed_stats(confirmation: Confirmation | None, tickets: Sequence[Ticket]) -> list[SeedStats]:
    """Per confirmed ticket (in the confirmation's order): its own run and its seed runs."""
    if confirmation is None:
        return []
    by_label = {t.label: t for t in tickets}
    out: list[SeedStats] = []
    for label in confirmation.tickets:
        ticket = by_label.get(label)
        if ticket is None or ticket.val_acc is None or not ticket.selectable:
            continue
        own_seed = ticket.config.get("seed")
        seeds = [int(own_seed) if isinstance(own_seed, int) else -1]
        val = [float(ticket.val_acc)]
        test = [ticket.test_acc] if finite(ticket.test_acc) is not None else []
        sizes = [ticket.split_size()]
        failed = 0
        for run in confirmation.runs_of(label):
            acc = None if run.result is None else finite(run.result.val_acc)
            if run.status != "complete" or acc is None:
                failed += 1
                continue
            seeds.append(run.seed)
            val.append(acc)
            t_acc = finite(run.result.test_acc) if run.result is not None else None
            if t_acc is not None:
                test.append(t_acc)
            sizes.append(run.result.val_size if run.result is not None else None)
        known = [n for n in sizes if isinstance(n, int) and n > 0]
        images = sum(known) if len(known) == len(sizes) else None
        out.append(
            SeedStats(
                ticket,
                tuple(seeds),
                tuple(val),
                tuple(float(x) for x in test if x is not None),
                images,
                failed,
            )
        )
    return out


@dataclass(frozen=True, eq=False)
class ConfirmedChoice:
    """The answer at one budget after seed confirmation: `chosen` (by `CONFIRM_RULE`), the
    `leader` (highest mean), the `tied` stats (the chosen first), and the single-seed choice
    it replaces (`single`), so a report can say whether the extra seeds changed the answer."""

    budget: float | None
    chosen: SeedStats
    leader: SeedStats
    tied: tuple[SeedStats, ...]
    candidates: tuple[SeedStats, ...]  # every confirmed ticket within the budget, best mean first
    single: Choice | None

    @property
    def changed(self) -> bool:
        """Whether the mean over seeds picks another ticket than the single-seed rule did."""
        return self.single is not None and self.single.chosen is not self.chosen.ticket


def _is_tied(a: SeedStats, leader: SeedStats) -> bool:
    if a is leader:
        return True
    ia, il = a.interval(), leader.interval()
    if ia is not None and il is not None:
        return overlaps(ia, il)
    return a.mean_val == leader.mean_val


def choose_confirmed(
    stats: Sequence[SeedStats],
    budget: float | None,
    single: Choice | None = None,
) -> ConfirmedChoice | None:
    """The choice among the confirmed tickets within `budget` (`CONFIRM_RULE`), or None when
    no confirmed ticket is within it."""
    candidates = [s for s in stats if s.val and within_budget(s.ticket, budget)]
    if not candidates:
        return None
    ranked = sorted(
        candidates,
        key=lambda s: (-s.mean_val, or_default(s.ticket.macs_frac, math.inf), s.ticket.order),
    )
    leader = ranked[0]
    tied = sorted(
        (s for s in ranked if _is_tied(s, leader)),
        key=lambda s: (
            or_default(s.ticket.macs_frac, math.inf),
            -s.mean_val,
            or_default(s.ticket.params_frac, math.inf),
            s.ticket.order,
        ),
    )
    return ConfirmedChoice(budget, tied[0], leader, tuple(tied), tuple(ranked), single)


def confirmed_choices(
    stats: Sequence[SeedStats],
    singles: Mapping[float | None, Choice | None],
) -> dict[float | None, ConfirmedChoice | None]:
    """`choose_confirmed` at every budget of `singles` (the single-seed choices)."""
    return {b: choose_confirmed(stats, b, single) for b, single in singles.items()}


def confirmed_or(single: Choice | None, confirmed: ConfirmedChoice | None) -> Choice | None:
    """The answer at a budget: the seed-confirmed choice when there is one (as a `Choice` of
    its tickets), else the single-seed choice."""
    if confirmed is None:
        return single
    return Choice(
        confirmed.budget,
        confirmed.chosen.ticket,
        confirmed.leader.ticket,
        tuple(s.ticket for s in confirmed.tied),
        SELECT_METRIC,
    )


@dataclass(frozen=True, eq=False)
class BestChoices:
    """The answer at every budget: `choices` (the seed-confirmed choice where there is one,
    else the single-seed choice, `confirmed_or`), the seed-confirmed choices themselves
    (`confirmed`, empty without a confirmation that confirmed a ticket) and the `k` of
    `--confirm K` (0 without a confirmation stage)."""

    choices: Mapping[float | None, Choice | None]
    confirmed: Mapping[float | None, ConfirmedChoice | None]
    k: int = 0

    @property
    def bests(self) -> dict[float | None, Ticket | None]:
        """The chosen ticket per budget (None where no ticket is within it)."""
        return {b: None if c is None else c.chosen for b, c in self.choices.items()}


def best_choices(
    tickets: Sequence[Ticket],
    confirmation: Confirmation | None,
    budgets: Sequence[float | None] = BUDGETS,
) -> BestChoices:
    """The report's answer at each of `budgets` among `tickets` (`BestChoices`)."""
    stats = seed_stats(confirmation, tickets)
    singles = choices_by_budget(tickets, budgets)
    confirmed = confirmed_choices(stats, singles) if stats else {}
    choices = {b: confirmed_or(c, confirmed.get(b)) for b, c in singles.items()}
    return BestChoices(choices, confirmed, confirmation.k if confirmation is not None else 0)


class HasConfirmedTickets(Protocol):
    """An `Experiment`: its tickets and its seed-confirmation record."""

    @property
    def confirmation(self) -> Confirmation | None: ...

    def tickets(self) -> list[Ticket]: ...


def best_tickets(experiment: HasConfirmedTickets) -> dict[float | None, Ticket | None]:
    """The best ticket per budget, as the report chooses it (and the export step exports)."""
    return best_choices(experiment.tickets(), experiment.confirmation).bests


__all__ = [
    "CONFIRM_RULE",
    "EXTRA_SEEDS",
    "SELECT_METRIC",
    "BestChoices",
    "ConfirmedChoice",
    "SeedStats",
    "best_choices",
    "best_tickets",
    "choose_confirmed",
    "confirm_candidates",
    "confirmed_choices",
    "confirmed_or",
    "ranked_at_budget",
    "seed_stats",
]
