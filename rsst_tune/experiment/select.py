"""Choosing tickets: every (trial, state) of a sweep, Pareto fronts, the best ticket at each
MACs budget (with the tickets the data cannot rank apart from it), the config that reproduces
it, and parameter importances. Pure functions on records; nothing here renders or writes."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from rsst_tune.config import TrialConfig
from rsst_tune.experiment.records import STATUSES, Objective
from rsst_tune.experiment.tickets import SELECT_METRIC, HasTrials, Ticket, finite
from rsst_tune.stats import overlaps

log = logging.getLogger(__name__)


BUDGETS: tuple[float | None, ...] = (0.25, 0.5, 0.75, None)  # max MACs fraction; None = any
DEFAULT_BUDGET = 0.5  # the budget best_config.json answers for
TOP_TRIALS = 5
BUDGET_TOL = 1e-9  # a ticket at exactly 50.0 % MACs is within "MACs ≤ 50 %"
FRONT_AXES = (("macs_frac", "MACs"), ("params_frac", "params"))  # (metric, axis name)
MIN_IMPORTANCE_TRIALS = 10  # below this many complete trials, importances are only a hint
TIE_RULE = (
    "Tickets within a budget whose 95 % Wilson interval of val_acc overlaps the interval of the "
    "ticket with the highest val_acc are tied with it: the validation split is too small to "
    "rank them. Among tied tickets the one with the fewest MACs is chosen, then the higher "
    "val_acc, then the fewer params, then the earlier ticket. A ticket whose split size was not "
    "recorded has no interval and ties only on an equal val_acc."
)


def pareto_front(points: Sequence[Sequence[float | None]], maximize: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the non-dominated points; points with a missing value are skipped.

    A point dominates another when it is at least as good in every coordinate and strictly
    better in one; `maximize[d]` says which way coordinate d is better. Identical points do
    not dominate each other, so ties on the front all stay on it.
    """
    dims = len(maximize)
    valid = [
        i for i, p in enumerate(points) if len(p) == dims and all(finite(v) is not None for v in p)
    ]
    if not valid:
        return []
    sign = np.array([1.0 if m else -1.0 for m in maximize])
    arr = np.array([[or_default(finite(v), 0.0) for v in points[i]] for i in valid]) * sign
    front = []
    for row, i in zip(arr, valid, strict=True):
        dominated = np.any(np.all(arr >= row, axis=1) & np.any(arr > row, axis=1))
        if not dominated:
            front.append(i)
    return front


def ticket_front(tickets: Sequence[Ticket], cost: str) -> list[Ticket]:
    """Tickets on the front of `val_acc` (up) against `cost` (down), cheapest first; tickets
    that are not `selectable` are never on it."""
    tickets = [t for t in tickets if t.selectable]
    points = [(t.val_acc, t.metric(cost)) for t in tickets]
    front = [tickets[i] for i in pareto_front(points, (True, False))]
    return sorted(front, key=lambda t: (t.metric(cost), -or_default(t.val_acc, 0.0), t.order))


def within_budget(ticket: Ticket, budget: float | None) -> bool:
    """Whether the ticket's MACs fraction is ≤ budget (any ticket when budget is None)."""
    if budget is None:
        return True
    macs = ticket.macs_frac
    return macs is not None and macs <= budget + BUDGET_TOL


def or_default(value: float | None, default: float) -> float:
    return default if value is None else value


@dataclass(frozen=True, eq=False)
class Choice:
    """The answer at one budget: the chosen ticket, the ticket with the highest `metric`
    (`leader`) and every ticket tied with the leader (`tied`, in the order of the rule, so the
    chosen one first; the leader is among them)."""

    budget: float | None
    chosen: Ticket
    leader: Ticket
    tied: tuple[Ticket, ...]
    metric: str = SELECT_METRIC

    @property
    def others(self) -> tuple[Ticket, ...]:
        """The tied tickets besides the leader."""
        return tuple(t for t in self.tied if t is not self.leader)

    @property
    def by_interval(self) -> bool:
        """Whether intervals decided the ties (False: the leader's split size is unknown, and
        only an equal value ties)."""
        return self.leader.interval(self.metric) is not None


def is_tied(ticket: Ticket, leader: Ticket, metric: str = SELECT_METRIC) -> bool:
    """Whether the data cannot rank `ticket` apart from `leader` on `metric`: their 95 %
    intervals overlap, or (an interval missing) their values are equal."""
    if ticket is leader:
        return True
    a, b = ticket.interval(metric), leader.interval(metric)
    if a is not None and b is not None:
        return overlaps(a, b)
    return ticket.metric(metric) is not None and ticket.metric(metric) == leader.metric(metric)


def _tie_key(metric: str, t: Ticket) -> tuple[float, float, float, int]:
    """Among tied tickets: fewer MACs, then higher `metric`, then fewer params, then earlier."""
    return (
        or_default(t.macs_frac, math.inf),
        -or_default(t.metric(metric), -math.inf),
        or_default(t.params_frac, math.inf),
        t.order,
    )


