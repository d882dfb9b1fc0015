"""The best-config report of a sweep: Markdown, self-contained HTML, PNG plots and JSON configs.

    write_report(experiment, out_dir) -> Path of report.md

Every (trial, state) pair is a candidate *ticket*: each pruning state is a real pruned model
with its own accuracy and cost, so a trial of S states offers S tickets. Tickets are chosen by
validation accuracy (`val_acc`); test accuracy is reported beside it and never used to choose.

One module per job:

It renders only what was recorded: the choices are computed on the records by the record
layer (`rsst_tune.experiment`: `select`, `seeds.best_choices`, the 95 % intervals of
`rsst_tune.stats`; re-exported here), and the best tickets' exports are read back from
best_exports/ (`rsst_tune.experiment.exports`). Exporting and timing them is the export step's
job (`rsst_tune.best_exports.export_best`, run when a sweep ends and on `rsst-tune report
--measure`); nothing here imports torch, the models, pruning, export or the sweep.

One module per job:

* `document`: a tiny document model (`Heading`, `Para`, `Code`, `Table`, `Image`), rendered
  to Markdown and to self-contained HTML;
* `sections`: the report's sections as blocks (and its plots);
* `interactive`: report.html's interactive plotly figures;
* `exports`: the table of the physically pruned best tickets, from their records;
* `files`: `write_report`, which writes the files.
"""

from __future__ import annotations

from rsst_tune.experiment.exports import distinct_bests, read_export
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
    "SELECT_METRIC",
    "TIE_RULE",
    "Choice",
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
