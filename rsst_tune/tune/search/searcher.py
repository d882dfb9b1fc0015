"""The Optuna side of a sweep: the persisted study, and a searcher that tells PRUNED (the
samplers are `rsst_tune.tune.search.samplers`).

`PruningAwareOptunaSearch` is Ray's `OptunaSearch` with these changes:

* the define-by-run function returns the trial's searched TrialConfig fields, and only those
  become the Ray config (helper parameters such as `rate_mode` stay in Optuna);
* each Optuna trial records its Ray trial id (user attr `ray_trial_id`);
* a trial that ends before its last pruning state without an error (a scheduler stopped it)
  is told to Optuna as PRUNED, not COMPLETE. Ray's own searcher would tell it COMPLETE with
  the values of an early, low-sparsity state;
* every pruning state is recorded as it arrives: user attr `values_state_<s>` holds the
  objectives at state s (and a single-objective study gets `trial.report(value, step=s)`;
  Optuna refuses `report` in a multi-objective study); a PRUNED trial keeps its last state's
  objectives in user attr `pruned_values` (Optuna stores no values for PRUNED trials); the
  study carries the objective names (`study.metric_names`) for optuna-dashboard;
* a trial that fails for good is told FAIL with user attr `fail_reason` (its error as one line,
  read from the sweep's `SweepContext`, where the trial noted it). A trial Ray retries
  (`--max-failures`) is not told anything until it ends, so one that finishes after a retry
  is COMPLETE;
* with a `constraint` (`--macs-budget`: `rsst_tune.pruning.budget.MacsBudget`), every proposal
  gets its constraint value before Ray sees it, as Optuna's constraint `macs_budget`
  (`Trial.set_constraint`, which TPE and NSGA-II read; Optuna 5 deprecates
  `constraints_func`) and as user attr `constraint` = [value]; one with value > 0 (over the
  budget) is told PRUNED at once and Optuna asks again, up to MAX_PROPOSALS times per trial
  slot, so an infeasible proposal never trains nor takes a slot.

Trials the searcher could not tell (the driver was killed, the disk was full) are settled
from Ray's record by `settle_finished` when the sweep ends, and trials Ray never recorded by
`fail_lost` when it resumes, so no Optuna trial stays RUNNING after a sweep.

The study lives in the experiment directory in an Optuna JournalStorage file
(`optuna.journal`), so `optuna-dashboard <experiment>/optuna.journal` can watch a sweep. A
write that fails (disk full) is cut back off the journal, which stays readable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from rsst_tune.experiment.layout import (
    CONSTRAINT_ATTR,
    FAIL_REASON_ATTR,
    PRUNED_VALUES_ATTR,
    RAY_TRIAL_ATTR,
    STATE_VALUES_ATTR,
    STOPPED_ATTR,
    is_complete,
)
from rsst_tune.experiment.reader import ray_state_files
from rsst_tune.tune.run.context import ContextHolder, SweepContext
from rsst_tune.tune.run.storage import storage_error

log = logging.getLogger(__name__)

CONSTRAINT_KEY = "macs_budget"  # the same value as Optuna's constraint (`Trial.set_constraint`)
MAX_PROPOSALS = 500  # proposals asked per trial slot before the sweep stops generating trials


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file; a write that fails (disk full, permission) is cut back off it, so
    the journal never ends mid-record and stays readable, and the error says what failed."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        path = self._file_path
        try:
            size: int | None = os.path.getsize(path)
        except OSError:
            size = None
        try:
            super().append_logs(logs)
        except (OSError, RuntimeError) as exc:
            if size is not None:
                with contextlib.suppress(OSError):
                    if os.path.getsize(path) > size:
                        os.truncate(path, size)
            cause = storage_error(exc)
            if cause is not None and cause is not exc:
                raise cause from exc
            raise


def journal_storage(path: str | Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(SafeJournalFileBackend(str(path)))


class PruningAwareOptunaSearch(ContextHolder, OptunaSearch):
    """Ray's OptunaSearch for define-by-run spaces that return TrialConfig fields.

    `context`: the sweep's `SweepContext` (its trials' failures; where a storage error is
    noted), never pickled with the searcher (`save`); one of its own when not given."""

    def __init__(
        self,
        define: Callable[[Any], dict[str, Any]],
        *,
        metric: str | list[str],
        mode: str | list[str],
        sampler: optuna.samplers.BaseSampler,
        study_name: str,
        storage: optuna.storages.BaseStorage,
        points_to_evaluate: Sequence[Mapping[str, Any]] = (),
        constraint: Callable[[Mapping[str, Any]], float] | None = None,
        max_proposals: int = MAX_PROPOSALS,
        context: SweepContext | None = None,
    ) -> None:
        self.bind(SweepContext() if context is None else context)
        self._constraint = constraint  # a proposal's constraint value (> 0: infeasible)
        self._max_proposals = max_proposals
        super().__init__(
            space=define,
            metric=metric,
            mode=mode,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
            points_to_evaluate=[dict(p) for p in points_to_evaluate] or None,
        )
        names = [metric] if isinstance(metric, str) else list(metric)
        if self.study.metric_names != names:  # optuna-dashboard shows named objectives
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(names)

    @property
    def study(self) -> optuna.Study:
        study: optuna.Study | None = self._ot_study
        if study is None:  # pragma: no cover - set in __init__ (a space is always given)
            raise RuntimeError("the Optuna study is not set up")
        return study

    # The define-by-run function sees the real Optuna trial; its return value is the config.
    def _suggest_from_define_by_run_func(
        self, func: Callable[[optuna.Trial], dict[str, Any] | None], ot_trial: optuna.Trial
    ) -> dict[str, Any]:
        params = func(ot_trial) or {}
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise TypeError("a search space's define() must return a dict with str keys")
        return dict(params)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        try:
            config: dict[str, Any] | None = super().suggest(trial_id)
            if self._constraint is not None and config is not None:
                config = self._feasible(trial_id, config)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:
                ot_trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        except OSError as exc:  # the journal cannot be written: the sweep stops (StorageGuard)
            if storage_error(exc) is None:
                raise
            self.context.note_storage_failure(exc)
            self._ot_trials.pop(trial_id, None)
            return None
        return config

    def _feasible(self, trial_id: str, config: dict[str, Any] | None) -> dict[str, Any] | None:
        """The first proposal within the constraint; each one over it is told PRUNED with its
        user attr `constraint` and asked again. After `max_proposals` infeasible ones, no more
        trials are generated (Ray's Searcher.FINISHED) and the log says so in one line."""
        assert self._constraint is not None
        for asked in range(1, self._max_proposals + 1):
            ot_trial = self._ot_trials[trial_id]
            value = float(self._constraint(config or {}))
            ot_trial.set_user_attr(CONSTRAINT_ATTR, [value])
            ot_trial.set_constraint(CONSTRAINT_KEY, value)  # what the samplers read
            if value <= 0:
                return config
            self.study.tell(ot_trial, state=TrialState.PRUNED)
            del self._ot_trials[trial_id]
            if asked == self._max_proposals:
                break
            config = super().suggest(trial_id)
        log.warning(
            "no proposal within the constraint after %d tries (the last was %.3g over it): "
            "no more trials are started; loosen --macs-budget or the space's ranges",
            self._max_proposals,
            value,
        )
        finished: Any = self.FINISHED
        return finished  # type: ignore[no-any-return]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """One intermediate value per pruning state: user attr `values_state_<s>` (every
        objective), and for a single objective also `trial.report(value, step=state)`
        (Optuna refuses `report` in a multi-objective study)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or "state" not in result:
            return
        try:
            self._record_state(ot_trial, result)
        except (ValueError, RuntimeError) as exc:
            log.warning("could not record trial %s's state in Optuna: %s", trial_id, exc)
        except OSError as exc:
            if storage_error(exc) is None:
                raise
            self.context.note_storage_failure(exc)

    def _record_state(self, ot_trial: optuna.Trial, result: Mapping[str, Any]) -> dict[str, Any]:
        state = int(result["state"])
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = {m: _finite(result[m]) for m in metrics if m in result}
        ot_trial.set_user_attr(f"{STATE_VALUES_ATTR}{state}", values)
        value = values.get(metrics[0])
        if len(metrics) == 1 and value is not None:  # a repeated step is ignored
            ot_trial.report(value, step=state)
        return values

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:  # pragma: no cover - Ray only completes trials it suggested
            return
        try:
            if error:
                reason = self.context.failure_line(trial_id) or "the trial raised"
                ot_trial.set_user_attr(
                    FAIL_REASON_ATTR, f"{reason} (see trial_{trial_id}/error.txt)"
                )
                self.study.tell(ot_trial, state=TrialState.FAIL)
            elif is_complete(result):
                assert result is not None
                metrics = self.metric if isinstance(self.metric, list) else [self.metric]
                values = [float(result[m]) for m in metrics]
                self.study.tell(ot_trial, values if len(values) > 1 else values[0])
            else:
                if result and "state" in result:
                    ot_trial.set_user_attr(STOPPED_ATTR, int(result["state"]))
                    # Ray does not pass the result a scheduler stops on to on_trial_result.
                    # Optuna keeps no values for a PRUNED trial of a multi-objective study
                    # (a single objective gets its last report): user attr `pruned_values`.
                    ot_trial.set_user_attr(PRUNED_VALUES_ATTR, self._record_state(ot_trial, result))
                self.study.tell(ot_trial, state=TrialState.PRUNED)
        except (ValueError, KeyError, RuntimeError) as exc:
            log.warning("could not tell Optuna about trial %s: %s", trial_id, exc)
        except OSError as exc:  # left RUNNING; settled from Ray's record on resume
            if storage_error(exc) is None:
                raise
            self.context.note_storage_failure(exc)
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Ray's `OptunaSearch.save` (the searcher's `__dict__`, pickled) without the sweep's
        context: `searcher-state-*.pkl` is what it was, and `restore`, which updates
        `__dict__` from it, keeps the context this searcher was given."""
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__getstate__(), fh)


def _finite(value: Any) -> float | None:
    """A JSON-safe objective value for a user attr (None when not a finite number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def mark_stopped(study: optuna.Study, ray_trial_ids: set[str], reason: str) -> int:
    """Tell PRUNED for still-RUNNING Optuna trials of Ray trials the sweep itself ended.

    Ray ends the trials that are running when the time budget runs out without telling the
    searcher; without this they would stay RUNNING in the study forever.
    """
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(RAY_TRIAL_ATTR) in ray_trial_ids:
            study._storage.set_trial_user_attr(t._trial_id, "stopped_by", reason)
            study.tell(t.number, state=TrialState.PRUNED)
            count += 1
    return count


def _tell(study: optuna.Study, trial: Any, attrs: Mapping[str, Any], **tell: Any) -> bool:
    try:
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        study.tell(trial.number, **tell)
    except (ValueError, RuntimeError) as exc:  # e.g. finished meanwhile, a NaN value
        log.warning("could not settle Optuna trial %d: %s", trial.number, exc)
        return False
    return True


def settle_finished(
    study: optuna.Study,
    finished: Mapping[str, tuple[str, Mapping[str, Any] | None, str | None]],
    metrics: Sequence[str],
    stopped_reason: str,
) -> int:
    """Tell Optuna how Ray trials ended that Optuna still has RUNNING (the searcher could not
    tell it: the driver was killed, the journal could not be written).

    `finished`: Ray trial id -> (Ray status, its last result row or None, its error line or
    None). An ERROR trial becomes FAIL (user attr `fail_reason`); a TERMINATED one COMPLETE
    with its objective values when it ran every state, else PRUNED (user attr `stopped_by`:
    `stopped_reason`). Returns how many were settled.
    """
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ray_id = str(t.user_attrs.get(RAY_TRIAL_ATTR))
        if ray_id not in finished:
            continue
        status, row, error = finished[ray_id]
        if status == "ERROR":
            reason = error or f"the trial raised; see trial_{ray_id}/error.txt"
            count += _tell(study, t, {FAIL_REASON_ATTR: reason}, state=TrialState.FAIL)
        elif status == "TERMINATED" and is_complete(row):
            assert row is not None
            values = [float(row.get(m, math.nan)) for m in metrics]
            if all(math.isfinite(v) for v in values):
                count += _tell(study, t, {}, values=values if len(values) > 1 else values[0])
            else:
                reason = "finished without a finite value of every objective"
                count += _tell(study, t, {FAIL_REASON_ATTR: reason}, state=TrialState.FAIL)
        elif status == "TERMINATED":
            attrs: dict[str, Any] = {"stopped_by": stopped_reason}
            if row and "state" in row:
                attrs[STOPPED_ATTR] = int(row["state"])
            count += _tell(study, t, attrs, state=TrialState.PRUNED)
    return count


def fail_lost(
    study: optuna.Study, known: Iterable[str], reason: Callable[[str | None], str]
) -> int:
    """Tell FAIL (user attr `fail_reason`: `reason(ray_trial_id)`) for RUNNING Optuna trials
    of no Ray trial in `known`: trials Ray never recorded (the driver was killed first)."""
    known = set(known)
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ray_id = t.user_attrs.get(RAY_TRIAL_ATTR)
        if ray_id in known:
            continue
        count += _tell(study, t, {FAIL_REASON_ATTR: reason(ray_id)}, state=TrialState.FAIL)
    return count


SEARCH_GEN_STATE = "search_gen_state-"  # Ray's SearchGenerator state (a pickle, despite .json)
LIMITER_STATE = "name:ConcurrencyLimiter"


def recount_search_state(exp_dir: str | Path, recorded: Mapping[str, str]) -> str | None:
    """Before a resume: make Ray's saved search state agree with its record of the trials.

    Ray saves the trials (`experiment_state-*.json`) and the search state
    (`search_gen_state-*.json`: how many trials were generated, and the concurrency limiter's
    live trials) side by side and copies them to storage one file at a time; a full disk or a
    killed driver can leave a search state that counts a trial the record lacks (generated,
    never recorded). Restored as it is, that trial counts towards `--num-samples` and, under
    `--max-concurrent`, stays "live" for ever: the resumed sweep ends short of its trials.

    `recorded`: Ray trial id -> status of every trial in the record. The count of generated
    trials becomes the number recorded and the limiter's live trials the recorded unfinished
    ones, so the resumed sweep generates the trials still missing (the lost trial's Optuna
    trial is told FAIL by `fail_lost`). The file is rewritten atomically; it must be trusted
    (`rsst_tune.tune.safety.trust`): it is unpickled here. Returns what changed, None when nothing.
    """
    import ray.cloudpickle as cloudpickle

    files = [p for p in ray_state_files(exp_dir) if p.name.startswith(SEARCH_GEN_STATE)]
    if not files:
        return None
    path = files[0]
    with path.open("rb") as fh:
        state = cloudpickle.load(fh)
    if not isinstance(state, dict) or not isinstance(state.get("counter"), int):
        return None
    changes = []
    if state["counter"] != len(recorded):
        changes.append(f"{state['counter']} trials generated -> {len(recorded)} recorded")
        state["counter"] = len(recorded)
    limiter = state.get(LIMITER_STATE)
    if isinstance(limiter, dict) and not limiter.get("batch") and "live_trials" in limiter:
        live = {t for t, s in recorded.items() if s not in ("TERMINATED", "ERROR")}
        if set(limiter["live_trials"]) != live:
            changes.append(f"live trials {sorted(limiter['live_trials'])} -> {sorted(live)}")
            limiter["live_trials"] = live
            limiter["num_unfinished_live_trials"] = len(live)
    if not changes:
        return None
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        cloudpickle.dump(state, fh)
    os.replace(tmp, path)
    return f"Ray's search state recounted ({'; '.join(changes)})"
