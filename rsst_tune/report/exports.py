"""The physically pruned best tickets: exported and timed once (when the sweep ends, or on
`--measure`) into best_exports/, then only read back; and the report's table of them.

Each export writes model.pt and, unless `onnx=False` (`tune_main.py --no-onnx`), model.onnx
checked and timed in onnxruntime: about 5 s more per ticket on one CPU thread for the digits
models (two torch.onnx.export calls, dense and pruned)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rsst_tune.export import ExportReport


from rsst_tune import fileio
from rsst_tune.experiment.layout import BEST_EXPORTS_DIR, EXPORT_ERROR_FILE
from rsst_tune.experiment.select import budget_label, first_line
from rsst_tune.experiment.tickets import Ticket
from rsst_tune.report.document import Block, Heading, Para, Table

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- physical exports
# Each budget's best ticket is exported (and timed) once, when the sweep ends, into
# best_exports/<trial>_s<state>/ (model.pt, export.json; error.txt when it failed); the report
# renders those records and measures nothing unless asked (`rsst-tune report DIR --measure`).
ExportMode = Literal["recorded", "missing", "all"]
EXPORT_MODES: tuple[str, ...] = ("recorded", "missing", "all")
DASH = "—"


def export_name(ticket: Ticket) -> str:
    """A best ticket's export directory, relative to the report directory."""
    return f"{BEST_EXPORTS_DIR}/{ticket.trial_id}_s{ticket.state}"


def export_dir(out_dir: Path, ticket: Ticket) -> Path:
    """Where a best ticket's export is recorded."""
    return out_dir / export_name(ticket)


def distinct_bests(
    bests: Mapping[float | None, Ticket | None],
) -> list[tuple[Ticket, list[float | None]]]:
    """Each ticket that is best at some budget, once, with the budgets it is best at."""
    out: dict[tuple[str, int], tuple[Ticket, list[float | None]]] = {}
    for budget, ticket in bests.items():
        if ticket is not None:
            out.setdefault((ticket.trial_id, ticket.state), (ticket, []))[1].append(budget)
    return list(out.values())


def export_best(
    bests: Mapping[float | None, Ticket | None],
    out_dir: Path,
    *,
    replace: bool = False,
    onnx: bool = True,
) -> None:
    """Export and time each budget's best ticket (once per ticket) into its `export_dir`,
    with model.onnx when `onnx`.

    A ticket already recorded (export.json, or error.txt of a failed export) is skipped unless
    `replace`. A failure is logged and recorded in error.txt; it never raises (a failed ONNX
    export is recorded in export.json and shown in the report).
    """
    from rsst_tune.checkpoint import state_file
    from rsst_tune.export import MODEL_FILE, REPORT_FILE, export_checkpoint
    from rsst_tune.onnx_export import ONNX_FILE

    for ticket, _ in distinct_bests(bests):
        if ticket.checkpoint is None:
            continue
        dest = export_dir(out_dir, ticket)
        error = dest / EXPORT_ERROR_FILE
        if not replace and ((dest / REPORT_FILE).is_file() or error.is_file()):
            continue
        try:
            export_checkpoint(
                Path(ticket.checkpoint) / state_file(ticket.state), dest, overwrite=True, onnx=onnx
            )
        except Exception as exc:  # one ticket's export must not cost the report
            reason = f"{type(exc).__name__}: {first_line(str(exc))}"
            log.warning("could not export %s: %s", ticket.label, reason)
            for stale in (
                REPORT_FILE,
                MODEL_FILE,
                ONNX_FILE,
            ):  # an earlier export is replaced by the failure
                (dest / stale).unlink(missing_ok=True)
            fileio.write_text(error, reason + "\n")
        else:
            error.unlink(missing_ok=True)


def read_export(ticket: Ticket, out_dir: Path) -> ExportReport | str:
    """A best ticket's recorded export, or why there is none (nothing is measured)."""
    from rsst_tune.errors import ConfigError
    from rsst_tune.export import REPORT_FILE, read_report

    dest = export_dir(out_dir, ticket)
    if (dest / REPORT_FILE).is_file():
        try:
            return read_report(dest / REPORT_FILE)
        except ConfigError as exc:
            return f"unreadable record: {exc}"
    if (dest / EXPORT_ERROR_FILE).is_file():
        text = (dest / EXPORT_ERROR_FILE).read_text(encoding="utf-8", errors="replace")
        return f"export failed: {first_line(text)}"
    if ticket.checkpoint is None:
        return "no checkpoint kept for this state"
    return "not exported yet (`rsst-tune report DIR --measure` exports it)"


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
    where = export_name(ticket)
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
