"""Read an experiment directory back as an `Experiment` (records.py), for the report.

Sources: `sweep.json` (space, objectives, command), Ray Tune's experiment state (trial ids,
configs, statuses), each trial's `result.json` (one row per pruning state) and `error.txt`,
and the Optuna journal (what Optuna proposed, and PRUNED/COMPLETE/FAIL).

Status of a trial: `complete` (ran every state), `pruned` (stopped early by the scheduler,
or by the time budget), `error` (raised), `running` (unfinished: the sweep is running or was
interrupted and can be resumed).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.results import StateResult
from rsst_tune.tune.records import Experiment, TrialRecord

log = logging.getLogger(__name__)


def load_experiment(path: str | Path) -> Experiment:
    """The sweep in `path` (a local experiment directory) as records."""
    from rsst_tune.tune.plan import PLAN_FILE, SweepPlan

    exp_dir = Path(path).expanduser().resolve()
    plan_file = exp_dir / PLAN_FILE
    if not plan_file.is_file():
        raise ConfigError(f"{exp_dir} holds no sweep (no {PLAN_FILE})")
    plan = SweepPlan.from_json(plan_file.read_text())
    study = open_study(exp_dir, plan.study_name or plan.name)
    by_ray_id = _optuna_trials(study)
    records = [
        _record(exp_dir, trial_id, status, config, by_ray_id.get(trial_id))
        for trial_id, status, config in _ray_trials(exp_dir)
    ]
    return Experiment(
        name=plan.name,
        path=str(exp_dir),
        space=plan.space,
        objectives=plan.objectives,
        trials=tuple(sorted(records, key=lambda r: r.trial_id)),
        command=plan.command,
        study=study,
    )


def open_study(exp_dir: Path, study_name: str) -> Any:
    """The Optuna study of the sweep (None when there is no journal yet)."""
    from rsst_tune.tune.searcher import JOURNAL_FILE, journal_storage

    journal = exp_dir / JOURNAL_FILE
    if not journal.is_file():
        return None
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=journal_storage(journal))
    except KeyError:
        log.warning("%s holds no study named %s", journal, study_name)
        return None


def _optuna_trials(study: Any) -> dict[str, Any]:
    from rsst_tune.tune.searcher import RAY_TRIAL_ATTR

    if study is None:
        return {}
    return {
        str(t.user_attrs[RAY_TRIAL_ATTR]): t
        for t in study.get_trials(deepcopy=False)
        if RAY_TRIAL_ATTR in t.user_attrs
    }


def _ray_trials(exp_dir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    if not any(exp_dir.glob("experiment_state-*.json")):
        return []
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir))
    return [(str(t.trial_id), str(t.status), dict(t.config)) for t in analysis.trials]


def _record(
    exp_dir: Path, trial_id: str, ray_status: str, config: dict[str, Any], ot_trial: Any
) -> TrialRecord:
    from rsst_tune.tune.runner import trial_dirname

    trial_dir = exp_dir / trial_dirname(_Named(trial_id))
    rows = _result_rows(trial_dir / "result.json")
    states = tuple(StateResult.from_dict(r) for r in rows)
    checkpoints = {
        int(r["state"]): str(trial_dir / r["checkpoint_dir_name"])
        for r in rows
        if r.get("checkpoint_dir_name") and (trial_dir / r["checkpoint_dir_name"]).is_dir()
    }
    last_ckpt = checkpoints[max(checkpoints)] if checkpoints else None
    return TrialRecord(
        trial_id=trial_id,
        status=_status(ray_status, rows, ot_trial),
        config=config,
        params=dict(ot_trial.params) if ot_trial is not None else {},
        states=states,
        error=_error(trial_dir),
        checkpoint_dir=last_ckpt,
        state_checkpoints=checkpoints,
    )


class _Named:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _result_rows(path: Path) -> list[dict[str, Any]]:
    """One row per pruning state (a resumed trial that repeated a report keeps the last);
    rows that are not a complete `StateResult` (cut off by a crash) are skipped."""
    by_state: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a row cut off by a crash
            continue
        try:
            StateResult.from_dict(row)
        except (ConfigError, TypeError, ValueError) as exc:
            log.warning("%s: skipping a row that is not a pruning state (%s)", path, exc)
            continue
        by_state[int(row["state"])] = row
    return [by_state[s] for s in sorted(by_state)]


def _status(ray_status: str, rows: list[dict[str, Any]], ot_trial: Any) -> str:
    from optuna.trial import TrialState

    from rsst_tune.tune.searcher import is_complete

    if ray_status == "ERROR":
        return "error"
    if ot_trial is not None:
        state = ot_trial.state
        if state == TrialState.COMPLETE:
            return "complete"
        if state == TrialState.PRUNED:
            return "pruned"
        if state == TrialState.FAIL:
            return "error"
    if ray_status == "TERMINATED":
        return "complete" if rows and is_complete(rows[-1]) else "pruned"
    return "running"


def _error(trial_dir: Path) -> str | None:
    path = trial_dir / "error.txt"
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "error"
