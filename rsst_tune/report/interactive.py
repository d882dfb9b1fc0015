"""The HTML report's interactive plots (plotly), built from the report's recorded data: the
tickets, the trial records and the parameter importances. Nothing here reads Ray or the disk.

    pareto_figure(tickets, cost)          val_acc vs a cost, hover and 95 % interval bars
    history_figure(experiment, tickets)   each objective per trial, best so far; hypervolume
    parallel_figure(experiment)           searched parameters, coloured by an objective
    importance_figure(importances)        importances per objective, warning when few trials
    interactive_blocks(blocks, ...)       the report's PNGs swapped for interactive `Plot`s
    plotly_js()                           plotly's JavaScript, inlined once in report.html

A figure that cannot be built costs only its picture: the PNG (or nothing) stays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.objectives import trial_value
from rsst_tune.experiment.records import TrialRecord
from rsst_tune.experiment.select import (
    BUDGETS,
    FRONT_AXES,
    Importances,
    front_leader,
    or_default,
    ticket_front,
)
from rsst_tune.experiment.tickets import Ticket, finite
from rsst_tune.report.document import Block, Heading, Image, Para, Plot

if TYPE_CHECKING:
    import plotly.graph_objects as go

log = logging.getLogger(__name__)

FRONT_COLOR = "#d6336c"
OTHER_COLOR = "#9aa5b1"
TEMPLATE = "plotly_white"
CONFIG = {"displaylogo": False, "responsive": True}  # no link to plotly's site
HV_REFERENCE = (0.0, 1.0)  # (val_acc, macs_frac): the dense model saves nothing
ABSENT = "absent"  # a conditional parameter a trial did not sample


def plotly_js() -> str:
    """plotly.js itself (about 4.8 MB), for one inline <script>: the report needs no network."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def plot_block(fig: go.Figure, title: str, div_id: str, fallback: Image | None = None) -> Plot:
    """A figure as a `Plot` block: its div and the script drawing it, without plotly.js. The
    heading above it names it; `title` is for the Markdown's pointer to it."""
    fig.update_layout(template=TEMPLATE)
    fragment = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG, validate=True
    )
    return Plot(str(fragment), title, fallback)


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def _acc_hover(t: Ticket, metric: str) -> str:
    value = t.metric(metric)
    if value is None:
        return "—"
    ci, n = t.interval(metric), t.split_size(metric)
    if ci is None or n is None:
        return f"{_pct(value, 2)} (no interval: split size not recorded)"
    return f"{_pct(value, 2)}, 95 % interval [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], n = {n}"


