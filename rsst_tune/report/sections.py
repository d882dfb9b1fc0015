"""The report's sections, as document blocks built from the selected tickets (plots are
drawn here, through `rsst_tune.plots`). Missing metrics, NaN, errored trials and empty sweeps
degrade to "—" or a sentence; they never raise."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsst_tune.tune.records import Experiment

if TYPE_CHECKING:
    from rsst_tune.export import ExportReport


from rsst_tune.report.document import Block, Code, Heading, Image, Para, Table
from rsst_tune.report.exports import distinct_bests, export_name, read_export
from rsst_tune.report.select import (
    BUDGETS,
    DEFAULT_BUDGET,
    FRONT_AXES,
    UNIT_KINDS,
    Importances,
    Ticket,
    budget_label,
    first_line,
    or_default,
    rank_trials,
    state_history,
    status_counts,
    ticket_front,
)

log = logging.getLogger(__name__)

DASH = "—"


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
        [100 * or_default(t.metric(cost), 0.0) for t in usable],
        [100 * or_default(t.val_acc, 0.0) for t in usable],
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
        states = trial.states
        last = Ticket(
            str(trial.trial_id), len(states) - 1, str(trial.status), states[-1] if states else None
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
                first_line(trial.error) or DASH,
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


def fmt_latency(median_ms: float, iqr_ms: float) -> str:
    """`1.130 (IQR 0.021)`: the median of the timed runs and their interquartile range."""
    return f"{median_ms:.3f} (IQR {iqr_ms:.3f})"


def export_rows(
    ticket: Ticket, budgets: Sequence[float | None], record: ExportReport | str
) -> list[tuple[str, ...]]:
    """One row per measured device and batch size of a ticket (one row when there is none)."""
    where = export_name(ticket)
    head = (ticket.label, "; ".join(budget_label(b) for b in budgets))
    if isinstance(record, str):
        return [(*head, record, *[DASH] * 5, DASH)]
    ratio = f"{record.mac_ratio:.2f}x"
    if not record.latency:
        return [(*head, "latency not measured", *[DASH] * 4, ratio, where)]
    return [
        (
            *head,
            lat.device,
            str(lat.batch),
            fmt_latency(lat.dense_ms, lat.dense_iqr_ms),
            fmt_latency(lat.pruned_ms, lat.pruned_iqr_ms),
            f"{lat.speedup:.2f}x",
            ratio,
            where,
        )
        for lat in record.latency
    ]


def export_blocks(bests: Mapping[float | None, Ticket | None], out_dir: Path) -> list[Block]:
    """The recorded latency of the physically pruned best tickets, beside their MAC ratio."""
    tickets = distinct_bests(bests)
    if not tickets:
        return []
    rows: list[tuple[str, ...]] = []
    repeats: set[int] = set()
    for ticket, budgets in tickets:
        record = read_export(ticket, out_dir)
        if not isinstance(record, str):
            repeats.update(lat.repeats for lat in record.latency)
        rows += export_rows(ticket, budgets, record)
    runs = "/".join(str(r) for r in sorted(repeats)) or "the"
    return [
        Heading("Physically pruned best tickets"),
        Para(
            "Each best ticket is exported and timed once, when the sweep ends (again with "
            "`rsst-tune report DIR --measure`): pruned heads, neurons and filters sliced out, "
            "outputs checked against the masked model (max abs diff <= 1e-4). Latency is in "
            f"ms per forward, as recorded then: the median of {runs} timed runs per model "
            "(dense and pruned alternating) and their interquartile range. Load one with "
            "`rsst_tune.pruning.exported.load_exported('best_exports/<ticket>/model.pt')`."
        ),
        Table(
            (
                "ticket",
                "best at",
                "device",
                "batch",
                "dense ms",
                "pruned ms",
                "speed-up",
                "MAC ratio",
                "export",
            ),
            tuple(rows),
        ),
    ]
