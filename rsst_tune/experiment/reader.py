"""Read an experiment directory back as an `Experiment`, as data: nothing is unpickled, run or
written here (repairs and backups of Ray's state stay with the sweep).

Sources: `sweep.json` (space, objectives, command), Ray Tune's experiment state (trial ids,
configs, statuses), each trial's `result.json` (one row per pruning state) and `error.txt`,
and the Optuna journal (what Optuna proposed, and PRUNED/COMPLETE/FAIL).

Status of a trial: `complete` (ran every state), `pruned` (stopped early by the scheduler,
or by the time budget: `TrialRecord.stopped_by` says which, from Optuna's user attrs),
`error` (raised, after its retries), `running` (unfinished: the sweep is running or was
interrupted and can be resumed). Ray's record decides whether a trial finished and how (a
trial that failed, was retried and then ran every state is `complete`); Optuna's only tells
pruned from complete where Ray cannot.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.layout import (
    CONFIRM_FILE,
    ERROR_FILE,
    JOURNAL_FILE,
    LATENCY_TABLE_FILE,
    PLAN_FILE,
    RAY_STATE_BACKUP,
    RAY_STATE_FILES,
    RAY_STATE_GLOB,
    RAY_STATE_PREFIX,
    RAY_TRIAL_ATTR,
    RESULT_FILE,
    STOPPED_ATTR,
    STOPPED_BY_ATTR,
    SWEEP_FILE,
    is_complete,
    trial_dirname,
)
from rsst_tune.experiment.objectives import objectives_from_json
from rsst_tune.experiment.records import (
    STOPPED_BY_SCHEDULER,
    Confirmation,
    Objective,
    SeedRun,
    TrialRecord,
)
from rsst_tune.results import StateResult

log = logging.getLogger(__name__)


def load_experiment(path: str | Path) -> Experiment:
    """The sweep in `path` (a local experiment directory) as records."""
    exp_dir = Path(path).expanduser().resolve()
    plan_file = exp_dir / PLAN_FILE
    if not plan_file.is_file():
        raise ConfigError(f"{exp_dir} holds no sweep (no {PLAN_FILE})")
    plan = _read_plan(plan_file)
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
        confirmation=read_confirmation(exp_dir),
        scheduler=plan.scheduler,
        sweep_file=_read_text(exp_dir / SWEEP_FILE),
        latency_batch=plan.latency_batch,
        latency_table=plan.latency_table
        or (str(exp_dir / LATENCY_TABLE_FILE) if plan.latency_batch is not None else None),
        latency_budget_ms=plan.latency_budget_ms,
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class _PlanFacts:
    """What the record needs of the sweep's plan (`sweep.json`, written by the sweep)."""

    name: str
    space: str
    objectives: tuple[Objective, ...]
    command: str
    study_name: str
    scheduler: str
    latency_batch: int | None = None
    latency_table: str | None = None  # a table the sweep was given (else its own, if any)
    latency_budget_ms: float | None = None


