"""Writing a report: report.md, report.html, PNG plots, best_config.json and best_configs/.

report.md shows the PNG plots; report.html shows interactive plotly plots instead (and the
search history, which has no PNG), plotly's JavaScript inlined once: it needs no network."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rsst_tune import fileio
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.exports import read_export
from rsst_tune.experiment.latency_budget import LatencyBudget, best_within_latency, latency_budget
from rsst_tune.experiment.layout import BEST_CONFIGS_DIR, SWEEP_LOG
from rsst_tune.experiment.seeds import CONFIRM_RULE, EXTRA_SEEDS, SeedStats, best_choices
from rsst_tune.experiment.select import (
    TIE_RULE,
    Choice,
    budget_label,
    budget_slug,
    headline_choice,
    jsonable,
    param_importances,
    quiet_log,
    reproduce_config,
    state_history,
)
from rsst_tune.experiment.tickets import SELECT_METRIC, Ticket, collect_tickets
from rsst_tune.report.document import Block, Plot, to_html, to_markdown
from rsst_tune.report.exports import (
    dense_measured_ms,
    latency_blocks,
    measured_ms,
    table_dense_ms,
)
from rsst_tune.report.interactive import interactive_blocks, plotly_js, search_blocks
from rsst_tune.report.sections import (
    budget_blocks,
    confirmation_blocks,
    export_blocks,
    importance_blocks,
    pareto_blocks,
    run_command,
    states_blocks,
    summary_blocks,
    trials_blocks,
)

log = logging.getLogger(__name__)

REPORT_LOG = "report.log"  # where third-party chatter goes when the experiment has no log dir


def _write_json(path: Path, data: Any) -> None:
    fileio.write_text(
        path,
        json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
        + "\n",
    )


def write_best_configs(
    out_dir: Path, bests: Mapping[float | None, Ticket | None]
) -> dict[float | None, str]:
    """One plain TrialConfig JSON per budget that has a ticket; returns their relative paths."""
    folder = out_dir / BEST_CONFIGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[float | None, str] = {}
    for budget, ticket in bests.items():
        path = folder / f"{budget_slug(budget)}.json"
        if ticket is None:
            path.unlink(missing_ok=True)  # a stale answer from an earlier report would mislead
            continue
        _write_json(path, reproduce_config(ticket))
        files[budget] = f"{BEST_CONFIGS_DIR}/{path.name}"
    return files


def _ticket_summary(ticket: Ticket) -> dict[str, Any]:
    """A ticket's identity, accuracies with their 95 % intervals and split sizes, and cost."""
    return {
        "trial_id": ticket.trial_id,
        "state": ticket.state,
        "val_acc": ticket.val_acc,
        "val_size": ticket.split_size("val_acc"),
        "val_interval": ticket.interval("val_acc"),
        "test_acc": ticket.test_acc,
        "test_size": ticket.split_size("test_acc"),
        "test_interval": ticket.interval("test_acc"),
        "macs_frac": ticket.macs_frac,
        "params_frac": ticket.params_frac,
    }


def _within_latency(
    ticket: Ticket, budget: LatencyBudget, measured: float | None
) -> dict[str, Any]:
    """A ticket's latency against the sweep's budget, for best_config.json."""
    predicted = ticket.metric("latency_ms")
    return {
        "predicted_ms": predicted,
        "upper_ms": None if predicted is None else budget.upper_ms(predicted),
        "measured_ms": measured,
        "measured_within_budget": budget.holds(measured),
    }


def best_config_record(
    experiment: Experiment,
    tickets: Sequence[Ticket],
    headline: tuple[float | None, Choice | None],
    files: Mapping[float | None, str],
) -> dict[str, Any]:
    """best_config.json: the headline ticket, its metrics and the config reproducing it, the
    tickets tied with the top val_acc (`tied`, in the order of the rule) and the `rule`."""
    budget, choice = headline
    record: dict[str, Any] = {
        "experiment": experiment.name,
        "selected_by": SELECT_METRIC,
        "rule": TIE_RULE,
        "budget": budget,
        "budget_label": budget_label(budget),
    }
    if choice is None:
        return {
            **record,
            "trial_id": None,
            "state": None,
            "config": None,
            "tied": [],
            "reason": "no trial reported a state with a validation accuracy",
        }
    ticket = choice.chosen
    config_file = files.get(budget, f"{BEST_CONFIGS_DIR}/{budget_slug(budget)}.json")
    summary = _ticket_summary(ticket)
    return {
        **record,
        "trial_id": ticket.trial_id,
        "state": ticket.state,
        "status": ticket.status,
        "metrics": dict(ticket.metrics),
        "val_interval": summary["val_interval"],
        "test_interval": summary["test_interval"],
        "params": dict(ticket.params),
        "config": reproduce_config(ticket),
        "config_file": config_file,
        "command": run_command(config_file),
        "leader": _ticket_summary(choice.leader),
        "tied": [
            {**_ticket_summary(t), "chosen": t is ticket, "top_val": t is choice.leader}
            for t in choice.tied
        ],
        "expected_states": [
            {"state": t.state, "val_acc": t.val_acc, "test_acc": t.test_acc}
            for t in state_history(tickets, ticket)
        ],
    }


