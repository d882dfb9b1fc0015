"""The export step: each budget's best ticket physically pruned, exported and timed once into
the report directory's best_exports/, when a sweep ends (the tickets without a record) or on
`rsst-tune report DIR --measure` (every one again). The report (`rsst_tune.report`) then only
reads those records back (`rsst_tune.experiment.exports.read_export`).

    export_best(experiment, out_dir)                  # the missing ones (the sweep's end)
    export_best(experiment, out_dir, replace=True)    # every one again (--measure)
    write_report(experiment, out_dir)                 # renders them

The best tickets are the report's own (`rsst_tune.experiment.seeds.best_tickets`: the
seed-confirmed choice where there is one), so what is exported is what the report shows; a
sweep under `--latency-budget` has the ticket chosen within it exported too
(`rsst_tune.experiment.latency_budget`).
A sweep with a latency table (`rsst_tune.latency_model`) has its tickets timed as the table
was: at the table's batch size too and with its torch threads, so that the report compares the
prediction with a measurement of the same setting. Each export writes model.pt, export.json
and, unless `onnx=False` (`tune_main.py --no-onnx`), model.onnx checked and timed in
onnxruntime: about 5 s more per ticket on one CPU thread for the digits models (two
torch.onnx.export calls, dense and pruned).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from rsst_tune import fileio
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.exports import distinct_bests, export_dir
from rsst_tune.experiment.latency_budget import best_within_latency, latency_budget
from rsst_tune.experiment.layout import (
    EXPORT_ERROR_FILE,
    EXPORT_MODEL_FILE,
    EXPORT_ONNX_FILE,
    EXPORT_RECORD_FILE,
)
from rsst_tune.experiment.seeds import best_tickets
from rsst_tune.experiment.select import first_line
from rsst_tune.experiment.tickets import Ticket

log = logging.getLogger(__name__)

__all__ = ["EXPORT_MODES", "ExportMode", "export_best"]

# What a sweep's finish or `rsst-tune report` asks of the export step before rendering:
# "recorded" exports nothing (the report renders the records), "missing" exports the best
# tickets without a record (the sweep's end), "all" exports every best ticket again
# (`--measure`): `export_best(..., replace=mode == "all")` unless "recorded".
ExportMode = Literal["recorded", "missing", "all"]
EXPORT_MODES: tuple[str, ...] = ("recorded", "missing", "all")


def export_best(
    source: Experiment | Mapping[float | None, Ticket | None],
    out_dir: str | Path,
    *,
    replace: bool = False,
    onnx: bool = True,
) -> None:
    """Export and time each budget's best ticket (once per ticket) into its `export_dir`
    under `out_dir`, with model.onnx when `onnx`. `source` is an experiment (its
    `best_tickets`) or the best ticket per budget.

    A ticket already recorded (export.json, or error.txt of a failed export) is skipped unless
    `replace`. A failure is logged and recorded in error.txt; it never raises (a failed ONNX
    export is recorded in export.json and shown in the report).
    """
    # torch and the models only when exporting: choosing and checking a mode stays light
    from rsst_tune.checkpoint import state_file
    from rsst_tune.export import export_checkpoint

    bests = best_tickets(source) if isinstance(source, Experiment) else source
    batch_sizes, threads = _timing(source)
    for ticket in _to_export(source, bests):
        if ticket.checkpoint is None:
            continue
        dest = export_dir(Path(out_dir), ticket)
        error = dest / EXPORT_ERROR_FILE
        if not replace and ((dest / EXPORT_RECORD_FILE).is_file() or error.is_file()):
            continue
        try:
            with _torch_threads(threads):
                export_checkpoint(
                    Path(ticket.checkpoint) / state_file(ticket.state), dest, overwrite=True,
                    onnx=onnx, batch_sizes=batch_sizes,
                )  # fmt: skip
        except Exception as exc:  # one ticket's export must not cost the others or the report
            reason = f"{type(exc).__name__}: {first_line(str(exc))}"
            log.warning("could not export %s: %s", ticket.label, reason)
            # an earlier export is replaced by the failure
            for stale in (EXPORT_RECORD_FILE, EXPORT_MODEL_FILE, EXPORT_ONNX_FILE):
                (dest / stale).unlink(missing_ok=True)
            fileio.write_text(error, reason + "\n")
        else:
            error.unlink(missing_ok=True)


def _to_export(source: object, bests: Mapping[float | None, Ticket | None]) -> list[Ticket]:
    """Each best ticket once, and a sweep's ticket chosen within its latency budget."""
    tickets = [ticket for ticket, _ in distinct_bests(bests)]
    if isinstance(source, Experiment):
        chosen = best_within_latency(source.tickets(), latency_budget(source))
        if chosen is not None and chosen.label not in {t.label for t in tickets}:
            tickets.append(chosen)
    return tickets


DEFAULT_BATCHES = (1, 64)  # `export_checkpoint`'s


def _timing(source: object) -> tuple[tuple[int, ...], int | None]:
    """The batch sizes and torch threads the exports are timed with: the defaults, plus the
    latency table's batch and its threads when the sweep has a readable table."""
    from rsst_tune.errors import ConfigError
    from rsst_tune.latency_model import LatencyTable

    path = source.latency_table if isinstance(source, Experiment) else None
    if not path or not Path(path).is_file():
        return DEFAULT_BATCHES, None
    try:
        table = LatencyTable.load(path)
    except ConfigError as exc:
        log.warning("exports timed without the latency table's settings: %s", exc)
        return DEFAULT_BATCHES, None
    return tuple(sorted({*DEFAULT_BATCHES, table.batch})), table.threads


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
