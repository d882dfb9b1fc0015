"""The best tickets' recorded exports, read back: each budget's best ticket is exported and
timed once (`rsst_tune.best_exports`) into `best_exports/<trial>_s<state>/` of the report
directory (model.pt, model.onnx, export.json; error.txt when the export failed). Nothing here
measures or imports torch: a record is `rsst_tune.export_record.ExportReport`.

    for ticket, budgets in distinct_bests(best_tickets(experiment)):
        record = read_export(ticket, out_dir)   # an ExportReport, or why there is none
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.layout import EXPORT_ERROR_FILE, EXPORT_RECORD_FILE, export_name
from rsst_tune.experiment.select import first_line
from rsst_tune.experiment.tickets import Ticket
from rsst_tune.export_record import ExportReport, read_report

__all__ = ["distinct_bests", "export_dir", "read_export"]


def export_dir(out_dir: Path, ticket: Ticket) -> Path:
    """Where a best ticket's export is recorded (`layout.export_name` under `out_dir`)."""
    return out_dir / export_name(ticket.trial_id, ticket.state)


def distinct_bests(
    bests: Mapping[float | None, Ticket | None],
) -> list[tuple[Ticket, list[float | None]]]:
    """Each ticket that is best at some budget, once, with the budgets it is best at."""
    out: dict[tuple[str, int], tuple[Ticket, list[float | None]]] = {}
    for budget, ticket in bests.items():
        if ticket is not None:
            out.setdefault((ticket.trial_id, ticket.state), (ticket, []))[1].append(budget)
    return list(out.values())


def read_export(ticket: Ticket, out_dir: Path) -> ExportReport | str:
    """A best ticket's recorded export, or why there is none (nothing is measured)."""
    dest = export_dir(out_dir, ticket)
    if (dest / EXPORT_RECORD_FILE).is_file():
        try:
            return read_report(dest / EXPORT_RECORD_FILE)
        except ConfigError as exc:
            return f"unreadable record: {exc}"
    if (dest / EXPORT_ERROR_FILE).is_file():
        text = (dest / EXPORT_ERROR_FILE).read_text(encoding="utf-8", errors="replace")
        return f"export failed: {first_line(text)}"
    if ticket.checkpoint is None:
        return "no checkpoint kept for this state"
    return "not exported yet (`rsst-tune report DIR --measure` exports it)"
