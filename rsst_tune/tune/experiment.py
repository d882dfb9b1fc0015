"""Read an experiment directory back as an `Experiment` (records.py), for the report.

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
import os
import re
import shutil
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.results import StateResult
from rsst_tune.tune.records import STOPPED_BY_SCHEDULER, Experiment, TrialRecord

log = logging.getLogger(__name__)


def load_experiment(path: str | Path) -> Experiment:
    """The sweep in `path` (a local experiment directory) as records."""
    from rsst_tune.tune.confirm import read_confirmation
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
        confirmation=read_confirmation(exp_dir),
        scheduler=plan.scheduler,
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
    """(trial id, Ray status, config) of every trial Ray recorded, read as plain JSON.

    Never through Ray's `ExperimentAnalysis`: its decoder unpickles values (cloudpickle), so a
    crafted experiment directory could run code in `rsst-tune report`. The trial ids, statuses
    and configs are plain JSON in Ray's experiment state; nothing else is read from it.
    """
    source = exp_dir
    if not any(exp_dir.glob("experiment_state-*.json")):
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

    from rsst_tune.tune.searcher import STOPPED_ATTR

    if status != "pruned" or ot_trial is None:
        return None
    reason = ot_trial.user_attrs.get("stopped_by")
    if reason is not None:
        return str(reason)
    if ot_trial.state == TrialState.PRUNED and STOPPED_ATTR in ot_trial.user_attrs:
        return STOPPED_BY_SCHEDULER
    return None


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
    if ray_status == "TERMINATED":
        if rows and is_complete(rows[-1]):
            return "complete"
        return "pruned"
    if ot_trial is not None and ot_trial.state == TrialState.COMPLETE and rows:
        return "complete" if is_complete(rows[-1]) else "running"
    return "running"


def _error(trial_dir: Path) -> str | None:
    path = trial_dir / "error.txt"
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
    states = sorted(Path(exp_dir).glob("experiment_state-*.json"))
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
    from rsst_tune.tune.runner import trial_dirname

    rows = _result_rows(Path(exp_dir) / trial_dirname(_Named(trial_id)) / "result.json")
    return rows[-1] if rows else None


def trial_error(exp_dir: str | Path, trial_id: str) -> str | None:
    from rsst_tune.tune.runner import trial_dirname

    return _error(Path(exp_dir) / trial_dirname(_Named(trial_id)))


# ---------------------------------------------------------------------- Ray's state files
RAY_STATE_BACKUP = ".ray_state_backup"
_RAY_STATE = ("experiment_state-{}.json", "searcher-state-{}.pkl", "search_gen_state-{}.json")


def ray_state_files(directory: str | Path) -> list[Path]:
    """Ray's experiment-state files of the newest session in `directory` ([] if none)."""
    newest = sorted(Path(directory).glob(_RAY_STATE[0].format("*")))
    if not newest:
        return []
    session = newest[-1].name[len("experiment_state-") : -len(".json")]
    return [p for t in _RAY_STATE if (p := Path(directory) / t.format(session)).is_file()]


def ray_state_intact(files: list[Path]) -> bool:
    """Whether Ray can read these files back: JSON that parses, pickles that end as a pickle
    does (a write cut off by a full disk fails one or the other)."""
    if not files or not files[0].name.startswith("experiment_state-"):
        return False
    return all(_file_intact(path) for path in files)


def _file_intact(path: Path) -> bool:
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


def backup_ray_state(exp_dir: Path) -> bool:
    """Copy Ray's newest experiment state to `.ray_state_backup/` when it is intact (each file
    written aside, signed (`trust.sign_copies`) and renamed, so a failed copy leaves the
    previous backup whole and signed)."""
    files = ray_state_files(exp_dir)
    if not ray_state_intact(files):
        return False
    from rsst_tune.tune.trust import sign_copies

    backup = exp_dir / RAY_STATE_BACKUP
    backup.mkdir(exist_ok=True)
    copies = [(backup / f".{path.name}.tmp", backup / path.name, path) for path in files]
    try:
        for path, (tmp, _, _) in zip(files, copies, strict=True):
            shutil.copyfile(path, tmp)
        if not all(_file_intact(tmp) for tmp, _, _ in copies):  # Ray rewrote one meanwhile
            return False
        sign_copies(exp_dir, copies)  # before they replace the signed backup
        for tmp, target, _ in copies:
            os.replace(tmp, target)
    finally:
        for tmp, _, _ in copies:
            tmp.unlink(missing_ok=True)
    names = {p.name for p in files}
    for old in backup.iterdir():
        if old.name not in names and not old.name.startswith("."):
            old.unlink(missing_ok=True)
    return True


def repair_ray_state(exp_dir: Path) -> str | None:
    """Before a resume: when Ray's newest experiment state is damaged (a full disk cut it),
    put it aside (`*.damaged`) and restore the last intact copy from `.ray_state_backup/`.
    Returns what was done, None when nothing needed doing; raises ConfigError when the state
    is damaged and no intact copy exists."""
    files = ray_state_files(exp_dir)
    if not files or ray_state_intact(files):
        return None
    backup = ray_state_files(exp_dir / RAY_STATE_BACKUP)
    if not ray_state_intact(backup):
        raise ConfigError(
            f"Ray's experiment state in {exp_dir} ({files[0].name}) is damaged (cut off by a "
            "full disk?) and there is no intact copy to resume from; the trials' checkpoints, "
            "results and the Optuna journal are intact: start a new sweep"
        )
    for path in files:
        path.rename(path.with_name(path.name + ".damaged"))
    for path in backup:
        shutil.copyfile(path, exp_dir / path.name)
    return f"restored Ray's experiment state from {backup[0].parent} ({files[0].name} was damaged)"
