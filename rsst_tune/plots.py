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


@dataclass(frozen=True)
class Series:
    """One trial's per-state curve: x = state index, y values may be None (missing)."""

    label: str
    states: tuple[int, ...]
    val_acc: tuple[float | None, ...]
    test_acc: tuple[float | None, ...]
    sparsity: tuple[float | None, ...]
    macs_frac: tuple[float | None, ...]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def pareto_plot(
    xs: Sequence[float],
    ys: Sequence[float],
    front: Sequence[int],
    labels: Sequence[str],
    *,
    x_label: str,
    path: Path,
    vlines: Sequence[float] = (),
) -> Path:
    """Scatter every ticket (x in %, y = accuracy in %), the front highlighted as a step line."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    on_front = set(front)
    rest = [i for i in range(len(xs)) if i not in on_front]
    ax.scatter(
        [xs[i] for i in rest],
        [ys[i] for i in rest],
        s=18,
        color=OTHER_COLOR,
        label="ticket (trial, state)",
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
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _points(states: Sequence[int], values: Sequence[float | None]) -> tuple[list[int], list[float]]:
    pairs = [(s, v) for s, v in zip(states, values, strict=True) if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def states_plot(series: Sequence[Series], path: Path) -> Path:
    """Accuracy (val solid, test dashed) and sparsity / MACs fraction against the state index."""
    fig = Figure(figsize=(10.0, 4.0))
    acc_ax, sp_ax = fig.subplots(1, 2)
    for k, s in enumerate(series):
        color = f"C{k % 10}"
        acc_ax.plot(*_points(s.states, s.val_acc), marker="o", color=color, label=s.label)
        acc_ax.plot(*_points(s.states, s.test_acc), marker=".", linestyle="--", color=color)
        sp_ax.plot(*_points(s.states, s.sparsity), marker="o", color=color, label=s.label)
        sp_ax.plot(*_points(s.states, s.macs_frac), marker=".", linestyle=":", color=color)
    acc_ax.set_title("accuracy (%): val solid, test dashed", fontsize=9)
    sp_ax.set_title("weight sparsity (%) solid, MACs kept (%) dotted", fontsize=9)
    for ax in (acc_ax, sp_ax):
        ax.set_xlabel("pruning state")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def importance_plot(importances: Sequence[tuple[str, float]], path: Path, title: str) -> Path:
    """Horizontal bars, most important parameter on top."""
    fig = Figure(figsize=(6.4, 0.45 * len(importances) + 1.2))
    ax = fig.add_subplot()
    names = [n for n, _ in reversed(importances)]
    values = [v for _, v in reversed(importances)]
    ax.barh(names, values, color="#4263eb")
    ax.set_xlabel("importance (normalised)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
