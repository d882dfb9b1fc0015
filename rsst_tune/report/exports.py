"""The report's table of the physically pruned best tickets: their recorded exports (timed once
by the export step, `rsst_tune.best_exports`, when the sweep ends or on `--measure`), read back
with `rsst_tune.experiment.exports.read_export`. Nothing here exports or measures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rsst_tune.experiment.exports import distinct_bests, read_export
from rsst_tune.experiment.latency_budget import LatencyBudget, read_latency_table
from rsst_tune.experiment.layout import export_name
from rsst_tune.experiment.select import budget_label, first_line
from rsst_tune.experiment.tickets import Ticket
from rsst_tune.export_record import ExportReport, Latency
from rsst_tune.report.document import Block, Heading, Para, Table

DASH = "—"


# ---------------------------------------------------------------------- the report's table
def fmt_latency(median_ms: float, iqr_ms: float) -> str:
    """`1.130 (IQR 0.021)`: the median of the timed runs and their interquartile range."""
    return f"{median_ms:.3f} (IQR {iqr_ms:.3f})"


def md_link(text: str, href: str) -> str:
    """A table cell that is one relative link (`[text](href)`; the HTML renderer makes it an
    `<a href>`)."""
    return f"[{text}]({href})"


EXPORT_HEADERS = (
    "ticket",
    "best at",
    "device",
    "batch",
    "dense ms",
    "pruned ms",
    "speed-up",
    "MAC ratio",
    "onnxruntime dense ms",
    "onnxruntime pruned ms",
    "ONNX check",
    "ONNX",
    "export",
)


def onnx_cells(record: ExportReport, where: str) -> tuple[str, str]:
    """(the ONNX check, the link to model.onnx) of a record; dashes when ONNX was not asked."""
    if record.onnx is None and record.onnx_error is None:
        return DASH, DASH
    if record.onnx_file is None or record.onnx is None:
        return f"not written: {first_line(record.onnx_error or 'unknown reason')}", DASH
    check = f"max abs diff {record.onnx.max_abs_diff:.1e} (<= {record.onnx.atol:g})"
    name = Path(record.onnx_file).name
    return check, md_link(name, f"{where}/{name}")


def export_rows(
    ticket: Ticket, budgets: Sequence[float | None], record: ExportReport | str
) -> list[tuple[str, ...]]:
    """One row per measured device and batch size of a ticket (one row when there is none);
    onnxruntime's CPU latency beside PyTorch's on the CPU rows of the same batch size."""
    where = export_name(ticket.trial_id, ticket.state)
    head = (ticket.label, "; ".join(budget_label(b) for b in budgets))
    if isinstance(record, str):
        return [(*head, record, *[DASH] * (len(EXPORT_HEADERS) - 3))]
    ratio = f"{record.mac_ratio:.2f}x"
    check, link = onnx_cells(record, where)
    if not record.latency:
        return [(*head, "latency not measured", *[DASH] * 4, ratio, DASH, DASH, check, link, where)]
    ort = {lat.batch: lat for lat in record.onnx_latency}
    rows: list[tuple[str, ...]] = []
    for lat in record.latency:
        o = ort.get(lat.batch) if lat.device == "cpu" else None
        rows.append(
            (
                *head,
                lat.device,
                str(lat.batch),
                fmt_latency(lat.dense_ms, lat.dense_iqr_ms),
                fmt_latency(lat.pruned_ms, lat.pruned_iqr_ms),
                f"{lat.speedup:.2f}x",
                ratio,
                DASH if o is None else fmt_latency(o.dense_ms, o.dense_iqr_ms),
                DASH if o is None else fmt_latency(o.pruned_ms, o.pruned_iqr_ms),
                check,
                link,
                where,
            )
        )
    return rows


def export_blocks(bests: Mapping[float | None, Ticket | None], out_dir: Path) -> list[Block]:
    """The recorded latency of the physically pruned best tickets, beside their MAC ratio, and
    their ONNX files with onnxruntime's latency and check."""
    tickets = distinct_bests(bests)
    if not tickets:
        return []
    rows: list[tuple[str, ...]] = []
    repeats: set[int] = set()
    for ticket, budgets in tickets:
        record = read_export(ticket, out_dir)
        if not isinstance(record, str):
            repeats.update(lat.repeats for lat in (*record.latency, *record.onnx_latency))
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
            "`rsst_tune.pruning.exported.load_exported('best_exports/<ticket>/model.pt')`, or "
            "deploy its `model.onnx` (dynamic batch axis; onnxruntime's outputs checked against "
            "PyTorch's, max abs diff <= 1e-4; onnxruntime timed on CPU with torch's thread count, "
            "dense vs pruned ONNX). `tune_main.py --no-onnx` skips the ONNX files."
        ),
        Table(EXPORT_HEADERS, tuple(rows)),
    ]


# ---------------------------------------------------------------------- predicted latency
def _budget_sentence(budget: LatencyBudget) -> str:
    margin = (
        "its table's margin could not be read"
        if budget.margin is None
        else f"raised by its table's margin of {100 * budget.margin:.1f} %, the largest "
        "under-prediction among the tickets the table was calibrated on"
    )
    return (
        f" The sweep's latency budget, {budget.budget_ms:g} ms, admitted a trial when its last "
        f"state's predicted latency, {margin}, was within it; a ticket at an earlier state may "
        f"be over it. Best at {budget.label()}: of the tickets whose prediction so raised is "
        "within the budget, the one the report's rule at a MACs budget chooses. Within "
        "budget: whether the export measured within it."
    )


