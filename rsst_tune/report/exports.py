"""The physically pruned best tickets: exported and timed once (when the sweep ends, or on
`--measure`) into best_exports/, then only read back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rsst_tune.export import ExportReport


from rsst_tune import fileio
from rsst_tune.report.select import Ticket, first_line

log = logging.getLogger(__name__)

BEST_EXPORTS_DIR = "best_exports"

# ---------------------------------------------------------------------- physical exports
# Each budget's best ticket is exported (and timed) once, when the sweep ends, into
# best_exports/<trial>_s<state>/ (model.pt, export.json; error.txt when it failed); the report
# renders those records and measures nothing unless asked (`rsst-tune report DIR --measure`).
ExportMode = Literal["recorded", "missing", "all"]
EXPORT_MODES: tuple[str, ...] = ("recorded", "missing", "all")
EXPORT_ERROR_FILE = "error.txt"


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
    bests: Mapping[float | None, Ticket | None], out_dir: Path, *, replace: bool = False
) -> None:
    """Export and time each budget's best ticket (once per ticket) into its `export_dir`.

    A ticket already recorded (export.json, or error.txt of a failed export) is skipped unless
    `replace`. A failure is logged and recorded in error.txt; it never raises.
    """
    from rsst_tune.checkpoint import state_file
    from rsst_tune.export import MODEL_FILE, REPORT_FILE, export_checkpoint

    for ticket, _ in distinct_bests(bests):
        if ticket.checkpoint is None:
            continue
        dest = export_dir(out_dir, ticket)
        error = dest / EXPORT_ERROR_FILE
        if not replace and ((dest / REPORT_FILE).is_file() or error.is_file()):
            continue
        try:
            export_checkpoint(
                Path(ticket.checkpoint) / state_file(ticket.state), dest, overwrite=True
            )
        except Exception as exc:  # one ticket's export must not cost the report
            reason = f"{type(exc).__name__}: {first_line(str(exc))}"
            log.warning("could not export %s: %s", ticket.label, reason)
            for stale in (REPORT_FILE, MODEL_FILE):  # an earlier export is replaced by the failure
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