class _ChatterHandler(logging.FileHandler):
    """Third-party chatter to a log file; a write that fails loses the line, quietly (it is
    not worth a traceback on the terminal)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def report_logging(experiment: Experiment, out_dir: Path) -> Iterator[None]:
    """Third-party chatter while the report is computed (Optuna's importance warnings, on
    `select.quiet_log`) goes to the experiment's sweep.log, or `out_dir/report.log` when the
    experiment directory is not here; never to the terminal."""
    exp_dir = Path(experiment.path) if experiment.path else None
    path = exp_dir / SWEEP_LOG if exp_dir is not None and exp_dir.is_dir() else out_dir / REPORT_LOG
    handler = _ChatterHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = quiet_log.level, quiet_log.propagate
    quiet_log.addHandler(handler)
    quiet_log.setLevel(logging.INFO)
    quiet_log.propagate = False
    try:
        yield
    finally:
        quiet_log.removeHandler(handler)
        quiet_log.setLevel(saved[0])
        quiet_log.propagate = saved[1]
        handler.close()


def build_blocks(experiment: Experiment, out_dir: Path) -> tuple[list[Block], dict[str, Any]]:
    """Compute everything, write the plots and configs; return the document and best_config.

    The best tickets' exports are only read from best_exports/ (the export step,
    `rsst_tune.best_exports.export_best`, records them); nothing is measured.
    """
    tickets = collect_tickets(experiment)
    answer = best_choices(tickets, experiment.confirmation)
    choices, confirmed, bests = answer.choices, answer.confirmed, answer.bests
    headline = headline_choice(choices, tickets)
    files = write_best_configs(out_dir, bests)
    lat_budget = latency_budget(experiment)
    lat_best = best_within_latency(tickets, lat_budget)
    table_ms = table_dense_ms(experiment.latency_table)
    with report_logging(experiment, out_dir):
        importances = param_importances(experiment.study, experiment.objectives)
    blocks = [
        *summary_blocks(experiment, tickets, headline),
        *pareto_blocks(tickets, out_dir),
        *budget_blocks(tickets, choices, files, out_dir),
        *confirmation_blocks(confirmed, answer.k),
        *export_blocks(bests, out_dir),
        *latency_blocks(
            tickets, bests, out_dir, experiment.latency_batch, lat_budget, lat_best, table_ms
        ),
        *states_blocks(tickets, out_dir),
        *search_blocks(experiment, tickets),
        *importance_blocks(importances, out_dir),
        *trials_blocks(experiment),
    ]
    blocks = interactive_blocks(blocks, tickets, importances)
    best = best_config_record(experiment, tickets, headline, files)
    if headline[1] is not None and headline[1].chosen.metric("latency_ms") is not None:
        ticket = headline[1].chosen
        batch = experiment.latency_batch or 1
        predicted = ticket.metric("latency_ms")
        record = read_export(ticket, out_dir)
        measured = measured_ms(record, batch)
        best["latency"] = {
            "batch": batch,
            "predicted_ms": predicted,
            "measured_ms": measured,
            # the machine's speed at the export against the table's build
            "dense_ms": {"table": table_ms, "measured": dense_measured_ms(record, batch)},
        }
        if lat_budget is not None and predicted is not None:
            best["latency"].update(
                _within_latency(ticket, lat_budget, measured),
                budget_ms=lat_budget.budget_ms,
                margin=lat_budget.margin,
                budget_best=None
                if lat_best is None
                else {
                    "trial_id": lat_best.trial_id,
                    "state": lat_best.state,
                    "val_acc": lat_best.val_acc,
                    "macs_frac": lat_best.macs_frac,
                    **_within_latency(
                        lat_best, lat_budget, measured_ms(read_export(lat_best, out_dir), batch)
                    ),
                    "config": reproduce_config(lat_best),
                },
            )
    chosen = confirmed.get(headline[0])
    if chosen is not None and headline[1] is not None:
        best["seeds"] = _seeds_record(chosen.chosen)
        best["rule"] = f"{TIE_RULE} {CONFIRM_RULE.format(k=answer.k, extra=EXTRA_SEEDS)}"
    return blocks, best


def _seeds_record(stats: SeedStats) -> dict[str, Any]:
    """best_config.json's `seeds`: the chosen ticket's accuracy on every seed."""
    return {
        "seeds": list(stats.seeds),
        "val_acc": list(stats.val),
        "test_acc": list(stats.test),
        "val_acc_mean": stats.mean_val,
        "val_acc_std": stats.std_val,
        "test_acc_mean": stats.mean_test,
        "test_acc_std": stats.std_test,
        "val_interval_of_mean": stats.interval(),
        "failed_runs": stats.failed,
    }


def write_report(experiment: Experiment, out_dir: str | Path) -> Path:
    """Write report.md, report.html, PNG plots, best_config.json and best_configs/ to out_dir.

    The best tickets' exports are only read from best_exports/ (nothing is measured: the
    export step, `rsst_tune.best_exports.export_best`, records them first when asked).
    Returns the path of report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks, best = build_blocks(experiment, out)
    _write_json(out / "best_config.json", best)
    script = plotly_js() if any(isinstance(b, Plot) for b in blocks) else ""
    title = f"rsst-tune report: {experiment.name}"
    fileio.write_text(out / "report.html", to_html(blocks, title, script=script))
    md = out / "report.md"
    fileio.write_text(md, to_markdown(blocks))
    log.info("report written to %s", md)
    return md