def _read_plan(plan_file: Path) -> _PlanFacts:
    try:
        data = json.loads(plan_file.read_text(encoding="utf-8"))
        return _PlanFacts(
            name=str(data["name"]),
            space=str(data["space"]),
            objectives=objectives_from_json(data["objectives"]),
            command=str(data.get("command", "")),
            study_name=str(data.get("study_name", "")),
            scheduler=str(data.get("scheduler", "")),
            latency_batch=(data.get("latency") or {}).get("batch"),
            latency_table=(data.get("latency") or {}).get("table"),
            latency_budget_ms=(data.get("latency") or {}).get("budget_ms"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{plan_file} is not a readable sweep plan: {exc}") from None


def open_study(exp_dir: Path, study_name: str, storage: Any = None) -> Any:
    """The Optuna study of the sweep (None when there is no journal yet), read through
    Optuna's journal file (or through `storage`, the sweep's own writer, when given)."""
    journal = exp_dir / JOURNAL_FILE
    if not journal.is_file():
        return None
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        log.warning("%s holds no study named %s", journal, study_name)
        return None


def _optuna_trials(study: Any) -> dict[str, Any]:
    if study is None:
        return {}
    return {
        str(t.user_attrs[RAY_TRIAL_ATTR]): t
        for t in study.get_trials(deepcopy=False)
        if RAY_TRIAL_ATTR in t.user_attrs
    }


def _ray_trials(exp_dir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(trial id, Ray status, config) of every trial Ray recorded, read as plain JSON.

    Never through Ray's `ExperimentAnalysis`: its decoder unpickles values (cloudpickle), so a
    crafted experiment directory could run code in `rsst-tune report`. The trial ids, statuses
    and configs are plain JSON in Ray's experiment state; nothing else is read from it.
    """
    source = exp_dir
    if not any(exp_dir.glob(RAY_STATE_GLOB)):
        return []
    if not ray_state_intact(ray_state_files(exp_dir)):  # cut off by a full disk
        source = exp_dir / RAY_STATE_BACKUP
        if not ray_state_intact(ray_state_files(source)):
            raise ConfigError(
                f"Ray's experiment state in {exp_dir} is damaged (cut off by a full disk?) "
                "and has no intact copy"
            )
        log.warning("%s: Ray's experiment state is damaged; reading its last intact copy", exp_dir)
    state = ray_state_files(source)[0]
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
        out = []
        for trial_json, _meta in data["trial_data"]:
            trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            config = trial.get("config")
            if not isinstance(config, dict):
                log.warning("%s: trial %s has no readable config", state, trial.get("trial_id"))
                config = {}
            out.append((str(trial["trial_id"]), str(trial.get("status", "PENDING")), config))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{state} is not a readable Ray experiment state: {exc}") from None
    return out


def _record(
    exp_dir: Path, trial_id: str, ray_status: str, config: dict[str, Any], ot_trial: Any
) -> TrialRecord:
    trial_dir = exp_dir / trial_dirname(trial_id)
    rows = _result_rows(trial_dir / RESULT_FILE)
    states = tuple(StateResult.from_dict(r) for r in rows)
    checkpoints = {
        int(r["state"]): str(trial_dir / r["checkpoint_dir_name"])
        for r in rows
        if r.get("checkpoint_dir_name") and (trial_dir / r["checkpoint_dir_name"]).is_dir()
    }
    last_ckpt = checkpoints[max(checkpoints)] if checkpoints else None
    status = _status(ray_status, rows, ot_trial)
    return TrialRecord(
        trial_id=trial_id,
        status=status,
        config=config,
        params=dict(ot_trial.params) if ot_trial is not None else {},
        states=states,
        error=_error(trial_dir) if status == "error" else None,
        checkpoint_dir=last_ckpt,
        state_checkpoints=checkpoints,
        stopped_by=_stopped_by(status, ot_trial),
    )


def _stopped_by(status: str, ot_trial: Any) -> str | None:
    """Why a pruned trial ended early, from its Optuna trial: the sweep's own stops carry user
    attr `stopped_by` ("time_budget", "stopped"; `searcher.settle_finished`); a trial the
    scheduler stopped is PRUNED with `stopped_after_state` and no `stopped_by` (the searcher's
    `on_trial_complete`). None when the trial was not pruned or Optuna does not say."""
    from optuna.trial import TrialState

    if status != "pruned" or ot_trial is None:
        return None
    reason = ot_trial.user_attrs.get(STOPPED_BY_ATTR)
    if reason is not None:
        return str(reason)
    if ot_trial.state == TrialState.PRUNED and STOPPED_ATTR in ot_trial.user_attrs:
        return STOPPED_BY_SCHEDULER
    return None


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

    if ray_status == "ERROR":
        return "error"
    if ray_status == "TERMINATED":
        if rows and is_complete(rows[-1]):
            return "complete"
        return "pruned"
    if ot_trial is not None and ot_trial.state == TrialState.COMPLETE and rows:
        return "complete" if is_complete(rows[-1]) else "running"
    return "running"


def _error(trial_dir: Path) -> str | None:
    path = trial_dir / ERROR_FILE
    if not path.is_file():
        return None
    return error_summary(path.read_text(errors="replace"))


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Diverged|Exit)\b.*")


def error_summary(text: str) -> str:
    """One line for an error file: the last `...Error: ...` line of its latest failure (Ray
    appends one `Failure # N` block per failure), else the block's first line."""
    blocks = re.split(r"^Failure # \d+.*$", text, flags=re.M)
    lines = [ln.strip() for ln in blocks[-1].splitlines() if ln.strip()]
    if not lines:
        return "error"
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    return (errors[-1] if errors else lines[0])[:200]


def snapshot_trials(exp_dir: str | Path) -> dict[str, str] | None:
    """Trial id -> Ray status in the newest Ray experiment state of `exp_dir` (read as JSON,
    nothing unpickled); None when there is none or it cannot be read."""
    states = sorted(Path(exp_dir).glob(RAY_STATE_GLOB))
    if not states:
        return None
    try:
        data = json.loads(states[-1].read_text())
        out: dict[str, str] = {}
        for trial_json, _meta in data["trial_data"]:
            trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            out[str(trial["trial_id"])] = str(trial.get("status", "PENDING"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable experiment state (%s)", states[-1], exc)
        return None
    return out


def last_row(exp_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The trial's last complete result row (its last pruning state), None before any."""
    rows = _result_rows(Path(exp_dir) / trial_dirname(trial_id) / RESULT_FILE)
    return rows[-1] if rows else None


def trial_error(exp_dir: str | Path, trial_id: str) -> str | None:
    return _error(Path(exp_dir) / trial_dirname(trial_id))


# ---------------------------------------------------------------------- Ray's state files


def ray_state_files(directory: str | Path) -> list[Path]:
    """Ray's experiment-state files of the newest session in `directory` ([] if none)."""
    newest = sorted(Path(directory).glob(RAY_STATE_GLOB))
    if not newest:
        return []
    session = newest[-1].name[len(RAY_STATE_PREFIX) : -len(".json")]
    return [p for t in RAY_STATE_FILES if (p := Path(directory) / t.format(session)).is_file()]


def ray_state_intact(files: list[Path]) -> bool:
    """Whether Ray can read these files back: JSON that parses, pickles that end as a pickle
    does (a write cut off by a full disk fails one or the other)."""
    if not files or not files[0].name.startswith(RAY_STATE_PREFIX):
        return False
    return all(file_intact(path) for path in files)


def file_intact(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:1] == b"\x80":  # a pickle (search_gen_state-*.json is one too)
        return data.endswith(b".")  # the STOP opcode
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def read_confirmation(exp_dir: str | Path) -> Confirmation | None:
    """`confirm.json` of an experiment directory as a record (None when there is none). A
    damaged file is a one-line ConfigError."""
    path = Path(exp_dir) / CONFIRM_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        runs = tuple(
            SeedRun(
                ticket=str(r["ticket"]),
                seed=int(r["seed"]),
                status=str(r["status"]),
                result=StateResult.from_dict(r["result"]) if r.get("result") else None,
                error=r.get("error"),
            )
            for r in data["runs"]
        )
        return Confirmation(
            k=int(data["k"]),
            seeds=tuple(int(s) for s in data["seeds"]),
            tickets=tuple(str(t) for t in data["tickets"]),
            runs=runs,
        )
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{path} is not a readable seed-confirmation record: {exc}") from None