def choose_at_budget(
    tickets: Sequence[Ticket], budget: float | None, metric: str = SELECT_METRIC
) -> Choice | None:
    """The choice among the tickets within the MACs budget (`TIE_RULE`), or None.

    The leader has the highest `metric` (equal values: fewer MACs, fewer params, earlier).
    Every candidate whose 95 % interval overlaps the leader's is tied with it (for val_acc
    and test_acc with a recorded split size; otherwise only an equal value ties), and among
    the tied tickets the fewest MACs wins, then the higher `metric`, then fewer params, then
    the earlier ticket. Tickets that are not `selectable` (NaN accuracy or training loss) are
    never candidates.
    """
    candidates = [
        t
        for t in tickets
        if t.selectable and t.metric(metric) is not None and within_budget(t, budget)
    ]
    if not candidates:
        return None
    leader = min(
        candidates,
        key=lambda t: (
            -or_default(t.metric(metric), -math.inf),
            or_default(t.macs_frac, math.inf),
            or_default(t.params_frac, math.inf),
            t.order,
        ),
    )
    tied = sorted(
        (t for t in candidates if is_tied(t, leader, metric)), key=partial(_tie_key, metric)
    )
    return Choice(budget, tied[0], leader, tuple(tied), metric)


def best_at_budget(
    tickets: Sequence[Ticket], budget: float | None, metric: str = SELECT_METRIC
) -> Ticket | None:
    """The ticket chosen within the MACs budget by `TIE_RULE` (`choose_at_budget`), or None.

    Of the tickets whose 95 % `metric` interval overlaps that of the ticket with the highest
    `metric`, the one with the fewest MACs; without recorded split sizes, the highest
    `metric`, equal values going to fewer MACs, then fewer params, then the earlier ticket.
    """
    choice = choose_at_budget(tickets, budget, metric)
    return None if choice is None else choice.chosen


def choices_by_budget(
    tickets: Sequence[Ticket], budgets: Sequence[float | None] = BUDGETS
) -> dict[float | None, Choice | None]:
    return {b: choose_at_budget(tickets, b) for b in budgets}


def best_by_budget(
    tickets: Sequence[Ticket], budgets: Sequence[float | None] = BUDGETS
) -> dict[float | None, Ticket | None]:
    return {
        b: None if c is None else c.chosen for b, c in choices_by_budget(tickets, budgets).items()
    }


def front_leader(front: Sequence[Ticket], metric: str = SELECT_METRIC) -> Ticket | None:
    """The ticket of a front with the highest `metric` (equal values: the cheapest, as the
    front is ordered)."""
    scored = [t for t in front if t.metric(metric) is not None]
    if not scored:
        return None
    return max(scored, key=lambda t: or_default(t.metric(metric), -math.inf))


def headline_choice(
    choices: Mapping[float | None, Choice | None], tickets: Sequence[Ticket]
) -> tuple[float | None, Choice | None]:
    """`headline_ticket` with the choice behind it (its leader and tied tickets)."""
    choice = choices.get(DEFAULT_BUDGET, choose_at_budget(tickets, DEFAULT_BUDGET))
    if choice is not None:
        return DEFAULT_BUDGET, choice
    return None, choices.get(None, choose_at_budget(tickets, None))


def headline_ticket(
    bests: Mapping[float | None, Ticket | None], tickets: Sequence[Ticket]
) -> tuple[float | None, Ticket | None]:
    """The best_config.json answer: the best at DEFAULT_BUDGET when any, else the overall best."""
    ticket = bests.get(DEFAULT_BUDGET, best_at_budget(tickets, DEFAULT_BUDGET))
    if ticket is not None:
        return DEFAULT_BUDGET, ticket
    return None, bests.get(None, best_at_budget(tickets, None))


def budget_label(budget: float | None) -> str:
    return "unconstrained" if budget is None else f"MACs ≤ {100 * budget:g} %"


def budget_slug(budget: float | None) -> str:
    return "unconstrained" if budget is None else f"macs_le_{100 * budget:g}".replace(".", "_")


def reproduce_config(ticket: Ticket) -> dict[str, Any]:
    """The trial's full config, stopping at this ticket (`pruning_times = state + 1`).

    Normalised through `TrialConfig` so the file holds every field; a config that does not
    validate is kept as recorded (with a warning) rather than dropped.
    """
    data = {**ticket.config, "pruning_times": ticket.state + 1}
    try:
        return TrialConfig.from_dict(data).to_dict()
    except (ValueError, TypeError) as exc:
        log.warning(
            "trial %s: its config does not validate (%s); written as recorded", ticket.trial_id, exc
        )
        return dict(jsonable(data))


def state_history(tickets: Sequence[Ticket], ticket: Ticket) -> list[Ticket]:
    """The states a reproduction of `ticket` runs: its trial's tickets up to its state."""
    same = [t for t in tickets if t.trial_id == ticket.trial_id and t.state <= ticket.state]
    return sorted(same, key=lambda t: t.state)


