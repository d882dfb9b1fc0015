"""MO-ASHA over pruning states: multi-objective asynchronous successive halving.

A space that searches sparsity (`head_ratio`, `mlp_ratio`, `rate`, ...) cannot use ASHA: at a
given pruning state its trials have different sparsities, and ranking them on accuracy alone
would stop every aggressive pruner. MO-ASHA (Schmucker et al., 2021; Salinas et al., 2021)
ranks them on all the objectives at once, here (val_acc ↑, macs_frac ↓) by default:

* **Rungs** are pruning states: `grace`, `grace·η`, `grace·η²`, ... below the trial's last
  state (η = `reduction_factor`; state 0 is the dense model and is never a rung).
* When a trial reports a rung state, its point joins that rung's recorded points (every trial
  that reached the rung, stopped ones included, as in ASHA). The points are ranked by
  **non-dominated sorting** (front 0 is the Pareto front of the rung, front 1 the front of the
  rest, ...), ties inside a front broken by **crowding distance** (NSGA-II: larger = more
  isolated = better; the two extremes of a front have infinite distance).
* The trial's **rank** is the number of recorded points strictly better than it (a lower
  front, or the same front and a larger crowding distance), so equal points share a rank. With
  `n` points recorded at the rung (its own included), the trial **continues iff
  rank < n / η** (it is in the top 1/η of the rung), else it is stopped there. The first trial
  at a rung always continues; the extremes of a rung's Pareto front (its most accurate and its
  cheapest trial) always continue.
* Decisions are **asynchronous** as in ASHA: each is taken when the trial reports, against the
  points recorded so far; nobody waits for a rung to fill, and a decision is never revisited.

This module is the pure part (no Ray import at module level): `non_dominated_sort`,
`crowding_distance`, `ranks`, `continues` and `MoashaRungs` (the rungs' bookkeeping, plain data
that pickles). `MoashaScheduler` (built by `make_scheduler`, a Ray Tune `FIFOScheduler`) is a
thin adapter: it feeds results to `MoashaRungs` and returns CONTINUE or STOP.

Ray Tune 2.60 does not save a scheduler's state with the experiment (`TuneController` leaves
`_scheduler_alg` out of its state; `Tuner.restore` unpickles the scheduler as it was when the
Tuner was created). On `--resume` the scheduler therefore rebuilds its rungs from the restored
trials' own `result.json` rows (every state a trial reported), in `on_trial_add`, which Ray
calls for every restored trial: a resumed trial is then judged against every point recorded
before the interruption.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rsst_tune.experiment.layout import RESULT_FILE

log = logging.getLogger(__name__)

Point = tuple[float, ...]  # objective values oriented so that larger is better in each
MODES = ("max", "min")


# ---------------------------------------------------------------------- pure ranking
def orient(values: Mapping[str, Any], metrics: Sequence[str], modes: Sequence[str]) -> Point:
    """The point of a result: each metric with its sign flipped where it is minimised; a
    missing or non-finite value is -inf (worst)."""
    out = []
    for metric, mode in zip(metrics, modes, strict=True):
        raw = values.get(metric)
        try:
            value = float(raw) if raw is not None else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            out.append(-math.inf)
        else:
            out.append(value if mode == "max" else -value)
    return tuple(out)


def dominates(a: Point, b: Point) -> bool:
    """Whether `a` is at least as good as `b` everywhere and better somewhere (larger = better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True)
    )


