"""The best-config report of a sweep: Markdown, self-contained HTML, PNG plots and JSON configs.

    write_report(experiment, out_dir) -> Path of report.md

Every (trial, state) pair is a candidate *ticket*: each pruning state is a real pruned model
with its own accuracy and cost, so a trial of S states offers S tickets. Tickets are chosen by
validation accuracy (`val_acc`); test accuracy is reported beside it and never used to choose.

One module per job:

* `select`: pure computation on records (`collect_tickets`, `pareto_front`,
  `choose_at_budget` / `best_at_budget` with the tie rule `TIE_RULE`, `reproduce_config`,
  `rank_trials`, `param_importances`, ...); the 95 % intervals come from `rsst_tune.stats`;
* `document`: a tiny document model (`Heading`, `Para`, `Code`, `Table`, `Image`), rendered
  to Markdown and to self-contained HTML;
* `sections`: the report's sections as blocks (and its plots);
* `exports`: the physically pruned best tickets, exported and timed once, then read back;
* `files`: `write_report`, which writes the files.
"""

from __future__ import annotations

from rsst_tune.experiment.layout import BEST_CONFIGS_DIR, BEST_EXPORTS_DIR
from rsst_tune.experiment.select import (
    BUDGETS,
    DEFAULT_BUDGET,
    TIE_RULE,
    Choice,
    Importances,
    best_at_budget,
    best_by_budget,
    choices_by_budget,
    choose_at_budget,
    headline_choice,
    headline_ticket,
    is_tied,
    param_importances,
    pareto_front,
    rank_trials,
    reproduce_config,
    state_history,
    ticket_front,
    within_budget,
)
from rsst_tune.experiment.tickets import SELECT_METRIC, Ticket, collect_tickets
from rsst_tune.report.exports import (
    EXPORT_MODES,
    ExportMode,
    distinct_bests,
    export_best,
    read_export,
)
from rsst_tune.report.files import (
    best_config_record,
    build_blocks,
    write_best_configs,
    write_report,
)
from rsst_tune.report.sections import fmt_latency, fmt_pct

__all__ = [
    "BEST_CONFIGS_DIR",
    "BEST_EXPORTS_DIR",
    "BUDGETS",
    "DEFAULT_BUDGET",
    "EXPORT_MODES",
    "SELECT_METRIC",
    "TIE_RULE",
    "Choice",
    "ExportMode",
    "Importances",
    "Ticket",
    "best_at_budget",
    "best_by_budget",
    "best_config_record",
    "build_blocks",
    "choices_by_budget",
    "choose_at_budget",
    "collect_tickets",
    "distinct_bests",
    "export_best",
    "fmt_latency",
    "fmt_pct",
    "headline_choice",
    "headline_ticket",
    "is_tied",
    "param_importances",
    "pareto_front",
    "rank_trials",
    "read_export",
    "reproduce_config",
    "state_history",
    "ticket_front",
    "within_budget",
    "write_best_configs",
    "write_report",
]
