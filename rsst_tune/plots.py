"""PNG plots of the best-config report (matplotlib, Agg canvas, no pyplot global state).

Each function takes plain numbers (the report computes them), writes one PNG and returns its
path. They build a `Figure` directly instead of going through `pyplot`, so plotting from a
Ray driver or a thread never touches a GUI backend or a global figure registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
OTHER_COLOR = "#9aa5b1"
FRONT_COLOR = "#d6336c"
MAX_LABELS = 15  # label front points only when there are few enough to read


Interval = tuple[float, float]  # (low, high), in the plot's units


@dataclass(frozen=True)
class Series:
    """One trial's per-state curve: x = state index, y values may be None (missing);
    `val_interval` holds each state's 95 % interval of val_acc (None: not known)."""

    label: str
    states: tuple[int, ...]
    val_acc: tuple[float | None, ...]
    test_acc: tuple[float | None, ...]
    sparsity: tuple[float | None, ...]
    macs_frac: tuple[float | None, ...]
    val_interval: tuple[Interval | None, ...] = ()


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _error_bars(
    ys: Sequence[float], intervals: Sequence[Interval | None], index: Sequence[int]
) -> tuple[list[int], list[list[float]]]:
    """The points of `index` that have an interval, and matplotlib's [below, above] lengths."""
    pairs = [(i, iv) for i in index if (iv := intervals[i]) is not None]
    below = [max(0.0, ys[i] - iv[0]) for i, iv in pairs]
    above = [max(0.0, iv[1] - ys[i]) for i, iv in pairs]
    return [i for i, _ in pairs], [below, above]


def pareto_plot(
    xs: Sequence[float],
    ys: Sequence[float],
    front: Sequence[int],
    labels: Sequence[str],
    *,
    x_label: str,
    path: Path,
    vlines: Sequence[float] = (),
    intervals: Sequence[Interval | None] = (),
    band: Interval | None = None,
) -> Path:
    """Scatter every ticket (x in %, y = accuracy in %), the front highlighted as a step line.

    `intervals` (one per point, None where unknown) are drawn as vertical error bars; `band`
    (the top ticket's interval) as a shaded strip: a ticket whose bar reaches into it is tied
    with the top ticket.
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    on_front = set(front)
    rest = [i for i in range(len(xs)) if i not in on_front]
    if band is not None:
        ax.axhspan(
            band[0], band[1], color=FRONT_COLOR, alpha=0.08, label="top ticket's 95 % interval"
        )
    if intervals:
        for index, color in ((rest, OTHER_COLOR), (list(front), FRONT_COLOR)):
            have, err = _error_bars(ys, intervals, index)
            if have:
                ax.errorbar(
                    [xs[i] for i in have],
                    [ys[i] for i in have],
                    yerr=err,
                    fmt="none",
                    ecolor=color,
                    elinewidth=0.8,
                    capsize=2,
                    alpha=0.55,
                    zorder=1,
                )
    ax.scatter(
        [xs[i] for i in rest],
        [ys[i] for i in rest],
        s=18,
        color=OTHER_COLOR,
        label="ticket (trial, state)",
        zorder=2,
    )
    ordered = sorted(front, key=lambda i: (xs[i], -ys[i]))
    fx = [xs[i] for i in ordered]
    fy = [ys[i] for i in ordered]
    ax.plot(fx, fy, drawstyle="steps-post", color=FRONT_COLOR, linewidth=1.2)
    ax.scatter(fx, fy, s=34, color=FRONT_COLOR, zorder=3, label="Pareto front")
    if len(ordered) <= MAX_LABELS:
        for i in ordered:
            ax.annotate(
                labels[i],
                (xs[i], ys[i]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color="#333333",
            )
    for v in vlines:
        ax.axvline(v, color="#868e96", linestyle=":", linewidth=0.9)
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation accuracy (%)" + (", 95 % interval" if intervals else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _points(states: Sequence[int], values: Sequence[float | None]) -> tuple[list[int], list[float]]:
    pairs = [(s, v) for s, v in zip(states, values, strict=True) if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def states_plot(series: Sequence[Series], path: Path) -> Path:
    """Accuracy (val solid with its 95 % interval shaded, test dashed) and sparsity / MACs
    fraction against the state index."""
    fig = Figure(figsize=(10.0, 4.0))
    acc_ax, sp_ax = fig.subplots(1, 2)
    shaded = False
    for k, s in enumerate(series):
        color = f"C{k % 10}"
        acc_ax.plot(*_points(s.states, s.val_acc), marker="o", color=color, label=s.label)
        acc_ax.plot(*_points(s.states, s.test_acc), marker=".", linestyle="--", color=color)
        band = [(x, iv) for x, iv in zip(s.states, s.val_interval, strict=False) if iv is not None]
        if band:
            shaded = True
            acc_ax.fill_between(
                [x for x, _ in band],
                [iv[0] for _, iv in band],
                [iv[1] for _, iv in band],
                color=color,
                alpha=0.12,
                linewidth=0,
            )
        sp_ax.plot(*_points(s.states, s.sparsity), marker="o", color=color, label=s.label)
        sp_ax.plot(*_points(s.states, s.macs_frac), marker=".", linestyle=":", color=color)
    acc_ax.set_title(
        "accuracy (%): val solid" + (" (95 % interval shaded)" if shaded else "") + ", test dashed",
        fontsize=9,
    )
    sp_ax.set_title("weight sparsity (%) solid, MACs kept (%) dotted", fontsize=9)
    for ax in (acc_ax, sp_ax):
        ax.set_xlabel("pruning state")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def importance_plot(
    by_objective: Sequence[tuple[str, Sequence[tuple[str, float]]]], path: Path, title: str
) -> Path:
    """Horizontal bars, one panel per objective; parameters in the first objective's order
    (most important on top), the same rows in every panel."""
    names: list[str] = []
    for _, values in by_objective:
        names += [n for n, _ in values if n not in names]
    panels = max(1, len(by_objective))
    fig = Figure(figsize=(4.2 * panels + 1.6, 0.45 * len(names) + 1.4))
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    rows = list(reversed(names))
    for ax, (objective, values) in zip(axes, by_objective, strict=False):
        got = dict(values)
        ax.barh(rows, [got.get(n, 0.0) for n in rows], color="#4263eb")
        ax.set_xlim(0.0, 1.0)  # each objective's importances sum to 1: panels compare
        ax.set_xlabel("importance (normalised)")
        ax.set_title(objective, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