def non_dominated_sort(points: Sequence[Point]) -> list[int]:
    """The front of each point: 0 for the points nothing dominates, 1 for those only front-0
    points dominate, and so on (Deb et al.'s fast non-dominated sort, O(n² m))."""
    n = len(points)
    dominated_by = [0] * n  # how many points dominate i
    dominates_list: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominates_list[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominates_list[j].append(i)
                dominated_by[i] += 1
    front = [-1] * n
    current = [i for i in range(n) if dominated_by[i] == 0]
    level = 0
    while current:
        nxt = []
        for i in current:
            front[i] = level
            for j in dominates_list[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = nxt
        level += 1
    return front


def crowding_distance(points: Sequence[Point], fronts: Sequence[int]) -> list[float]:
    """Each point's crowding distance inside its own front (NSGA-II): per objective, the gap
    between its two neighbours divided by the front's range, summed; the extremes of a front
    (and every point of a front of at most two distinct points) get infinity. Equal points
    share one distance. An objective whose range in the front is 0 or not finite adds 0."""
    n = len(points)
    out = [0.0] * n
    for level in set(fronts):
        members = [i for i in range(n) if fronts[i] == level]
        unique = sorted({points[i] for i in members})
        dist = {p: 0.0 for p in unique}
        if len(unique) <= 2:
            dist = {p: math.inf for p in unique}
        else:
            for m in range(len(unique[0])):
                ordered = sorted(unique, key=lambda p: (p[m], p))
                low, high = ordered[0][m], ordered[-1][m]
                dist[ordered[0]] = dist[ordered[-1]] = math.inf
                span = high - low
                if not (math.isfinite(span) and span > 0):
                    continue
                for k in range(1, len(ordered) - 1):
                    dist[ordered[k]] += (ordered[k + 1][m] - ordered[k - 1][m]) / span
        for i in members:
            out[i] = dist[points[i]]
    return out


def ranks(points: Sequence[Point]) -> list[int]:
    """Each point's rank: how many points are strictly better (a lower front, or the same
    front and a larger crowding distance). 0 is best; equal points share a rank."""
    fronts = non_dominated_sort(points)
    crowd = crowding_distance(points, fronts)
    keys = [(f, -c) for f, c in zip(fronts, crowd, strict=True)]
    return [sum(1 for other in keys if other < key) for key in keys]


def continues(rank: int, n: int, reduction_factor: float) -> bool:
    """The promotion rule: a trial of rank `rank` among `n` recorded points is in the top
    1/η iff rank < n / η (so the first trial at a rung always continues)."""
    return rank * reduction_factor < n


def rung_states(grace: int, reduction_factor: int, last_state: int) -> list[int]:
    """The rung states below `last_state`: grace, grace·η, grace·η², ... (grace >= 1)."""
    if grace < 1 or reduction_factor < 2:
        raise ValueError(
            f"grace must be >= 1 and reduction_factor >= 2, got {grace}, {reduction_factor}"
        )
    out = []
    state = grace
    while state < last_state:
        out.append(state)
        state *= reduction_factor
    return out


# ---------------------------------------------------------------------- bookkeeping
class MoashaRungs:
    """The rungs of one sweep: per rung state, each trial's point and the decision taken.

    Plain data (pickles, `to_json`/`from_json`); `on_result` is the whole algorithm.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        modes: Sequence[str],
        *,
        grace: int = 1,
        reduction_factor: int = 2,
    ) -> None:
        if not metrics or len(metrics) != len(modes):
            raise ValueError("MO-ASHA needs one mode per metric and at least one metric")
        if any(m not in MODES for m in modes):
            raise ValueError(f"modes must be max or min, got {list(modes)}")
        rung_states(grace, reduction_factor, grace + 1)  # validates
        self.metrics = tuple(metrics)
        self.modes = tuple(modes)
        self.grace = int(grace)
        self.reduction_factor = int(reduction_factor)
        # rung state -> trial id -> (point, continued); insertion order = arrival order
        self.recorded: dict[int, dict[str, tuple[Point, bool]]] = {}

    def is_rung(self, state: int, last_state: int) -> bool:
        return state in rung_states(self.grace, self.reduction_factor, last_state)

    def on_result(
        self, trial_id: str, state: int, values: Mapping[str, Any], last_state: int
    ) -> bool:
        """Record the trial's point if `state` is a rung (below `last_state`), and say whether
        it continues. A state reported again (a resumed trial) gets the decision taken the
        first time; a state that is not a rung always continues."""
        if not self.is_rung(state, last_state):
            return True
        rung = self.recorded.setdefault(state, {})
        if trial_id in rung:
            return rung[trial_id][1]
        point = orient(values, self.metrics, self.modes)
        points = [p for p, _ in rung.values()] + [point]
        rank = ranks(points)[-1]
        keep = continues(rank, len(points), self.reduction_factor)
        rung[trial_id] = (point, keep)
        log.debug(
            "MO-ASHA rung %d: trial %s rank %d of %d -> %s",
            state,
            trial_id,
            rank,
            len(points),
            "continue" if keep else "stop",
        )
        return keep

    def restore_rows(self, trial_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record a trial's past rung states from its result rows (a resumed sweep), as the
        trial reported them: a rung the trial went past continued; the last row's rung
        continued unless `stopped`. Rows already recorded are kept. Returns how many were
        recorded."""
        rows = [r for r in rows if "state" in r]
        count = 0
        for row in rows:
            state = int(row["state"])
            last = int(row.get("pruning_times", state + 2)) - 1
            if not self.is_rung(state, last):
                continue
            rung = self.recorded.setdefault(state, {})
            if trial_id in rung:
                continue
            rung[trial_id] = (orient(row, self.metrics, self.modes), True)
            count += 1
        return count

    def mark_stopped(self, trial_id: str, state: int) -> None:
        """A restored trial that ended at rung `state` without finishing was stopped there."""
        entry = self.recorded.get(state, {}).get(trial_id)
        if entry is not None:
            self.recorded[state][trial_id] = (entry[0], False)

    def stopped(self) -> dict[int, list[str]]:
        """Rung state -> the trials stopped there, in arrival order."""
        return {
            s: [t for t, (_, keep) in rung.items() if not keep]
            for s, rung in sorted(self.recorded.items())
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "metrics": list(self.metrics),
                "modes": list(self.modes),
                "grace": self.grace,
                "reduction_factor": self.reduction_factor,
                "recorded": {
                    str(s): [[t, list(p), keep] for t, (p, keep) in rung.items()]
                    for s, rung in self.recorded.items()
                },
            }
        )

    @classmethod
    def from_json(cls, text: str) -> MoashaRungs:
        data = json.loads(text)
        rungs = cls(
            data["metrics"],
            data["modes"],
            grace=int(data["grace"]),
            reduction_factor=int(data["reduction_factor"]),
        )
        for s, entries in data["recorded"].items():
            rungs.recorded[int(s)] = {
                str(t): (tuple(float(v) for v in p), bool(keep)) for t, p, keep in entries
            }
        return rungs


# ---------------------------------------------------------------------- Ray adapter
def make_scheduler(
    metrics: Sequence[str],
    modes: Sequence[str],
    *,
    grace: int = 1,
    reduction_factor: int = 2,
    default_last_state: int | None = None,
) -> Any:
    """A Ray Tune scheduler running MO-ASHA on the results' `state` (imports Ray)."""
    return scheduler_class()(
        MoashaRungs(metrics, modes, grace=grace, reduction_factor=reduction_factor),
        default_last_state=default_last_state,
    )


@functools.cache
def scheduler_class() -> type:
    """`MoashaScheduler`, the Ray class (a `FIFOScheduler`), built on first use and the same
    class ever after (imports Ray)."""
    from ray.tune.schedulers import FIFOScheduler

    return _scheduler_class(FIFOScheduler)


def __getattr__(name: str) -> Any:
    """`MoashaScheduler` (`scheduler_class()`): importing this module does not import Ray
    (`plan.py` reads `rung_states` for `--dry-run`), and unpickling a scheduler (`tuner.pkl`
    on `--resume`) finds the class by this name."""
    if name != "MoashaScheduler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return scheduler_class()


def _scheduler_class(base: type) -> type:
    class _MoashaScheduler(base):  # type: ignore[misc]
        """Ray Tune's side of MO-ASHA: CONTINUE or STOP per result (see the module doc)."""

        def __init__(self, rungs: MoashaRungs, default_last_state: int | None = None) -> None:
            super().__init__()
            self.rungs = rungs
            self.default_last_state = default_last_state
            self._metric = rungs.metrics[0]  # Ray checks that results carry it
            self.num_stopped = 0

        def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
            return True  # the objectives were given at construction

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            if not getattr(trial, "last_result", None):
                return  # a new trial; a restored one has reported before
            rows = _trial_rows(trial)
            if self.rungs.restore_rows(str(trial.trial_id), rows) and rows:
                last = rows[-1]
                finished = str(getattr(trial, "status", "")) in ("TERMINATED", "ERROR")
                complete = int(last.get("state", -1)) >= int(last.get("pruning_times", 0)) - 1
                if finished and not complete:
                    self.rungs.mark_stopped(str(trial.trial_id), int(last["state"]))
                log.info(
                    "MO-ASHA: restored trial %s's rung points (%d result rows)",
                    trial.trial_id,
                    len(rows),
                )

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            if "state" not in result:
                return str(self.CONTINUE)
            state = int(result["state"])
            times = result.get("pruning_times")
            if times is not None:
                last = int(times) - 1
            elif self.default_last_state is not None:
                last = self.default_last_state
            else:
                return str(self.CONTINUE)
            if self.rungs.on_result(str(trial.trial_id), state, result, last):
                return str(self.CONTINUE)
            self.num_stopped += 1
            return str(self.STOP)

        def debug_string(self) -> str:
            stopped = {s: len(t) for s, t in self.rungs.stopped().items()}
            return f"Using MO-ASHA: stopped {self.num_stopped} (per rung state: {stopped})"

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "w", encoding="utf-8") as fh:
                fh.write(self.rungs.to_json())

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, encoding="utf-8") as fh:
                self.rungs = MoashaRungs.from_json(fh.read())

    _MoashaScheduler.__name__ = _MoashaScheduler.__qualname__ = "MoashaScheduler"
    _MoashaScheduler.__module__ = __name__
    return _MoashaScheduler


def _trial_rows(trial: Any) -> list[dict[str, Any]]:
    """The result rows a restored Ray trial reported, one per state (the last of repeats), read
    from its directory in the experiment's storage (or the driver's copy); [] if unreadable."""
    text = None
    storage = getattr(trial, "storage", None)
    fs = getattr(storage, "storage_filesystem", None)
    try:
        if fs is not None and trial.path:
            with fs.open_input_stream(f"{trial.path}/{RESULT_FILE}") as fh:
                text = fh.readall().decode("utf-8", errors="replace")
    except (OSError, RuntimeError, ValueError):
        text = None
    if text is None:
        try:
            with open(f"{trial.local_path}/{RESULT_FILE}", encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, TypeError, RuntimeError):
            return []
    return parse_rows(text)


def parse_rows(text: str) -> list[dict[str, Any]]:
    """Result rows with a `state`, one per state (a repeated state keeps its last row), in
    state order; lines that do not parse (cut off by a crash) are skipped."""
    by_state: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            state = int(row["state"])
        except (ValueError, KeyError, TypeError):
            continue
        by_state[state] = row
    return [by_state[s] for s in sorted(by_state)]
