"""The best-config report of a sweep: Markdown, self-contained HTML, PNG plots and JSON configs.

    write_report(experiment, out_dir) -> Path of report.md

Every (trial, state) pair is a candidate *ticket*: each pruning state is a real pruned model
with its own accuracy and cost, so a trial of S states offers S tickets. Tickets are chosen by
validation accuracy (`val_acc`); test accuracy is reported beside it and never used to choose.

The module is in three layers:
1. pure computation on records (`collect_tickets`, `pareto_front`, `best_at_budget`,
   `reproduce_config`, `rank_trials`, `param_importances`, ...), easy to test alone;
2. a tiny document model (`Heading`, `Para`, `Code`, `Table`, `Image`) built from those
   results, rendered once to Markdown and once to HTML (images inlined as base64);
3. `write_report`, which writes the files. Missing metrics, NaN, errored trials and empty
   sweeps degrade to "—" or a sentence; they never raise.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rsst_tune.config import TrialConfig
from rsst_tune.tune.records import STATUSES, Experiment, Objective

log = logging.getLogger(__name__)

BUDGETS: tuple[float | None, ...] = (0.25, 0.5, 0.75, None)  # max MACs fraction; None = any
DEFAULT_BUDGET = 0.5  # the budget best_config.json answers for
SELECT_METRIC = "val_acc"
TOP_TRIALS = 5
UNIT_KINDS = ("heads", "neurons", "filters")
BEST_CONFIGS_DIR = "best_configs"
BEST_EXPORTS_DIR = "best_exports"
BUDGET_TOL = 1e-9  # a ticket at exactly 50.0 % MACs is within "MACs ≤ 50 %"
FRONT_AXES = (("macs_frac", "MACs"), ("params_frac", "params"))  # (metric, axis name)
DASH = "—"


# ====================================================================== 1. computation
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
    metrics: Mapping[str, Any]
    config: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    order: int = 0  # position among all tickets: the last, deterministic tie-break
    checkpoint: str | None = None  # the trial's checkpoint directory for this state, if kept

    def metric(self, key: str) -> float | None:
        return finite(self.metrics.get(key))

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


def _state_index(result: Mapping[str, Any], position: int) -> int:
    value = result.get("state")
    if isinstance(value, bool):
        return position
    if isinstance(value, int | np.integer) and value >= 0:
        return int(value)
    return position


def collect_tickets(experiment: Experiment) -> list[Ticket]:
    """Every (trial, state) of the experiment, in trial then state order."""
    out: list[Ticket] = []
    for trial in experiment.trials:
        for position, result in enumerate(trial.states or ()):
            if not isinstance(result, Mapping):
                continue
            out.append(
                Ticket(
                    trial_id=str(trial.trial_id),
                    state=_state_index(result, position),
                    status=str(trial.status),
                    metrics=result,
                    config=trial.config if isinstance(trial.config, Mapping) else {},
                    params=trial.params if isinstance(trial.params, Mapping) else {},
                    order=len(out),
                    checkpoint=trial.state_checkpoints.get(_state_index(result, position)),
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
    arr = np.array([[_or(finite(v), 0.0) for v in points[i]] for i in valid]) * sign
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
    return sorted(front, key=lambda t: (t.metric(cost), -_or(t.val_acc, 0.0), t.order))


def within_budget(ticket: Ticket, budget: float | None) -> bool:
    """Whether the ticket's MACs fraction is ≤ budget (any ticket when budget is None)."""
    if budget is None:
        return True
    macs = ticket.macs_frac
    return macs is not None and macs <= budget + BUDGET_TOL


def _or(value: float | None, default: float) -> float:
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
            -_or(t.metric(metric), -math.inf),
            _or(t.macs_frac, math.inf),
            _or(t.params_frac, math.inf),
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
        return dict(_jsonable(data))


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
        reason = f"{type(exc).__name__}: {_first_line(str(exc))}"
        log.warning("parameter importances not available: %s", reason)
        return Importances(None, reason)
    if not values:
        return Importances(None, "no parameter is shared by every complete trial")
    ranked = tuple(sorted(((str(k), float(v)) for k, v in values.items()), key=lambda kv: -kv[1]))
    return Importances(ranked, f"for {target_name}, over {len(complete)} complete trials")


def _first_value(sign: float, trial: Any) -> float:
    """The trial's first objective value, times `sign`."""
    return sign * float(trial.values[0])


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | str | int) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _jsonable(obj.item())
        except (TypeError, ValueError):
            return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


# ====================================================================== 2. document model
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    """Plain text; `backticks` mark inline code."""

    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