def hover_text(t: Ticket) -> str:
    """What hovering over a ticket says: identity, accuracies with intervals, cost, params."""
    params = "<br>".join(f"  {k} = {_fmt(v)}" for k, v in sorted(t.params.items()))
    macs, n_params = t.metric("macs"), t.metric("params")
    return "<br>".join(
        [
            f"<b>trial {t.trial_id}, state {t.state}</b> ({t.status})",
            f"val acc {_acc_hover(t, 'val_acc')}",
            f"test acc {_acc_hover(t, 'test_acc')}",
            f"MACs {_pct(t.macs_frac)} of dense" + ("" if macs is None else f" ({macs:,.0f})"),
            f"params {_pct(t.params_frac)} of dense"
            + ("" if n_params is None else f" ({n_params:,.0f})"),
            "searched parameters:" + ("<br>" + params if params else " none"),
        ]
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scaled(iv: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if iv is None else (100 * iv[0], 100 * iv[1])


def pareto_figure(tickets: Sequence[Ticket], cost: str) -> go.Figure | None:
    """Every ticket's val_acc against `cost` (a fraction of the dense model), the front as a
    step line, each point's 95 % interval as an error bar and the front leader's as a band."""
    import plotly.graph_objects as go

    usable = [t for t in tickets if t.val_acc is not None and t.metric(cost) is not None]
    if not usable:
        return None
    front = ticket_front(usable, cost)
    leader = front_leader(front)
    on_front = {id(t) for t in front}
    name = dict(FRONT_AXES)[cost]
    fig = go.Figure()
    groups = (
        ("ticket (trial, state)", [t for t in usable if id(t) not in on_front], OTHER_COLOR, 7),
        ("Pareto front", front, FRONT_COLOR, 10),
    )
    for label, group, color, size in groups:
        if not group:
            continue
        ys = [100 * or_default(t.val_acc, 0.0) for t in group]
        ivs = [_scaled(t.interval("val_acc")) for t in group]
        fig.add_trace(
            go.Scatter(
                x=[100 * or_default(t.metric(cost), 0.0) for t in group],
                y=ys,
                mode="lines+markers" if group is front else "markers",
                line={"shape": "hv", "color": color, "width": 1.5},
                marker={"color": color, "size": size},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [0.0 if iv is None else iv[1] - y for iv, y in zip(ivs, ys)],
                    "arrayminus": [0.0 if iv is None else y - iv[0] for iv, y in zip(ivs, ys)],
                    "color": color,
                    "thickness": 1,
                    "width": 3,
                },
                name=label,
                text=[hover_text(t) for t in group],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    band = leader.interval("val_acc") if leader is not None else None
    if band is not None:
        fig.add_hrect(
            y0=100 * band[0],
            y1=100 * band[1],
            fillcolor=FRONT_COLOR,
            opacity=0.08,
            line_width=0,
            annotation_text="top ticket's 95 % interval",
            annotation_position="bottom left",
        )
    if cost == "macs_frac":
        for b in BUDGETS:
            if b is not None:
                fig.add_vline(x=100 * b, line={"dash": "dot", "color": "#868e96", "width": 1})
    fig.update_layout(
        xaxis_title=f"{name} kept (% of dense)",
        yaxis_title="validation accuracy (%), 95 % interval",
        legend={"orientation": "h", "y": -0.18},
        height=480,
        hovermode="closest",
    )
    return fig


def trial_values(experiment: Experiment) -> list[tuple[TrialRecord, list[float | None]]]:
    """Each trial (in recorded order: Ray's trial ids count up) with its value under each
    objective, as the sweep told Optuna (`trial_value`)."""
    objectives = experiment.objectives
    return [(t, [trial_value(o, t.states) for o in objectives]) for t in experiment.trials]


def hypervolume(tickets: Sequence[Ticket]) -> float:
    """The area the tickets dominate in (val_acc up, macs_frac down) above HV_REFERENCE: the
    union of [macs, 1] x [0, val] over the front, in [0, 1]."""
    front = sorted(ticket_front(tickets, "macs_frac"), key=lambda t: or_default(t.macs_frac, 1.0))
    ref_acc, ref_macs = HV_REFERENCE
    area, best = 0.0, ref_acc
    points = [
        (min(ref_macs, or_default(t.macs_frac, ref_macs)), or_default(t.val_acc, 0.0))
        for t in front
    ]
    for i, (macs, acc) in enumerate(points):
        best = max(best, acc)
        nxt = points[i + 1][0] if i + 1 < len(points) else ref_macs
        area += max(0.0, nxt - macs) * max(0.0, best - ref_acc)
    return area


def _best_so_far(values: Sequence[float | None], maximize: bool) -> list[float | None]:
    out: list[float | None] = []
    best: float | None = None
    for v in values:
        if v is not None and (best is None or (v > best if maximize else v < best)):
            best = v
        out.append(best)
    return out


def history_figure(experiment: Experiment, tickets: Sequence[Ticket]) -> go.Figure | None:
    """One row per objective (each trial's value and the best so far), then the hypervolume
    of all tickets reported up to each trial."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = trial_values(experiment)
    objectives = experiment.objectives
    if not rows or not objectives:
        return None
    titles = [f"{o.key} ({o.mode}) per trial" for o in objectives]
    titles.append("hypervolume of val_acc × MACs saved (all tickets so far)")
    fig = make_subplots(
        rows=len(titles), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.08
    )
    xs = list(range(1, len(rows) + 1))
    labels = [f"trial {t.trial_id} ({t.status})" for t, _ in rows]
    for k, o in enumerate(objectives):
        values = [v[k] for _, v in rows]
        scale = 100.0 if o.metric.endswith(("_acc", "_frac")) else 1.0
        shown = [None if v is None else scale * v for v in values]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=shown,
                mode="markers",
                marker={"color": "#4263eb", "size": 8},
                name=o.key,
                text=labels,
                hovertemplate="%{text}<br>" + o.key + " %{y:.4g}<extra></extra>",
                showlegend=False,
            ),
            row=k + 1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_best_so_far(shown, o.mode == "max"),
                mode="lines",
                line={"shape": "hv", "color": FRONT_COLOR},
                name="best so far",
                showlegend=k == 0,
                hovertemplate="best so far %{y:.4g}<extra></extra>",
            ),
            row=k + 1,
            col=1,
        )
        fig.update_yaxes(title_text=o.key + (" (%)" if scale == 100.0 else ""), row=k + 1, col=1)
    by_trial: dict[str, list[Ticket]] = {}
    for t in tickets:
        by_trial.setdefault(t.trial_id, []).append(t)
    seen: list[Ticket] = []
    volumes = []
    for trial, _ in rows:
        seen += by_trial.get(str(trial.trial_id), [])
        volumes.append(hypervolume(seen))
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=volumes,
            mode="lines+markers",
            line={"shape": "hv", "color": "#2b8a3e"},
            name="hypervolume",
            text=labels,
            hovertemplate="after %{text}<br>hypervolume %{y:.4f}<extra></extra>",
        ),
        row=len(titles),
        col=1,
    )
    fig.update_yaxes(title_text="hypervolume", row=len(titles), col=1)
    fig.update_xaxes(title_text="trial (in the order Ray created them)", row=len(titles), col=1)
    fig.update_xaxes(tick0=1, dtick=max(1, round(len(rows) / 10)))  # whole trials only
    fig.update_layout(height=260 * len(titles) + 80, legend={"orientation": "h", "y": -0.08})
    return fig


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and finite(v) is not None


def _log_params(study: Any) -> set[str]:
    """Parameters the study samples on a log scale (read from its recorded distributions)."""
    out: set[str] = set()
    try:
        for t in study.get_trials(deepcopy=False):
            out |= {n for n, d in t.distributions.items() if getattr(d, "log", False)}
    except Exception:  # no study, or one that cannot be read: linear axes
        return set()
    return out


def _dimension(name: str, values: Sequence[Any], log_scale: bool) -> dict[str, Any]:
    """One parallel-coordinates axis: numbers as they are (log10 for log-sampled ones), a
    conditional parameter's absence below them; anything else as categories (ints, labelled)."""
    numbers = [float(v) for v in values if _is_number(v)]
    if len(numbers) == sum(v is not None for v in values) and numbers:
        use_log = log_scale and min(numbers) > 0
        tr: Callable[[float], float] = math.log10 if use_log else float
        lo, hi = tr(min(numbers)), tr(max(numbers))
        span = (hi - lo) or 1.0
        absent = lo - 0.15 * span
        has_absent = len(numbers) < len(values)
        dim: dict[str, Any] = {
            "label": name + (" (log)" if use_log else ""),
            "values": [absent if v is None else tr(float(v)) for v in values],
            "range": [absent if has_absent else lo, hi if hi > lo else lo + 1.0],
            "tickformat": ".3~g",
        }
        if use_log or has_absent:
            ticks = [lo + span * i / 4 for i in range(5)] if hi > lo else [lo]
            dim["tickvals"] = ([absent] if has_absent else []) + ticks
            dim["ticktext"] = ([ABSENT] if has_absent else []) + [
                f"{10**x if use_log else x:.3g}" for x in ticks
            ]
        return dim
    labels = sorted({ABSENT if v is None else _fmt(v) for v in values})
    index = {label: i for i, label in enumerate(labels)}
    return {
        "label": name,
        "values": [index[ABSENT if v is None else _fmt(v)] for v in values],
        "tickvals": list(range(len(labels))),
        "ticktext": labels,
        "range": [0, max(1, len(labels) - 1)],
    }


def parallel_figure(experiment: Experiment) -> go.Figure | None:
    """One line per trial with a value for every objective: its searched parameters (categories
    mapped to ints, labelled) then the objectives; coloured by an objective (buttons switch)."""
    import plotly.graph_objects as go

    rows = [(t, v) for t, v in trial_values(experiment) if v and all(x is not None for x in v)]
    names = sorted({n for t, _ in rows for n in t.params})
    if len(rows) < 2 or not names:
        return None
    logs = _log_params(experiment.study)
    dims = [_dimension(n, [t.params.get(n) for t, _ in rows], n in logs) for n in names]
    objectives = experiment.objectives
    columns = [[v[k] for _, v in rows] for k in range(len(objectives))]
    for o, col in zip(objectives, columns):
        dims.append(_dimension(f"{o.key} ({o.mode})", col, False))

    def line(k: int) -> dict[str, Any]:
        o = objectives[k]
        scale = "Viridis" if o.mode == "max" else "Viridis_r"  # yellow = better
        return {
            "color": columns[k],
            "colorscale": scale,
            "showscale": True,
            "colorbar": {"title": {"text": o.key}},
        }

    # the colour bar right of the last axis, not over its tick labels
    # labels slanted: a space's many parameters still read side by side
    fig = go.Figure(
        go.Parcoords(dimensions=dims, line=line(0), domain={"x": [0.0, 0.9]}, labelangle=-20)
    )
    if len(objectives) > 1:
        buttons = [
            {
                "label": f"colour by {o.key}",
                "method": "restyle",
                "args": [{"line": [line(k)]}],
            }
            for k, o in enumerate(objectives)
        ]
        fig.update_layout(
            updatemenus=[
                {
                    "type": "buttons",
                    "direction": "right",
                    "x": 0,
                    "y": 1.4,
                    "xanchor": "left",
                    "buttons": buttons,
                }
            ]
        )
    fig.update_layout(height=540, margin={"l": 130, "r": 40, "t": 150, "b": 40})
    return fig


def importance_figure(imp: Importances) -> go.Figure | None:
    """One bar panel per objective, the same parameters in every panel (the first objective's
    most important on top); the warning, when few trials, in the figure itself."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if imp.values is None:
        return None
    by_objective = imp.by_objective or (("the objective", imp.values),)
    names: list[str] = []
    for _, values in by_objective:
        names += [n for n, _ in values if n not in names]
    rows = list(reversed(names))
    fig = make_subplots(
        rows=1,
        cols=len(by_objective),
        shared_yaxes=True,
        subplot_titles=[name for name, _ in by_objective],
    )
    for k, (_, values) in enumerate(by_objective):
        got = dict(values)
        fig.add_trace(
            go.Bar(
                x=[got.get(n, 0.0) for n in rows],
                y=rows,
                orientation="h",
                marker={"color": "#4263eb"},
                showlegend=False,
                hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            ),
            row=1,
            col=k + 1,
        )
        fig.update_xaxes(range=[0, 1], title_text="importance (normalised)", row=1, col=k + 1)
    if imp.warning is not None:
        fig.add_annotation(
            text="⚠ " + imp.warning,
            xref="paper",
            yref="paper",
            x=0,
            y=1,
            yanchor="bottom",
            yshift=28,
            showarrow=False,
            xanchor="left",
            font={"color": "#c92a2a", "size": 12},
        )
    top = 90 if imp.warning is not None else 50
    fig.update_layout(height=top + 40 * len(rows) + 90, margin={"t": top, "b": 50})
    return fig


def _try_figure(name: str, make: Callable[[], go.Figure | None]) -> go.Figure | None:
    """Build one figure; a failure costs the interactive picture, not the report."""
    try:
        return make()
    except Exception as exc:  # odd data must not stop the report; the PNG and tables stand
        log.warning("interactive plot %s not built: %s: %s", name, type(exc).__name__, exc)
        return None


def search_blocks(experiment: Experiment, tickets: Sequence[Ticket]) -> list[Block]:
    """The search's progress: optimization history and hypervolume, parallel coordinates."""
    blocks: list[Block] = [
        Heading("Search history"),
        Para(
            "Each objective's value per trial (as the sweep told Optuna) with the best so far, "
            "and the hypervolume of every ticket reported up to that trial: the area of "
            "(val_acc × MACs saved) the tickets dominate, with the dense model at 0. Below, "
            "one line per trial across its searched parameters (categories as labelled ticks; "
            f"`{ABSENT}` where a conditional parameter was not sampled), then its objectives; "
            "drag along an axis to filter."
        ),
    ]
    history = _try_figure("history", lambda: history_figure(experiment, tickets))
    blocks.append(Heading("Optimization history and hypervolume", 3))
    if history is None:
        blocks.append(Para("No trial has reported a state yet: no history to show."))
    else:
        blocks.append(plot_block(history, "Optimization history", "plot-history"))
    parallel = _try_figure("parallel", lambda: parallel_figure(experiment))
    blocks.append(Heading("Parallel coordinates", 3))
    if parallel is None:
        blocks.append(
            Para(
                "Parallel coordinates need ≥ 2 trials with a value for every objective and a "
                "searched parameter."
            )
        )
    else:
        blocks.append(plot_block(parallel, "Parallel coordinates", "plot-parallel"))
    return blocks


def interactive_blocks(
    blocks: Sequence[Block], tickets: Sequence[Ticket], importances: Importances
) -> list[Block]:
    """`blocks` with the Pareto and importance PNGs swapped for interactive plots (each keeps
    its PNG as the Markdown fallback); a figure that cannot be built keeps its PNG."""
    makers: Mapping[str, tuple[str, Callable[[], go.Figure | None]]] = {
        f"pareto_{name.lower()}.png": (
            f"Validation accuracy vs {name} fraction",
            lambda cost=cost: pareto_figure(tickets, cost),
        )
        for cost, name in FRONT_AXES
    } | {"importances.png": ("Parameter importances", lambda: importance_figure(importances))}
    out: list[Block] = []
    for b in blocks:
        if isinstance(b, Image) and b.path.name in makers:
            title, make = makers[b.path.name]
            fig = _try_figure(b.path.name, make)
            if fig is not None:
                out.append(plot_block(fig, title, "plot-" + b.path.stem.replace("_", "-"), b))
                continue
        out.append(b)
    return out
