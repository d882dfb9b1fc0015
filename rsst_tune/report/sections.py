"""The report's sections, as document blocks built from the selected tickets (plots are
drawn here, through `rsst_tune.plots`). Missing metrics, NaN, errored trials and empty sweeps
degrade to "—" or a sentence; they never raise."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.seeds import CONFIRM_RULE, EXTRA_SEEDS, ConfirmedChoice
from rsst_tune.experiment.select import (
    BUDGETS,
    DEFAULT_BUDGET,
    FRONT_AXES,
    MIN_IMPORTANCE_TRIALS,
    TIE_RULE,
    Choice,
    Importances,
    budget_label,
    first_line,
    front_leader,
    is_tied,
    or_default,
    rank_trials,
    state_history,
    status_counts,
    ticket_front,
)
from rsst_tune.experiment.stops import stop_summary
from rsst_tune.experiment.tickets import Ticket
from rsst_tune.report.document import Block, Code, Heading, Image, Para, Table

# the export table lives with the exports (re-exported for files.py and the package)
from rsst_tune.report.exports import export_blocks as export_blocks
from rsst_tune.report.exports import fmt_latency as fmt_latency
from rsst_tune.units import REPORT_NAMES
from rsst_tune.utilisation import fmt_utilisation, median

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
    return [k for k in REPORT_NAMES if any(t.metric(k) is not None for t in tickets)]


ACC_NAMES = {"val_acc": "val acc %", "test_acc": "test acc %"}
MAX_TIED_ROWS = 10  # tied tickets listed per section; the rest are counted


def fmt_interval(interval: tuple[float, float] | None) -> str:
    """`[92.2, 96.8]`: a 95 % interval of a fraction, in percent (empty when unknown)."""
    return "" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def fmt_acc(ticket: Ticket, metric: str) -> str:
    """`95.00 [92.2, 96.8]`: an accuracy in percent with its 95 % interval, when known."""
    value = ticket.metric(metric)
    if value is None:
        return DASH
    ci = ticket.interval(metric)
    return fmt_pct(value) if ci is None else f"{fmt_pct(value)} {fmt_interval(ci)}"


def acc_short(ticket: Ticket, metric: str = "val_acc") -> str:
    """`95.00 % [92.2, 96.8]`: an accuracy with its 95 % interval, for a sentence."""
    value = ticket.metric(metric)
    if value is None:
        return DASH
    ci = ticket.interval(metric)
    return f"{fmt_pct(value)} %" + ("" if ci is None else f" {fmt_interval(ci)}")


def acc_text(ticket: Ticket, metric: str) -> str:
    """An accuracy for prose: `95.00 % (95 % interval 92.2–96.8 %, n = 360)`."""
    value = ticket.metric(metric)
    if value is None:
        return DASH
    ci, n = ticket.interval(metric), ticket.split_size(metric)
    if ci is None or n is None:
        return f"{fmt_pct(value)} % (split size not recorded: no interval)"
    return f"{fmt_pct(value)} % (95 % interval {100 * ci[0]:.1f}–{100 * ci[1]:.1f} %, n = {n})"


@dataclass(frozen=True)
class AccColumn:
    """A table column of one accuracy: every cell with its 95 % interval, the split size in the
    header when all rows share it (else in each cell)."""

    metric: str
    header: str
    per_cell_n: bool

    def cell(self, ticket: Ticket) -> str:
        text = fmt_acc(ticket, self.metric)
        if not self.per_cell_n or ticket.metric(self.metric) is None:
            return text
        n = ticket.split_size(self.metric)
        return f"{text} n={n}" if n is not None else f"{text} n=?"


def acc_column(tickets: Sequence[Ticket], metric: str) -> AccColumn:
    name = ACC_NAMES[metric]
    sizes = {t.split_size(metric) for t in tickets if t.metric(metric) is not None}
    if not sizes:
        return AccColumn(metric, name, False)
    if sizes == {None}:
        return AccColumn(metric, f"{name} (n not recorded)", False)
    if len(sizes) == 1:
        return AccColumn(metric, f"{name} [95 % CI], n={sizes.pop()}", False)
    return AccColumn(metric, f"{name} [95 % CI]", True)


def _ticket_headers(kinds: Sequence[str], acc: Sequence[AccColumn]) -> tuple[str, ...]:
    return (
        "trial",
        "state",
        *(c.header for c in acc),
        "MACs %",
        "params %",
        "sparsity %",
        *kinds,
    )


def _ticket_row(t: Ticket, kinds: Sequence[str], acc: Sequence[AccColumn]) -> tuple[str, ...]:
    units = tuple(fmt_value(int(v)) if (v := t.metric(k)) is not None else DASH for k in kinds)
    return (
        t.trial_id,
        str(t.state),
        *(c.cell(t) for c in acc),
        fmt_pct(t.macs_frac, 1),
        fmt_pct(t.params_frac, 1),
        fmt_pct(t.metric("sparsity"), 1),
        *units,
    )


def ticket_table(
    tickets: Sequence[Ticket], extra: tuple[str, Callable[[Ticket], str]] | None = None
) -> Table:
    """One row per ticket; `extra`: (header, cell) of one more column at the end."""
    kinds = _unit_kinds(tickets)
    acc = (acc_column(tickets, "val_acc"), acc_column(tickets, "test_acc"))
    headers = _ticket_headers(kinds, acc)
    rows = [_ticket_row(t, kinds, acc) for t in tickets]
    if extra is not None:
        headers = (*headers, extra[0])
        rows = [(*row, extra[1](t)) for row, t in zip(rows, tickets, strict=True)]
    return Table(headers, tuple(rows))


def _try_plot(name: str, make: Callable[[], Path]) -> Path | None:
    """Run one plot; a plotting failure costs the picture, not the report."""
    try:
        return make()
    except Exception as exc:  # matplotlib can fail on odd data; the tables still stand
        log.warning("plot %s not written: %s: %s", name, type(exc).__name__, exc)
        return None


def _others(k: int) -> str:
    return f"{k} other ticket{'s' if k != 1 else ''} {'are' if k != 1 else 'is'}"


def choice_text(choice: Choice) -> str:
    """Why this ticket was chosen, claiming no more than the intervals support."""
    leader, chosen, k = choice.leader, choice.chosen, len(choice.others)
    scope = "overall" if choice.budget is None else f"within {budget_label(choice.budget)}"
    if not choice.by_interval:
        text = (
            "The split size of these results was not recorded (an rsst-tune before split sizes "
            "were), so there is no interval: the highest val_acc is chosen, an equal val_acc "
            "going to fewer MACs."
        )
        return text + (f" {_others(k)} at the same val_acc." if k else "")
    if k == 0:
        return (
            f"`{leader.label}` has the highest val_acc {scope}, and no other ticket's 95 % "
            "val interval overlaps its: the others are below it at this split size."
        )
    tied = (
        f"`{leader.label}` has the highest val_acc {scope} ({acc_short(leader)}), "
        f"but {_others(k)} tied with it (their 95 % val intervals overlap its): the data do not "
        "show that it is more accurate than them."
    )
    if chosen is leader:
        return tied + " It also has the fewest MACs among the tied tickets, so it is chosen."
    return (
        f"{tied} A tie goes to fewer MACs: `{chosen.label}` "
        f"({acc_short(chosen)}, MACs {fmt_pct(chosen.macs_frac, 1)} % against "
        f"{fmt_pct(leader.macs_frac, 1)} %) is chosen."
    )


def _uncertainty_text(tickets: Sequence[Ticket]) -> str:
    sizes = sorted({n for t in tickets if (n := t.split_size("val_acc")) is not None})
    unknown = any(t.val_acc is not None and t.split_size("val_acc") is None for t in tickets)
    if not sizes:
        return (
            "The split sizes were not recorded (results of an rsst-tune before they were), so "
            "accuracies are shown without intervals and only equal val_acc ties."
            if unknown
            else ""
        )
    step = (
        f"one image of {sizes[0]} is {100 / sizes[0]:.2f} points"
        if len(sizes) == 1
        else (f"validation splits of {', '.join(str(n) for n in sizes)} images")
    )
    return (
        "Every accuracy is shown with its 95 % Wilson interval [low, high] and the number of "
        f"images n it was measured on ({step}); tickets whose val intervals overlap are "
        "treated as tied, since this data cannot rank them."
        + (
            " Some results do not record their split size: they have no interval."
            if unknown
            else ""
        )
    )


def summary_blocks(
    experiment: Experiment, tickets: Sequence[Ticket], headline: tuple[float | None, Choice | None]
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
        *_stops_blocks(experiment),
        *_ran_on_blocks(experiment),
        *_utilisation_blocks(experiment),
        Para(
            "A ticket is one pruning state of one trial. Tickets are chosen by validation "
            "accuracy; test accuracy is shown beside it and never used to choose. "
            + _uncertainty_text(tickets)
        ),
    ]
    blocks += (
        [Para("Started with:"), Code(experiment.command)]
        if experiment.command
        else [Para("The command that started the sweep was not recorded.")]
    )
    if experiment.sweep_file:
        blocks += [
            Para(
                "Its options as a sweep file (`sweep.yaml`: the flags and any `--config` file "
                "merged; `tune_main.py --config sweep.yaml` runs the same sweep again):"
            ),
            Code(experiment.sweep_file.rstrip("\n")),
        ]
    budget, choice = headline
    if choice is None:
        blocks.append(Para("No trial reported a state with a validation accuracy yet."))
        return blocks
    best = choice.chosen
    blocks += [
        Para(
            f"Chosen ticket ({budget_label(budget)}): trial `{best.trial_id}` "
            f"state {best.state}, val {acc_text(best, 'val_acc')}, "
            f"test {acc_text(best, 'test_acc')}, MACs {fmt_pct(best.macs_frac, 1)} %, "
            f"params {fmt_pct(best.params_frac, 1)} % (`best_config.json`)."
        ),
        Para(choice_text(choice)),
    ]
    return blocks


def _stops_blocks(experiment: Experiment) -> list[Block]:
    """The early-stopping scheduler's stops, the line the console printed at the sweep's end
    (`rsst_tune.experiment.stops`); nothing for fifo."""
    summary = stop_summary(experiment)
    return [] if summary is None else [Para(summary.line() + ".")]


def ran_on(experiment: Experiment) -> list[tuple[str, int]]:
    """Where and how the trials' states ran ("cuda (NVIDIA H100 ...), bf16 autocast"), each
    with its number of trials, most trials first; a trial whose states ran in several ways
    (resumed on another machine) counts under each. Results that do not record it are left
    out (an older rsst-tune)."""
    counts: Counter[str] = Counter()
    for trial in experiment.trials:
        counts.update(
            {f"{r.device}, {r.numerics}" for r in trial.states if r.device and r.numerics}
        )
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _ran_on_blocks(experiment: Experiment) -> list[Block]:
    where = ran_on(experiment)
    if not where:
        return []
    parts = "; ".join(f"{what} ({n} trial{'s' if n != 1 else ''})" for what, n in where)
    if len(where) > 1:
        parts += (
            ". The tickets compared were not all measured the same way: a difference "
            "between them may come from the device or the numerics"
        )
    return [Para(f"Ran on: {parts}.")]


@dataclass(frozen=True)
class Throughput:
    """The training utilisation of the states that ran one way (`ran_on`'s "device,
    numerics"): medians over the states trained (`StateResult.images_per_s`, `gpu_busy`,
    `mfu`; `rsst_tune.utilisation`)."""

    ran: str
    states: int
    images_per_s: float
    gpu_busy: float | None
    mfu: float | None


def throughput(experiment: Experiment) -> list[Throughput]:
    """One `Throughput` per way the states ran, most states first; states without
    `images_per_s` (a state 0 from the dense cache, an older rsst-tune) are left out."""
    groups: dict[str, list[Any]] = {}
    for trial in experiment.trials:
        for r in trial.states:
            if r.metric("images_per_s") is not None:
                groups.setdefault(f"{r.device or DASH}, {r.numerics or DASH}", []).append(r)
    out = []
    for ran, states in groups.items():
        busy = [v for r in states if (v := r.metric("gpu_busy")) is not None]
        used = [v for r in states if (v := r.metric("mfu")) is not None]
        rate = median([v for r in states if (v := r.metric("images_per_s")) is not None])
        assert rate is not None
        out.append(Throughput(ran, len(states), rate, median(busy), median(used)))
    return sorted(out, key=lambda t: (-t.states, t.ran))


def _utilisation_blocks(experiment: Experiment) -> list[Block]:
    rows = throughput(experiment)
    if not rows:
        return []
    parts = []
    for t in rows:
        text = fmt_utilisation(t.images_per_s, t.gpu_busy, t.mfu)
        parts.append(f"{t.ran}: {text} ({t.states} state{'s' if t.states != 1 else ''})")
    return [
        Para(
            "Training throughput (median over the states trained; GPU busy: the share of the "
            "training time the GPU spent inside steps; MFU: model FLOPs against the GPU's "
            "peak for the dtype): " + "; ".join(parts) + "."
        )
    ]


def _front_mark(leader: Ticket | None, t: Ticket) -> str:
    if leader is None:
        return DASH
    if t is leader:
        return "top val"
    return "tied" if is_tied(t, leader) else "below"


def pareto_blocks(tickets: Sequence[Ticket], out_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Pareto front")]
    for cost, name in FRONT_AXES:
        blocks.append(Heading(f"Validation accuracy vs {name} fraction", 3))
        usable = [t for t in tickets if t.val_acc is not None and t.metric(cost) is not None]
        if not usable:
            blocks.append(Para(f"No ticket reports both val_acc and {cost}."))
            continue
        front = ticket_front(usable, cost)
        leader = front_leader(front)
        png = f"pareto_{name.lower()}.png"
        path = _try_plot(png, partial(_pareto_png, usable, front, leader, cost, out_dir / png))
        if path is not None:
            blocks.append(Image(path, f"validation accuracy vs {name} fraction"))
        blocks.append(
            Para(
                f"{len(front)} of {len(usable)} tickets are on the front "
                f"(no other ticket has higher val_acc at lower or equal {name})."
                + _front_ties_text(front, leader, name)
            )
        )
        blocks.append(ticket_table(front, ("vs top val", partial(_front_mark, leader))))
    return blocks


def _front_ties_text(front: Sequence[Ticket], leader: Ticket | None, name: str) -> str:
    if leader is None:
        return ""
    if leader.interval("val_acc") is None:
        return " The split size was not recorded: no intervals, so no ties are shown."
    tied = [t for t in front if t is not leader and is_tied(t, leader)]
    if not tied:
        return (
            f" No other front ticket's 95 % val interval overlaps that of `{leader.label}`, "
            "the front's highest val_acc."
        )
    cheapest = min(tied, key=lambda t: or_default(t.metric(FRONT_COST[name]), 0.0))
    return (
        f" {_others(len(tied))} tied with `{leader.label}`, the front's highest val_acc "
        "(their 95 % val intervals overlap its): the data cannot rank them, so the cheapest, "
        f"`{cheapest.label}`, is not shown to be less accurate."
    )


FRONT_COST = {name: cost for cost, name in FRONT_AXES}


def _pareto_png(
    usable: Sequence[Ticket],
    front: Sequence[Ticket],
    leader: Ticket | None,
    cost: str,
    path: Path,
) -> Path:
    from rsst_tune import plots

    on_front = {id(t) for t in front}
    name = dict(FRONT_AXES)[cost]
    band = leader.interval("val_acc") if leader is not None else None
    return plots.pareto_plot(
        [100 * or_default(t.metric(cost), 0.0) for t in usable],
        [100 * or_default(t.val_acc, 0.0) for t in usable],
        [i for i, t in enumerate(usable) if id(t) in on_front],
        [t.label for t in usable],
        x_label=f"{name} kept (% of dense)",
        path=path,
        vlines=[100 * b for b in BUDGETS if b is not None] if cost == "macs_frac" else (),
        intervals=[_scaled_interval(t.interval("val_acc")) for t in usable],
        band=_scaled_interval(band),
    )


def _scaled_interval(iv: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if iv is None else (100 * iv[0], 100 * iv[1])


def distinct_choices(
    choices: Mapping[float | None, Choice | None],
) -> list[tuple[Ticket, list[Choice]]]:
    """Each chosen ticket once, with the choices (budgets) that pick it, in budget order."""
    out: dict[int, tuple[Ticket, list[Choice]]] = {}
    for choice in choices.values():
        if choice is not None:
            out.setdefault(id(choice.chosen), (choice.chosen, []))[1].append(choice)
    return list(out.values())


def _tie_role(ticket: Ticket, group: Sequence[Choice], t: Ticket) -> str:
    roles = ["chosen"] if t is ticket else []
    top = [budget_label(c.budget) for c in group if c.leader is t]
    if top:
        roles.append("top val at " + ", ".join(top))
    if not roles:
        roles.append("tied at " + ", ".join(budget_label(c.budget) for c in group if t in c.tied))
    return "; ".join(roles)


def budget_blocks(
    tickets: Sequence[Ticket],
    choices: Mapping[float | None, Choice | None],
    files: Mapping[float | None, str],
    out_dir: Path,
) -> list[Block]:
    rows: list[tuple[str, ...]] = []
    chosen = [c.chosen for c in choices.values() if c is not None]
    val_col, test_col = acc_column(chosen, "val_acc"), acc_column(chosen, "test_acc")
    for b, c in choices.items():
        if c is None:
            rows.append((budget_label(b), "no ticket within budget", *[DASH] * 7))
            continue
        t = c.chosen
        rows.append(
            (
                budget_label(b),
                t.trial_id,
                str(t.state),
                val_col.cell(t),
                test_col.cell(t),
                fmt_pct(t.macs_frac, 1),
                fmt_pct(t.params_frac, 1),
                str(len(c.others)) if c.by_interval else "n/a",
                files.get(b, DASH),
            )
        )
    blocks: list[Block] = [
        Heading("Best configuration at each budget"),
        Para(TIE_RULE),
        Table(
            (
                "budget",
                "trial",
                "state",
                val_col.header,
                test_col.header,
                "MACs %",
                "params %",
                "others tied with top val",
                "config",
            ),
            tuple(rows),
        ),
        Para(
            f"Commands are relative to the report directory `{out_dir}`; each config is the "
            "trial's full config with `pruning_times` = state + 1, so the run stops at that "
            "ticket (same seed, same per-state results). Budgets that choose the same ticket "
            "share one section below."
        ),
    ]
    empty = [budget_label(b) for b, c in choices.items() if c is None]
    if empty:
        blocks.append(Para(f"No ticket within budget at {', '.join(empty)}."))
    for ticket, group in distinct_choices(choices):
        labels = [budget_label(c.budget) for c in group]
        blocks.append(Heading(" · ".join(labels), 3))
        blocks.append(
            Para(
                f"Trial `{ticket.trial_id}` ({ticket.status}), state {ticket.state}: "
                f"val {acc_text(ticket, 'val_acc')}, test {acc_text(ticket, 'test_acc')}, "
                f"MACs {fmt_pct(ticket.macs_frac, 1)} %, params "
                f"{fmt_pct(ticket.params_frac, 1)} %, sparsity "
                f"{fmt_pct(ticket.metric('sparsity'), 1)} %."
                + (
                    f" The same ticket is chosen at {len(group)} budgets: {', '.join(labels)}."
                    if len(group) > 1
                    else ""
                )
            )
        )
        for c in group:
            prefix = f"{budget_label(c.budget)}: " if len(group) > 1 else ""
            blocks.append(Para(prefix + choice_text(c)))
        tied: list[Ticket] = []
        for c in group:
            tied += [t for t in c.tied if t not in tied]
        if len(tied) > 1:
            shown = tied[:MAX_TIED_ROWS]
            blocks.append(Para("The tied tickets, in the order of the rule:"))
            blocks.append(ticket_table(shown, ("role", partial(_tie_role, ticket, group))))
            if len(tied) > len(shown):
                blocks.append(Para(f"… and {len(tied) - len(shown)} more tied tickets."))
        config = files[group[0].budget]
        same = [files[c.budget] for c in group[1:] if c.budget in files]
        blocks += [
            Para(f"Searched parameters: {fmt_params(ticket.params)}"),
            Code(run_command(config)),
        ]
        if same:
            blocks.append(Para(f"(`{'`, `'.join(same)}` hold the same config.)"))
        blocks += [
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
            val_interval=tuple(_scaled_interval(t.interval("val_acc")) for t in ts),
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
    if imp.warning is not None:
        blocks.append(Para(f"Warning: {imp.warning}.", warning=True))
    blocks.append(
        Para(
            f"optuna.importance.get_param_importances (Optuna's default evaluator), {imp.note}; "
            "one column per objective, each normalised to sum to 1. Below "
            f"`MIN_IMPORTANCE_TRIALS` = {MIN_IMPORTANCE_TRIALS} complete trials the report "
            "warns that they are only a hint."
        )
    )
    by_objective = imp.by_objective or (("the objective", imp.values),)
    title = "parameter importance" + (" (unreliable: few trials)" if imp.warning else "")
    path = _try_plot(
        "importances",
        lambda: plots.importance_plot(by_objective, out_dir / "importances.png", title),
    )
    if path is not None:
        blocks.append(Image(path, "parameter importances"))
    names: list[str] = []
    for _, values in by_objective:
        names += [n for n, _ in values if n not in names]
    columns = [dict(values) for _, values in by_objective]
    blocks.append(
        Table(
            ("parameter", *(objective for objective, _ in by_objective)),
            tuple(
                (name, *(f"{col[name]:.3f}" if name in col else DASH for col in columns))
                for name in names
            ),
        )
    )
    return blocks


def trials_blocks(experiment: Experiment) -> list[Block]:
    lasts: list[tuple[Any, Ticket]] = []
    for trial in experiment.trials:
        states = trial.states
        lasts.append(
            (
                trial,
                Ticket(
                    str(trial.trial_id),
                    len(states) - 1,
                    str(trial.status),
                    states[-1] if states else None,
                ),
            )
        )
    if not lasts:
        return [Heading("All trials"), Para("The experiment has no trials yet.")]
    val_col = acc_column([t for _, t in lasts], "val_acc")
    test_col = acc_column([t for _, t in lasts], "test_acc")
    rows = [
        (
            str(trial.trial_id),
            str(trial.status),
            str(len(trial.states)),
            fmt_params(trial.params if isinstance(trial.params, Mapping) else {}),
            val_col.cell(last),
            test_col.cell(last),
            fmt_pct(last.metric("sparsity"), 1),
            fmt_pct(last.macs_frac, 1),
            fmt_pct(last.params_frac, 1),
            first_line(trial.error) or DASH,
        )
        for trial, last in lasts
    ]
    return [
        Heading("All trials"),
        Para("Metrics are those of each trial's last reported state."),
        Table(
            (
                "trial",
                "status",
                "states",
                "searched parameters",
                val_col.header,
                test_col.header,
                "sparsity %",
                "MACs %",
                "params %",
                "error",
            ),
            tuple(rows),
        ),
    ]


# ---------------------------------------------------------------------- seed confirmation
def _mean_std(mean: float | None, std: float | None) -> str:
    return DASH if mean is None or std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def confirmation_blocks(
    confirmed: Mapping[float | None, ConfirmedChoice | None], k: int
) -> list[Block]:
    """The seed-confirmation stage: per distinct answer, every confirmed ticket's accuracy on
    each seed, mean ± std, and whether the extra seeds changed the single-seed choice."""
    answers = [c for c in confirmed.values() if c is not None]
    if not answers:
        return []
    blocks: list[Block] = [
        Heading("Seed confirmation", 2),
        Para(CONFIRM_RULE.format(k=k, extra=EXTRA_SEEDS)),
    ]
    changed = [c for c in answers if c.changed]
    if changed:
        moves = "; ".join(
            f"{budget_label(c.budget)}: {c.single.chosen.label if c.single else DASH} → "
            f"{c.chosen.ticket.label}"
            for c in changed
        )
        blocks.append(Para(f"The extra seeds changed the choice at {moves}."))
    else:
        blocks.append(Para("The extra seeds confirmed the single-seed choice at every budget."))
    # budgets with the same answer from the same confirmed tickets share one table
    seen: dict[tuple[str, ...], list[str]] = {}
    order: list[ConfirmedChoice] = []
    for c in answers:
        key = (c.chosen.ticket.label, *(s.ticket.label for s in c.candidates))
        if key not in seen:
            seen[key] = []
            order.append(c)
        seen[key].append(budget_label(c.budget))
    for c in order:
        key = (c.chosen.ticket.label, *(s.ticket.label for s in c.candidates))
        rows = []
        for s in c.candidates:
            mark = "chosen" if s is c.chosen else ("tied" if s in c.tied else "")
            if s is c.leader and s is not c.chosen:
                mark = "top mean, tied"
            rows.append(
                (
                    s.ticket.label,
                    fmt_pct(s.ticket.macs_frac, 1),
                    ", ".join(str(x) for x in s.seeds)
                    + (f" ({s.failed} failed)" if s.failed else ""),
                    " / ".join(fmt_pct(v) for v in s.val),
                    _mean_std(s.mean_val, s.std_val),
                    _mean_std(s.mean_test, s.std_test),
                    mark,
                )
            )
        blocks.append(Heading(", ".join(seen[key]), 3))
        blocks.append(
            Table(
                (
                    "ticket",
                    "MACs %",
                    "seeds",
                    "val_acc % per seed",
                    "val_acc % mean ± std",
                    "test_acc % mean ± std",
                    "",
                ),
                tuple(rows),
            )
        )
    return blocks
