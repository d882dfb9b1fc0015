"""The record layer: a sweep as data, read from its experiment directory, and the plain
computations on those records that the report, the console and users share.

    experiment = rsst_tune.load_experiment("experiments/vit_head_mlp-smoke-20250101-120000")
    best = experiment.best(macs=0.5)          # a Ticket: one pruning state of one trial

One module per job:

* `records`: the frozen records (`Objective`, `TrialRecord`, `SeedRun`, `Confirmation`);
* `experiment`: `Experiment`, a sweep's records with `tickets()`, `pareto()`, `best()`;
* `tickets`: `Ticket`, one (trial, state) pair, and `collect_tickets`;
* `objectives`: parsing `--objective` and a trial's value under an objective;
* `select`: Pareto fronts, the best ticket per MACs budget with its ties, importances;
* `seeds`: seed-confirmation statistics, the choice by the mean over seeds, and the answer
  per budget that the report renders and the export step exports (`best_tickets`);
* `exports`: the best tickets' recorded exports read back (`read_export`; the records are
  `rsst_tune.export_record`'s plain data, no torch);
* `stops`: what an early-stopping scheduler stopped, in one summary;
* `layout`: every file and directory name of an experiment directory;
* `reader`: `load_experiment`, reading Ray's state (as JSON), the Optuna journal, results.

It imports nothing of the sweep (`rsst_tune.tune`) or the report (`rsst_tune.report`).
"""

from __future__ import annotations

from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.objectives import parse_objectives, trial_value
from rsst_tune.experiment.reader import load_experiment
from rsst_tune.experiment.records import Confirmation, Objective, SeedRun, TrialRecord
from rsst_tune.experiment.stops import StopSummary, stop_summary
from rsst_tune.experiment.tickets import Ticket, collect_tickets

__all__ = [
    "Confirmation",
    "Experiment",
    "Objective",
    "SeedRun",
    "StopSummary",
    "Ticket",
    "TrialRecord",
    "collect_tickets",
    "load_experiment",
    "parse_objectives",
    "stop_summary",
    "trial_value",
]
