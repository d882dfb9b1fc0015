"""An experiment directory's layout: every file and directory name a sweep writes and its
readers read, and the names of what the Optuna journal records. One place, so the sweep (which
writes them), the record reader and the report cannot drift apart.

    <storage>/<name>/                  the experiment directory
        sweep.json                     the resolved plan (PLAN_FILE)
        sweep.yaml                     the options as a sweep file, for --config (SWEEP_FILE)
        optuna.journal                 the Optuna study (JOURNAL_FILE)
        experiment_state-*.json        Ray's record of the trials (RAY_STATE_GLOB)
        .ray_state_backup/             the last intact copy of Ray's state (RAY_STATE_BACKUP)
        trial_<id>/result.json         one row per pruning state (RESULT_FILE)
        trial_<id>/error.txt           why a trial failed (ERROR_FILE)
        confirm.json, confirm/         seed confirmation (CONFIRM_FILE, CONFIRM_DIR)
        dense_cache/                   shared dense states 0 (DENSE_CACHE_DIR)
        sweep.log, sweep.lock          the sweep's log and its lock
        report.md, report.html, best_config.json, best_configs/, best_exports/
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PLAN_FILE = "sweep.json"
SWEEP_FILE = "sweep.yaml"
JOURNAL_FILE = "optuna.journal"
RAY_STATE_PREFIX = "experiment_state-"
RAY_STATE_GLOB = f"{RAY_STATE_PREFIX}*.json"
RAY_STATE_BACKUP = ".ray_state_backup"
# Ray's own state files of one driver session ({} is the session's timestamp)
RAY_STATE_FILES = (
    RAY_STATE_PREFIX + "{}.json",
    "searcher-state-{}.pkl",
    "search_gen_state-{}.json",
)
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"
CONFIRM_FILE = "confirm.json"
CONFIRM_DIR = "confirm"  # Ray's files of the confirmation runs, one round per stage
DENSE_CACHE_DIR = "dense_cache"
LATENCY_TABLE_FILE = "latency_table.json"  # the sweep's latency table, unless one was given
SWEEP_LOG = "sweep.log"
SWEEP_LOCK = "sweep.lock"
SIGNATURES_FILE = "signatures.json"

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
BEST_CONFIG_FILE = "best_config.json"
BEST_CONFIGS_DIR = "best_configs"
BEST_EXPORTS_DIR = "best_exports"
# inside best_exports/<trial>_s<state>/ (written by `rsst_tune.export`)
EXPORT_MODEL_FILE = "model.pt"
EXPORT_RECORD_FILE = "export.json"
EXPORT_ONNX_FILE = "model.onnx"
EXPORT_ERROR_FILE = ERROR_FILE

# What each Optuna trial of the study records (user attributes)
RAY_TRIAL_ATTR = "ray_trial_id"
STOPPED_ATTR = "stopped_after_state"
STATE_VALUES_ATTR = "values_state_"  # + state: {objective: value} at that pruning state
PRUNED_VALUES_ATTR = "pruned_values"  # {objective: value} of a stopped trial's last state
FAIL_REASON_ATTR = "fail_reason"
STOPPED_BY_ATTR = "stopped_by"  # why the sweep itself ended a trial ("time_budget", "stopped")
CONSTRAINT_ATTR = "constraint"  # [macs_frac - budget] of a proposal (feasible when <= 0)


def trial_dirname(trial_id: str) -> str:
    """A trial's directory inside the experiment directory."""
    return f"trial_{trial_id}"


def export_name(trial_id: str, state: int) -> str:
    """A best ticket's export directory, relative to the report directory."""
    return f"{BEST_EXPORTS_DIR}/{trial_id}_s{state}"


def is_complete(result: Mapping[str, Any] | None) -> bool:
    """Whether a trial's last result row is its last pruning state."""
    if not result or "state" not in result or "pruning_times" not in result:
        return False
    return int(result["state"]) >= int(result["pruning_times"]) - 1
