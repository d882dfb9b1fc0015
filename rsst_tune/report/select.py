"""Choosing tickets: every (trial, state) of a sweep, Pareto fronts, the best ticket at each
MACs budget, the config that reproduces it, and parameter importances. Pure functions on
records; nothing here renders or writes."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from rsst_tune.config import TrialConfig
from rsst_tune.results import StateResult
from rsst_tune.tune.records import STATUSES, Experiment, Objective

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


BUDGETS: tuple[float | None, ...] = (0.25, 0.5, 0.75, None)  # max MACs fraction; None = any
DEFAULT_BUDGET = 0.5  # the budget best_config.json answers for
SELECT_METRIC = "val_acc"
TOP_TRIALS = 5
UNIT_KINDS = ("heads", "neurons", "filters")
BUDGET_TOL = 1e-9  # a ticket at exactly 50.0 % MACs is within "MACs ≤ 50 %"
FRONT_AXES = (("macs_frac", "MACs"), ("params_frac", "params"))  # (metric, axis name)


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None (missing, NaN, inf, text)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True, eq=False)
class Ticket:
    """One pruning state of one trial: a candidate pruned model."""

    trial_id: str
    state: int
    status: str
    result: StateResult | None  # None: a placeholder for a trial without states
    config: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    order: int = 0  # position among all tickets: the last, deterministic tie-break
    checkpoint: str | None = None  # the trial's checkpoint directory for this state, if kept

    def metric(self, key: str) -> float | None:
        return self.result.metric(key) if self.result is not None else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The state's result as plain data."""
        return self.result.to_dict() if self.result is not None else {}

    @property
    def val_acc(self) -> float | None:
        return self.metric("val_acc")

    @property
    def test_acc(self) -> float | None:
        return self.metric("test_acc")

    @property
    def macs_frac(self) -> float | None:
        return self.metric("macs_frac")

    @property
    def params_frac(self) -> float | None:
        return self.metric("params_frac")

    @property
    def label(self) -> str:
        return f"{self.trial_id}/s{self.state}"


def collect_tickets(experiment: Experiment) -> list[Ticket]:
    """Every (trial, state) of the experiment, in trial then state order."""
    out: list[Ticket] = []
    for trial in experiment.trials:
        for result in trial.states:
            out.append(
                Ticket(
                    trial_id=str(trial.trial_id),
                    state=result.state,
                    status=str(trial.status),
                    result=result,
                    config=trial.config if isinstance(trial.config, Mapping) else {},
                    params=trial.params if isinstance(trial.params, Mapping) else {},
                    order=len(out),
                    checkpoint=trial.state_checkpoints.get(result.state),
                )
            )
    return out


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
    """Tickets on the front of `val_acc` (up) against `cost` (down), cheapest first."""
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


def best_at_budget(
    tickets: Sequence[Ticket], budget: float | None, metric: str = SELECT_METRIC
) -> Ticket | None:
    """The ticket with the highest `metric` among those within the MACs budget, or None.

    Ties go to fewer MACs, then fewer params, then the earlier ticket.
    """
    candidates = [t for t in tickets if t.metric(metric) is not None and within_budget(t, budget)]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda t: (
            -or_default(t.metric(metric), -math.inf),
            or_default(t.macs_frac, math.inf),
            or_default(t.params_frac, math.inf),
            t.order,
        ),
    )


def best_by_budget(
    tickets: Sequence[Ticket], budgets: Sequence[float | None] = BUDGETS
) -> dict[float | None, Ticket | None]:
    return {b: best_at_budget(tickets, b) for b in budgets}


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
        if val is None:
            continue
        key = (1, val) if within_budget(t, DEFAULT_BUDGET) else (0, val)
        scores[t.trial_id] = max(scores.get(t.trial_id, key), key)
    return sorted(scores, key=lambda tid: scores[tid], reverse=True)[:n]


def status_counts(experiment: Experiment) -> dict[str, int]:
    """Trials per status: every known status (even at 0), then any unexpected ones."""
    counts = dict.fromkeys(STATUSES, 0)
    for trial in experiment.trials:
        counts[str(trial.status)] = counts.get(str(trial.status), 0) + 1
    return counts


@dataclass(frozen=True)
class Importances:
    """Parameter importances, or why there are none (`values` is None)."""

    values: tuple[tuple[str, float], ...] | None
    note: str


def param_importances(study: Any, objectives: Sequence[Objective] = ()) -> Importances:
    """optuna's importances on a study; on a multi-objective study, for the first objective."""
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
        multi = len(study.directions) > 1
        target: Callable[[Any], float] | None = None
        if multi:  # optuna's evaluators read a target as "lower is better"
            maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
            target = partial(_first_value, -1.0 if maximize else 1.0)
        target_name = (
            objectives[0].metric if objectives else ("objective 0" if multi else "the objective")
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*importances of params to achieve low")
            values = optuna.importance.get_param_importances(study, target=target)
    except Exception as exc:  # a report must not fail on a study it cannot analyse
        reason = f"{type(exc).__name__}: {first_line(str(exc))}"
        log.warning("parameter importances not available: %s", reason)
        return Importances(None, reason)
    if not values:
        return Importances(None, "no parameter is shared by every complete trial")
    ranked = tuple(sorted(((str(k), float(v)) for k, v in values.items()), key=lambda kv: -kv[1]))
    return Importances(ranked, f"for {target_name}, over {len(complete)} complete trials")


def _first_value(sign: float, trial: Any) -> float:
    """The trial's first objective value, times `sign`."""
    return sign * float(trial.values[0])


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