Block = Heading | Para | Code | Table | Image


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown; images are referenced by file name."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            parts.append(b.text)
        elif isinstance(b, Code):
            parts.append(f"```\n{b.text}\n```")
        elif isinstance(b, Table):
            lines = [
                "| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                "|" + "|".join("---" for _ in b.headers) + "|",
            ]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
        else:
            parts.append(f"![{b.alt}]({b.path.name})")
    return "\n\n".join(parts) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#212529;line-height:1.45}
h1{border-bottom:2px solid #dee2e6;padding-bottom:.3em}h2{margin-top:2em;color:#343a40}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #dee2e6;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f1f3f5}tr:nth-child(even) td{background:#f8f9fa}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f1f3f5;border-radius:3px}
code{padding:0 .25em}pre{padding:.7em;overflow-x:auto}
img{max-width:100%;border:1px solid #dee2e6;margin:.5em 0}
""".strip()

_INLINE_CODE = re.compile(r"`([^`]+)`")


def _html_inline(text: str) -> str:
    return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(text))


def _data_uri(path: Path) -> str | None:
    try:
        payload = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None
    return f"data:image/png;base64,{payload}"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """Render blocks as one self-contained HTML page: inline CSS, images as data URIs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_html_inline(b.text)}</p>")
        elif isinstance(b, Code):
            parts.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            uri = _data_uri(b.path)
            if uri is None:
                parts.append(f"<p>(plot {html.escape(b.path.name)} could not be read)</p>")
            else:
                parts.append(f'<img alt="{html.escape(b.alt)}" src="{uri}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ====================================================================== 3. report sections
def fmt_pct(value: float | None, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage, or a dash when missing."""
    return DASH if value is None else f"{100 * value:.{digits}f}"


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else DASH
    if value is None:
        return DASH
    return str(value)


def fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(params.items())) or DASH


def _unit_kinds(tickets: Sequence[Ticket]) -> list[str]:
    return [k for k in UNIT_KINDS if any(t.metric(k) is not None for t in tickets)]


def _ticket_headers(kinds: Sequence[str]) -> tuple[str, ...]:
    return ("trial", "state", "val acc %", "test acc %", "MACs %", "params %", "sparsity %", *kinds)


def _ticket_row(t: Ticket, kinds: Sequence[str]) -> tuple[str, ...]:
    units = tuple(fmt_value(int(v)) if (v := t.metric(k)) is not None else DASH for k in kinds)
    return (
        t.trial_id,
        str(t.state),
        fmt_pct(t.val_acc),
        fmt_pct(t.test_acc),
        fmt_pct(t.macs_frac, 1),
        fmt_pct(t.params_frac, 1),
        fmt_pct(t.metric("sparsity"), 1),
        *units,
    )


def ticket_table(tickets: Sequence[Ticket]) -> Table:
    kinds = _unit_kinds(tickets)
    return Table(_ticket_headers(kinds), tuple(_ticket_row(t, kinds) for t in tickets))


def _try_plot(name: str, make: Callable[[], Path]) -> Path | None:
    """Run one plot; a plotting failure costs the picture, not the report."""
    try:
        return make()
    except Exception as exc:  # matplotlib can fail on odd data; the tables still stand
        log.warning("plot %s not written: %s: %s", name, type(exc).__name__, exc)
        return None


def summary_blocks(
    experiment: Experiment, tickets: Sequence[Ticket], headline: tuple[float | None, Ticket | None]
) -> list[Block]:
    counts = status_counts(experiment)
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in experiment.objectives) or DASH
    blocks: list[Block] = [
        Heading(f"rsst-tune report: {experiment.name}", 1),
        Heading("Summary"),
        Para(
            f"Space `{experiment.space or DASH}` · objectives: {objectives} · "
            f"experiment directory `{experiment.path or DASH}`"
        ),
        Table(
            (*counts.keys(), "total", "tickets"),
            ((*(str(v) for v in counts.values()), str(len(experiment.trials)), str(len(tickets))),),
        ),
        Para(
            "A ticket is one pruning state of one trial. Tickets are chosen by validation "
            "accuracy; test accuracy is shown beside it and never used to choose."
        ),
    ]
    blocks += (
        [Para("Started with:"), Code(experiment.command)]
        if experiment.command
        else [Para("The command that started the sweep was not recorded.")]
    )
    budget, best = headline
    if best is None:
        blocks.append(Para("No trial reported a state with a validation accuracy yet."))
    else:
        blocks.append(
            Para(
                f"Best ticket ({budget_label(budget)}): trial `{best.trial_id}` "
                f"state {best.state}, "
                f"val {fmt_pct(best.val_acc)} % / test {fmt_pct(best.test_acc)} %, "
                f"MACs {fmt_pct(best.macs_frac, 1)} %, params {fmt_pct(best.params_frac, 1)} % "
                "(`best_config.json`)."
            )
        )
    return blocks


def pareto_blocks(tickets: Sequence[Ticket], out_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Pareto front")]
    for cost, name in FRONT_AXES:
        blocks.append(Heading(f"Validation accuracy vs {name} fraction", 3))
        usable = [t for t in tickets if t.val_acc is not None and t.metric(cost) is not None]
        if not usable:
            blocks.append(Para(f"No ticket reports both val_acc and {cost}."))
            continue
        front = ticket_front(usable, cost)
        png = f"pareto_{name.lower()}.png"
        path = _try_plot(png, partial(_pareto_png, usable, front, cost, out_dir / png))
        if path is not None:
            blocks.append(Image(path, f"validation accuracy vs {name} fraction"))
        blocks.append(
            Para(
                f"{len(front)} of {len(usable)} tickets are on the front "
                f"(no other ticket has higher val_acc at lower or equal {name})."
            )
        )
        blocks.append(ticket_table(front))
    return blocks


def _pareto_png(usable: Sequence[Ticket], front: Sequence[Ticket], cost: str, path: Path) -> Path:
    from rsst_tune import plots

    on_front = {id(t) for t in front}
    name = dict(FRONT_AXES)[cost]
    return plots.pareto_plot(
        [100 * _or(t.metric(cost), 0.0) for t in usable],
        [100 * _or(t.val_acc, 0.0) for t in usable],
        [i for i, t in enumerate(usable) if id(t) in on_front],
        [t.label for t in usable],
        x_label=f"{name} kept (% of dense)",
        path=path,
        vlines=[100 * b for b in BUDGETS if b is not None] if cost == "macs_frac" else (),
    )


def budget_blocks(
    tickets: Sequence[Ticket],
    bests: Mapping[float | None, Ticket | None],
    files: Mapping[float | None, str],
    out_dir: Path,
) -> list[Block]:
    blocks: list[Block] = [
        Heading("Best configuration at each budget"),
        Table(
            ("budget", "trial", "state", "val acc %", "test acc %", "MACs %", "params %", "config"),
            tuple(
                (
                    budget_label(b),
                    t.trial_id,
                    str(t.state),
                    fmt_pct(t.val_acc),
                    fmt_pct(t.test_acc),
                    fmt_pct(t.macs_frac, 1),
                    fmt_pct(t.params_frac, 1),
                    files.get(b, DASH),
                )
                if t is not None
                else (budget_label(b), "no ticket within budget", *[DASH] * 6)
                for b, t in bests.items()
            ),
        ),
        Para(
            f"Commands are relative to the report directory `{out_dir}`; each config is the "
            "trial's full config with `pruning_times` = state + 1, so the run stops at that "
            "ticket (same seed, same per-state results)."
        ),
    ]
    for budget, ticket in bests.items():
        blocks.append(Heading(budget_label(budget), 3))
        if ticket is None:
            blocks.append(Para("No ticket within budget."))
            continue
        blocks += [
            Para(
                f"Trial `{ticket.trial_id}` ({ticket.status}), state {ticket.state}: "
                f"val {fmt_pct(ticket.val_acc)} %, test {fmt_pct(ticket.test_acc)} %, "
                f"MACs {fmt_pct(ticket.macs_frac, 1)} %, params "
                f"{fmt_pct(ticket.params_frac, 1)} %, sparsity "
                f"{fmt_pct(ticket.metric('sparsity'), 1)} %."
            ),
            Para(f"Searched parameters: {fmt_params(ticket.params)}"),
            Code(run_command(files[budget])),
            Para("Expected per-state accuracies of that run:"),
            ticket_table(state_history(tickets, ticket)),
        ]
    return blocks


def run_command(config_file: str) -> str:
    return f"rsst-tune run --config {config_file}"


def states_blocks(tickets: Sequence[Ticket], out_dir: Path) -> list[Block]:
    from rsst_tune import plots

    blocks: list[Block] = [Heading("Accuracy and sparsity by state (top trials)")]
    top = rank_trials(tickets)
    if not top:
        return [*blocks, Para("No trial reported a state with a validation accuracy.")]
    blocks.append(
        Para(
            f"The {len(top)} trials with the best val_acc at "
            f"{budget_label(DEFAULT_BUDGET)} (then overall)."
        )
    )
    per_trial = [
        sorted((t for t in tickets if t.trial_id == tid), key=lambda t: t.state) for tid in top
    ]
    series = [
        plots.Series(
            label=tid,
            states=tuple(t.state for t in ts),
            val_acc=tuple(_scaled(t.val_acc) for t in ts),
            test_acc=tuple(_scaled(t.test_acc) for t in ts),
            sparsity=tuple(_scaled(t.metric("sparsity")) for t in ts),
            macs_frac=tuple(_scaled(t.macs_frac) for t in ts),
        )
        for tid, ts in zip(top, per_trial, strict=True)
    ]
    path = _try_plot("states", lambda: plots.states_plot(series, out_dir / "states.png"))
    if path is not None:
        blocks.append(Image(path, "accuracy and sparsity by state"))
    blocks.append(ticket_table([t for ts in per_trial for t in ts]))
    return blocks


def _scaled(value: float | None) -> float | None:
    return None if value is None else 100 * value


def importance_blocks(imp: Importances, out_dir: Path) -> list[Block]:
    from rsst_tune import plots

    blocks: list[Block] = [Heading("Parameter importances")]
    if imp.values is None:
        return [*blocks, Para(f"Not available: {imp.note}.")]
    blocks.append(Para(f"optuna.importance.get_param_importances, {imp.note}."))
    values = imp.values
    path = _try_plot(
        "importances",
        lambda: plots.importance_plot(
            values, out_dir / "importances.png", f"parameter importance ({imp.note})"
        ),
    )
    if path is not None:
        blocks.append(Image(path, "parameter importances"))
    blocks.append(
        Table(("parameter", "importance"), tuple((name, f"{value:.3f}") for name, value in values))
    )
    return blocks


def trials_blocks(experiment: Experiment) -> list[Block]:
    rows = []
    for trial in experiment.trials:
        states = [s for s in (trial.states or ()) if isinstance(s, Mapping)]
        last = Ticket(
            str(trial.trial_id), len(states) - 1, str(trial.status), states[-1] if states else {}
        )
        rows.append(
            (
                str(trial.trial_id),
                str(trial.status),
                str(len(states)),
                fmt_params(trial.params if isinstance(trial.params, Mapping) else {}),
                fmt_pct(last.val_acc),
                fmt_pct(last.test_acc),
                fmt_pct(last.metric("sparsity"), 1),
                fmt_pct(last.macs_frac, 1),
                fmt_pct(last.params_frac, 1),
                _first_line(trial.error) or DASH,
            )
        )
    if not rows:
        return [Heading("All trials"), Para("The experiment has no trials yet.")]
    return [
        Heading("All trials"),
        Para("Metrics are those of each trial's last reported state."),
        Table(
            (
                "trial",
                "status",
                "states",
                "searched parameters",
                "val acc %",
                "test acc %",
                "sparsity %",
                "MACs %",
                "params %",
                "error",
            ),
            tuple(rows),
        ),
    ]


# ====================================================================== 4. files
def _write_text(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    _write_text(
        path,
        json.dumps(_jsonable(data), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
        + "\n",
    )


def write_best_configs(
    out_dir: Path, bests: Mapping[float | None, Ticket | None]
) -> dict[float | None, str]:
    """One plain TrialConfig JSON per budget that has a ticket; returns their relative paths."""
    folder = out_dir / BEST_CONFIGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[float | None, str] = {}
    for budget, ticket in bests.items():
        path = folder / f"{budget_slug(budget)}.json"
        if ticket is None:
            path.unlink(missing_ok=True)  # a stale answer from an earlier report would mislead
            continue
        _write_json(path, reproduce_config(ticket))
        files[budget] = f"{BEST_CONFIGS_DIR}/{path.name}"
    return files


def best_config_record(
    experiment: Experiment,
    tickets: Sequence[Ticket],
    headline: tuple[float | None, Ticket | None],
    files: Mapping[float | None, str],
) -> dict[str, Any]:
    """best_config.json: the headline ticket, its metrics and the config reproducing it."""
    budget, ticket = headline
    record: dict[str, Any] = {
        "experiment": experiment.name,
        "selected_by": SELECT_METRIC,
        "budget": budget,
        "budget_label": budget_label(budget),
    }
    if ticket is None:
        return {
            **record,
            "trial_id": None,
            "state": None,
            "config": None,
            "reason": "no trial reported a state with a validation accuracy",
        }
    config_file = files.get(budget, f"{BEST_CONFIGS_DIR}/{budget_slug(budget)}.json")
    return {
        **record,
        "trial_id": ticket.trial_id,
        "state": ticket.state,
        "status": ticket.status,
        "metrics": dict(ticket.metrics),
        "params": dict(ticket.params),
        "config": reproduce_config(ticket),
        "config_file": config_file,
        "command": run_command(config_file),
        "expected_states": [
            {"state": t.state, "val_acc": t.val_acc, "test_acc": t.test_acc}
            for t in state_history(tickets, ticket)
        ],
    }


def export_best(
    bests: Mapping[float | None, Ticket | None], out_dir: Path
) -> dict[float | None, dict[str, Any] | str]:
    """Physically export each budget's best ticket (`rsst-tune export`): its export.json, or
    why it could not be exported."""
    from rsst_tune.errors import ConfigError
    from rsst_tune.loop import state_file
    from rsst_tune.pruning.export import export_command

    done: dict[str, dict[str, Any] | str] = {}
    out: dict[float | None, dict[str, Any] | str] = {}
    for budget, ticket in bests.items():
        if ticket is None:
            continue
        if ticket.checkpoint is None:
            out[budget] = "no checkpoint kept for this state"
            continue
        key = f"{ticket.trial_id}/{ticket.state}"
        if key not in done:
            dest = out_dir / BEST_EXPORTS_DIR / f"{ticket.trial_id}_s{ticket.state}"
            try:
                export_command(
                    Path(ticket.checkpoint) / state_file(ticket.state),
                    dest,
                    device="auto",
                    repeats=5,
                    show=False,
                )
                done[key] = json.loads((dest / "export.json").read_text())
            except (ConfigError, OSError, RuntimeError, ValueError) as exc:
                log.warning("could not export %s: %s", key, exc)
                done[key] = _first_line(str(exc)) or type(exc).__name__
        out[budget] = done[key]
    return out


def export_blocks(bests: Mapping[float | None, Ticket | None], out_dir: Path) -> list[Block]:
    """Measured speed of the physically pruned best tickets, beside their MAC ratio."""
    exported = export_best(bests, out_dir)
    if not exported:
        return []
    rows = []
    for budget, info in exported.items():
        ticket = bests[budget]
        assert ticket is not None
        where = f"{BEST_EXPORTS_DIR}/{ticket.trial_id}_s{ticket.state}"
        if isinstance(info, str):
            rows.append((budget_label(budget), ticket.label, info, *[DASH] * 4))
            continue
        for lat in info.get("latency", []):
            rows.append(
                (
                    budget_label(budget),
                    ticket.label,
                    f"{lat.get('device')} batch {lat.get('batch')}",
                    f"{float(lat.get('dense_ms', float('nan'))):.2f} / "
                    f"{float(lat.get('pruned_ms', float('nan'))):.2f}",
                    f"{float(lat.get('speedup', float('nan'))):.2f}x",
                    f"{float(info['macs']['ratio']):.2f}x",
                    where,
                )
            )
    return [
        Heading("Physically pruned best tickets"),
        Para(
            "Each best ticket exported with `rsst-tune export`: pruned heads, neurons and "
            "filters sliced out, outputs checked against the masked model (max abs diff "
            "<= 1e-4), latency the median of alternating dense/pruned runs. Load one with "
            "`rsst_tune.pruning.export.load_exported(DIR/model.pt)`."
        ),
        Table(
            ("budget", "ticket", "device", "dense / pruned ms", "speed-up", "MAC ratio", "export"),
            tuple(rows),
        ),
    ]


def build_blocks(
    experiment: Experiment, out_dir: Path, *, export: bool = False
) -> tuple[list[Block], dict[str, Any]]:
    """Compute everything, write the plots and configs; return the document and best_config."""
    tickets = collect_tickets(experiment)
    bests = best_by_budget(tickets)
    headline = headline_ticket(bests, tickets)
    files = write_best_configs(out_dir, bests)
    blocks = [
        *summary_blocks(experiment, tickets, headline),
        *pareto_blocks(tickets, out_dir),
        *budget_blocks(tickets, bests, files, out_dir),
        *(export_blocks(bests, out_dir) if export else []),
        *states_blocks(tickets, out_dir),
        *importance_blocks(param_importances(experiment.study, experiment.objectives), out_dir),
        *trials_blocks(experiment),
    ]
    return blocks, best_config_record(experiment, tickets, headline, files)


def write_report(experiment: Experiment, out_dir: str | Path, *, export: bool = True) -> Path:
    """Write report.md, report.html, PNG plots, best_config.json and best_configs/ to out_dir.

    Returns the path of report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks, best = build_blocks(experiment, out, export=export)
    _write_json(out / "best_config.json", best)
    _write_text(out / "report.html", to_html(blocks, f"rsst-tune report: {experiment.name}"))
    md = out / "report.md"
    _write_text(md, to_markdown(blocks))
    log.info("report written to %s", md)
    return md