def rank_trials(tickets: Sequence[Ticket], n: int = TOP_TRIALS) -> list[str]:
    """Trial ids ranked by their best val_acc within DEFAULT_BUDGET, then by best overall."""
    scores: dict[str, tuple[int, float]] = {}
    for t in tickets:
        val = t.val_acc
        if val is None or not t.selectable:
            continue
        key = (1, val) if within_budget(t, DEFAULT_BUDGET) else (0, val)
        scores[t.trial_id] = max(scores.get(t.trial_id, key), key)
    return sorted(scores, key=lambda tid: scores[tid], reverse=True)[:n]


def status_counts(experiment: HasTrials) -> dict[str, int]:
    """Trials per status: every known status (even at 0), then any unexpected ones."""
    counts = dict.fromkeys(STATUSES, 0)
    for trial in experiment.trials:
        counts[str(trial.status)] = counts.get(str(trial.status), 0) + 1
    return counts


Ranked = tuple[tuple[str, float], ...]  # (parameter, importance), most important first

# Optuna's own note that a target is read as "lower is better": we negate maximised ones.
_EXPECTED_WARNINGS = (".*importances of params to achieve low",)
# Optuna's importance warnings ("Some regimes for parameter ... have less than 2 trials") go to
# the experiment's log through this logger, never to the terminal (`report_logging`).
quiet_log = logging.getLogger("rsst_tune.report.optuna")
quiet_log.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Importances:
    """Parameter importances for each objective of the study, or why there are none.

    `by_objective`: (objective, ranked importances) per objective, in the study's order;
    `values`: the first objective's (None: not available, `note` says why); `complete`: the
    complete trials they were computed on; `warning`: why they are unreliable (fewer than
    `MIN_IMPORTANCE_TRIALS` complete trials), or None.
    """

    values: Ranked | None
    note: str
    by_objective: tuple[tuple[str, Ranked], ...] = ()
    complete: int = 0
    warning: str | None = None


def objective_names(objectives: Sequence[Objective], count: int) -> list[str]:
    """The study's objectives by name (`Objective.key`), or "objective i" when unknown."""
    if len(objectives) == count:
        return [o.key for o in objectives]
    if count == 1:
        return ["the objective"]
    return [f"objective {i}" for i in range(count)]


def param_importances(
    study: Any, objectives: Sequence[Objective] = (), *, min_trials: int = MIN_IMPORTANCE_TRIALS
) -> Importances:
    """optuna's importances on a study, for each of its objectives.

    Optuna's warnings while computing them (e.g. "Some regimes for parameter ... have less
    than 2 trials") are logged to `quiet_log` at INFO (the experiment's sweep.log), not
    shown; a study it cannot analyse gives a reason, never an exception.
    """
    if study is None:
        return Importances(None, "no Optuna study was loaded with the experiment")
    try:
        import optuna
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < 2:
            return Importances(None, f"needs ≥ 2 complete trials, the study has {len(complete)}")
        names = {name for t in complete for name in t.params}
        varying = sorted(n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1)
        if not varying:
            return Importances(None, "no searched parameter varies across the complete trials")
        directions = list(study.directions)
        multi = len(directions) > 1
        by_objective: list[tuple[str, Ranked]] = []
        for i, name in enumerate(objective_names(objectives, len(directions))):
            target: Callable[[Any], float] | None = None
            if multi:  # optuna's evaluators read a target as "lower is better"
                maximize = directions[i] == optuna.study.StudyDirection.MAXIMIZE
                target = partial(_value_of, i, -1.0 if maximize else 1.0)
            values = _logged_importances(optuna, study, target, name)
            if values:
                ranked = sorted(
                    ((str(k), float(v)) for k, v in values.items()), key=lambda kv: -kv[1]
                )
                by_objective.append((name, tuple(ranked)))
    except Exception as exc:  # a report must not fail on a study it cannot analyse
        reason = f"{type(exc).__name__}: {first_line(str(exc))}"
        log.warning("parameter importances not available: %s", reason)
        return Importances(None, reason)
    if not by_objective:
        return Importances(None, "no parameter is shared by every complete trial")
    n = len(complete)
    warning = None
    if n < min_trials:
        warning = (
            f"only {n} complete trials (fewer than {min_trials}): these importances are "
            "unreliable, a hint at most; a parameter at 0.000 may still matter"
        )
    objectives_text = ", ".join(name for name, _ in by_objective)
    return Importances(
        by_objective[0][1],
        f"for {objectives_text}, over {n} complete trials",
        tuple(by_objective),
        n,
        warning,
    )


def _logged_importances(
    optuna: Any, study: Any, target: Callable[[Any], float] | None, name: str
) -> dict[str, float]:
    """`optuna.importance.get_param_importances`, its warnings sent to `quiet_log`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        values: dict[str, float] = optuna.importance.get_param_importances(study, target=target)
    seen: set[str] = set()
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen:
            seen.add(text)
            quiet_log.info("importances for %s: %s", name, text)
    return values


def _value_of(index: int, sign: float, trial: Any) -> float:
    """The trial's `index`-th objective value, times `sign`."""
    return sign * float(trial.values[index])


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def jsonable(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | str | int) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)