LATENCY_HEADERS = ("ticket", "best at", "val acc %", "MACs %", "predicted ms", "measured ms",
                   "error")  # fmt: skip


def _latency_at(record: ExportReport | str, batch: int) -> Latency | None:
    """The export's latency row at `batch` (its first device), or None."""
    if isinstance(record, str):
        return None
    return next((lat for lat in record.latency if lat.batch == batch), None)


def measured_ms(record: ExportReport | str, batch: int) -> float | None:
    """The export's measured pruned latency at `batch` (its first device): the fastest timed
    run, as a latency table's timings are (the median in records made before it was kept),
    or None."""
    lat = _latency_at(record, batch)
    if lat is None:
        return None
    return lat.pruned_min_ms if lat.pruned_min_ms is not None else lat.pruned_ms


def dense_measured_ms(record: ExportReport | str, batch: int) -> float | None:
    """The dense model's fastest run timed beside the export at `batch`, or None."""
    lat = _latency_at(record, batch)
    return None if lat is None else lat.dense_min_ms


def table_dense_ms(path: str | None) -> float | None:
    """The dense time in the sweep's latency table (None: no table, or unreadable)."""
    table = read_latency_table(path)
    return None if table is None else 1000.0 * table.dense_s


def _speed_sentence(table_ms: float | None, dense_ms: Sequence[float]) -> str:
    """How fast the machine ran when the exports were timed, against the table's build: a
    change moves every measured time alike, and a budget verdict with it."""
    if table_ms is None or not dense_ms:
        return ""
    now = min(dense_ms)
    change = 100 * (now - table_ms) / table_ms
    return (
        f" The dense model, timed beside these exports, ran in {now:.3f} ms, and in "
        f"{table_ms:.3f} ms when the latency table was built ({change:+.1f} %): a change in "
        "the machine's speed between the two moves every measured latency, and every error, "
        "by about as much."
    )


def within_budget(measured: float | None, budget: LatencyBudget | None) -> str:
    """The report's cell: did the export measure within the sweep's latency budget."""
    held = None if budget is None else budget.holds(measured)
    return DASH if held is None else "yes" if held else "no"


def latency_blocks(
    tickets: Sequence[Ticket], bests: Mapping[float | None, Ticket | None], out_dir: Path,
    batch: int | None, budget: LatencyBudget | None = None, budget_best: Ticket | None = None,
    table_ms: float | None = None,
) -> list[Block]:  # fmt: skip
    """The front by predicted latency beside the front by MACs, and each best ticket's
    predicted latency against the export's measured one (when the sweep had a latency table:
    `StateResult.latency_ms`); under a latency budget, the ticket chosen within it
    (`budget_best`) too, and whether each measured within the budget. `table_ms`: the
    table's dense time, set beside the dense model's time measured with the exports."""
    from rsst_tune.experiment.select import ticket_front

    if not any(t.metric("latency_ms") is not None for t in tickets):
        return []
    front = ticket_front([t for t in tickets if t.metric("latency_ms") is not None], "latency_ms")
    by_macs = {t.label for t in ticket_front(tickets, "macs_frac")}
    rows = tuple(
        (
            t.label,
            f"{100 * (t.val_acc or 0):.2f}",
            f"{100 * (t.macs_frac or 0):.1f}",
            f"{t.metric('latency_ms'):.3f}",
            "yes" if t.label in by_macs else "no",
        )
        for t in front
    )
    blocks: list[Block] = [
        Heading("Latency"),
        Para(
            "Predicted latency is the sweep's latency table's sum over blocks (each block timed "
            "alone at each kept width on the trials' device"
            + (f", batch {batch}" if batch else "")
            + "): the front of validation accuracy against it, and whether each ticket is also "
            "on the front by MACs."
        ),
        Table(("ticket", "val acc %", "MACs %", "predicted ms", "on the MACs front"), rows),
    ]
    compared = []
    denses: list[float] = []
    labelled = [(t, [budget_label(b) for b in budgets]) for t, budgets in distinct_bests(bests)]
    if budget is not None and budget_best is not None:
        same = next((labels for t, labels in labelled if t.label == budget_best.label), None)
        if same is None:
            labelled.append((budget_best, [budget.label()]))
        else:
            same.append(budget.label())
    for ticket, labels in labelled:
        predicted = ticket.metric("latency_ms")
        if predicted is None:
            continue
        record = read_export(ticket, out_dir)
        measured = measured_ms(record, batch or 1)
        dense = dense_measured_ms(record, batch or 1)
        denses += [] if dense is None else [dense]
        error = DASH if measured is None else f"{100 * (predicted - measured) / measured:+.1f} %"
        compared.append(
            (
                ticket.label,
                "; ".join(labels),
                f"{100 * (ticket.val_acc or 0):.2f}",
                f"{100 * (ticket.macs_frac or 0):.1f}",
                f"{predicted:.3f}",
                DASH if measured is None else f"{measured:.3f}",
                error,
                *(() if budget is None else (within_budget(measured, budget),)),
            )
        )
    if compared:
        blocks += [
            Para(
                "Each best ticket's predicted latency against the latency its export measured "
                "at the same batch size and torch threads (the physically smaller model, timed "
                "whole: its fastest run, as the table's timings are; a dash: not measured at "
                "that batch). The error is (predicted - measured) / measured."
                + ("" if budget is None else _budget_sentence(budget))
                + _speed_sentence(table_ms, denses)
            ),
            Table(
                LATENCY_HEADERS + (() if budget is None else ("within budget",)),
                tuple(compared),
            ),
        ]
    return blocks
