"""The sweep's console: one line per event, and the quiet logging setup around a sweep.

`SweepConsole` is a Ray Tune callback that runs in the driver. It prints one line when a trial
starts, finishes a pruning state, completes, is pruned by the scheduler, is retried after a
failure (`--max-failures`) or fails for good, with the counts and the best result so far, and
appends every event to `events.jsonl` in the experiment directory (the benchmark reads trial
wall times from it). Ray's and Optuna's chatter goes to `sweep.log` in the experiment
directory instead of the console. When the sweep ends, `print_stop_summary` says in one line
how many trials an early-stopping scheduler stopped, after which state, and the trial-epochs
that saved (`rsst_tune.experiment.stops`; the report shows the same line).

`StorageGuard` is a Ray stopper that ends the sweep at the first storage error (disk full,
permission) that a trial or the searcher met, instead of letting every trial fail in turn.
Both are given the sweep's `SweepContext` (`rsst_tune.tune.run.context`), where that error is
noted, and never pickle it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.layout import SWEEP_LOG, is_complete
from rsst_tune.experiment.objectives import trial_value
from rsst_tune.experiment.reader import error_summary
from rsst_tune.experiment.records import Objective
from rsst_tune.experiment.stops import stop_summary
from rsst_tune.results import StateResult
from rsst_tune.tune.run.context import ContextHolder, SweepContext, running_context
from rsst_tune.tune.run.ray_state import backup_ray_state
from rsst_tune.tune.run.storage import storage_error
from rsst_tune.utilisation import fmt_utilisation

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
BACKUP_EVERY_S = 2.0
_SHOWN_KEYS = ("state", "val_acc", "test_acc", "macs_frac", "params_frac", "sparsity")
_USE_KEYS = ("images_per_s", "gpu_busy", "mfu")  # rsst_tune.utilisation


class SweepConsole(ContextHolder, Callback):
    """Live one-line-per-event view of a sweep (picklable: Ray stores it with the Tuner, without
    its context)."""

    def __init__(
        self,
        events_path: str,
        objectives: Sequence[Objective],
        base_config: Mapping[str, Any],
        *,
        context: SweepContext,
        experiment_dir: str = "",
        show: bool = True,
    ) -> None:
        self.bind(context)
        self.events_path = events_path
        self.experiment_dir = experiment_dir
        self.objectives = tuple(objectives)
        self.base_config = dict(base_config)
        self.show = show
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.monotonic()
        self._last_backup = -BACKUP_EVERY_S
        self._states: dict[str, list[StateResult]] = {}
        self._status: dict[str, str] = {}

    # ------------------------------------------------------------------ Ray hooks
    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self._reset()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # Keep a copy of Ray's last intact experiment state: a full disk cuts the one Ray
        # rewrites every second, and `--resume` then falls back to this copy.
        now = time.monotonic()
        if now - getattr(self, "_last_backup", -BACKUP_EVERY_S) < BACKUP_EVERY_S:
            return
        storage_failed = self.context.storage_failure is not None
        if self.experiment_dir and "://" not in self.experiment_dir and not storage_failed:
            try:
                if backup_ray_state(Path(self.experiment_dir)):
                    self._last_backup = now
            except (OSError, ConfigError) as exc:  # ConfigError: the resume key (trust)
                log.debug("no backup of Ray's experiment state: %s", exc)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._status[trial.trial_id] = "running"
        searched = {k: v for k, v in trial.config.items() if self.base_config.get(k, object()) != v}
        self._event("start", trial, params=searched)
        self._line(trial, "running", _fmt_params(searched))

    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._event("restore", trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "state" not in result:
            return
        try:
            self._states.setdefault(trial.trial_id, []).append(StateResult.from_dict(result))
        except ConfigError as exc:  # not a pruning state (a result of someone else's trainable)
            log.debug("trial %s: unreadable result: %s", trial.trial_id, exc)
            return
        # pid / node_ip: the worker that ran the state (Ray adds them to every result)
        row = {
            k: result[k]
            for k in (*_SHOWN_KEYS, *_USE_KEYS, "wall_time_s", "pid", "node_ip")
            if k in result
        }
        self._event("state", trial, **row)
        last = int(result.get("pruning_times", 0)) - 1
        text = (  # states are numbered as everywhere else: 0 is the dense one
            f"state {int(result['state'])} of 0..{last if last >= 0 else '?'}  "
            f"val {_pct(result.get('val_acc'))}  "
            f"test {_pct(result.get('test_acc'))}  MACs {_pct(result.get('macs_frac'))}  "
            f"params {_pct(result.get('params_frac'))}  ({result.get('wall_time_s', 0):.1f}s"
            f"{_fmt_use(result)})"
        )
        self._line(trial, "", text)

    def on_trial_save(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Ray has registered the state's checkpoint: from now on a resume starts after it.
        self._event("saved", trial, state=(trial.last_result or {}).get("state"))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if is_complete(last):
            status, text = "done", ""
        else:
            status = "pruned"
            text = f"stopped after state {int(last.get('state', -1))} by the scheduler"
        self._status[trial.trial_id] = status
        if status == "pruned" and "state" in last:  # where the scheduler stopped it
            self._event(status, trial, state=int(last["state"]))
        else:
            self._event(status, trial)
        self._line(trial, status, text)
        self._summary()

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Ray restarts the trial from its last state checkpoint (`--max-failures`).
        self._status[trial.trial_id] = "running"
        message = self._error(trial)
        failures = int(getattr(trial.run_metadata, "num_failures", 0))
        limit = getattr(trial, "max_failures", None)
        self._event("retry", trial, error=message, failures=failures, max_failures=limit)
        of = f"/{limit}" if isinstance(limit, int) and limit >= 0 else ""
        self._line(trial, "retry", f"{failures}{of} after: {message}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._status[trial.trial_id] = "error"
        message = self._error(trial)
        where = trial.error_file
        if self.experiment_dir and "://" not in self.experiment_dir:
            where = str(Path(self.experiment_dir) / f"trial_{trial.trial_id}" / "error.txt")
        self._event("error", trial, error=message, error_file=where)
        self._line(trial, "error", f"{message}  (traceback: {where})")
        self._summary()

    def _error(self, trial: Any) -> str:
        """The trial's latest error in one line; a storage error stops the sweep."""
        text = _error_text(trial)
        exc = _storage_error_in(text, self.experiment_dir)
        if exc is not None:
            self.context.note_storage_failure(exc)
        return error_summary(text) if text else "failed"

    # ------------------------------------------------------------------ output
    def _line(self, trial: Any, status: str, text: str) -> None:
        if not self.show:
            return
        elapsed = time.monotonic() - self._t0
        print(
            f"{elapsed:7.1f}s  trial {trial.trial_id:<12} {status:<8} {text}".rstrip(), flush=True
        )

    def _summary(self) -> None:
        if not self.show:
            return
        counts = {s: 0 for s in ("running", "done", "pruned", "error")}
        for status in self._status.values():
            counts[status] = counts.get(status, 0) + 1
        parts = [f"{n} {s}" for s, n in counts.items()]
        best = self._best()
        print(f"{'':9}[{', '.join(parts)}]{'  ' + best if best else ''}", flush=True)

    def _best(self) -> str:
        obj = self.objectives[0]
        finished = [t for t, s in self._status.items() if s == "done"]
        values = [
            (v, t) for t in finished if (v := trial_value(obj, self._states.get(t, []))) is not None
        ]
        if not values:
            return ""
        value, trial_id = (max if obj.mode == "max" else min)(values)
        text = f"best {obj.key} {_fmt_value(obj.metric, value)} (trial {trial_id})"
        if len(self.objectives) > 1:
            text += f"; Pareto front {self._front_size()} states"
        return text

    def _front_size(self) -> int:
        points = []
        for states in self._states.values():
            for s in states:
                values = [s.metric(o.metric) for o in self.objectives]
                if all(v is not None for v in values):
                    points.append(
                        tuple(
                            v * (1 if o.mode == "max" else -1)
                            for v, o in zip(values, self.objectives, strict=True)
                            if v is not None
                        )
                    )
        front = [
            p
            for p in points
            if not any(q != p and all(a >= b for a, b in zip(q, p)) for q in points)
        ]
        return len(set(front))

    def _event(self, event: str, trial: Any, **fields: Any) -> None:
        record = {"time": time.time(), "event": event, "trial_id": trial.trial_id, **fields}
        with contextlib.suppress(OSError), open(self.events_path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


def print_stop_summary(experiment: Experiment, *, show: bool = True) -> None:
    """At the sweep's end: what the early-stopping scheduler stopped, in one line (the one the
    report shows: `rsst_tune.experiment.stops.stop_summary`); nothing for fifo."""
    summary = stop_summary(experiment)
    if show and summary is not None:
        print(summary.line(), flush=True)


def _fmt_use(result: Mapping[str, Any]) -> str:
    """`; 1,234 img/s, GPU busy 87%, MFU 12.3%`: the state's training utilisation, the parts
    it recorded (nothing for a state 0 loaded from the dense cache, or an older result)."""
    values = [result.get(k) for k in _USE_KEYS]
    if not all(v is None or isinstance(v, int | float) for v in values):
        return ""
    text = fmt_utilisation(*values)
    return f"; {text}" if text else ""


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _fmt_value(metric: str, value: float) -> str:
    if metric.endswith(("_acc", "_frac", "_total")) or metric == "sparsity":
        return _pct(value)
    return f"{value:.4g}"


def _fmt_params(params: Mapping[str, Any]) -> str:
    parts = []
    for k, v in sorted(params.items()):
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def _error_text(trial: Any) -> str:
    try:
        return Path(trial.error_file).read_text(errors="replace")
    except (OSError, TypeError):
        return ""


# ENOSPC, EDQUOT, EROFS anywhere; EACCES/EPERM on a file of the experiment directory
_STORAGE_MESSAGE = re.compile(r"\[Errno (28|122|30|13|1)\] ([^:\n]+)(?::\s*'([^'\n]*)')?")


def _storage_error_in(text: str, root: str) -> OSError | None:
    for match in _STORAGE_MESSAGE.finditer(text):
        code, filename = int(match.group(1)), match.group(3)
        if code in (13, 1) and not (root and filename and filename.startswith(root)):
            continue
        return OSError(code, os.strerror(code), filename)
    return None


# How a full or read-only disk reads in a message that carries no exception
_FULL_STORAGE_TEXT = {os.strerror(code): code for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)}


def _names_full_storage(record: logging.LogRecord) -> OSError | None:
    """The storage error a WARNING or worse record names in its text, if any."""
    if record.levelno < logging.WARNING:
        return None
    try:
        text = record.getMessage()
    except (TypeError, ValueError):  # a record whose arguments do not fit its message
        return None
    for words, code in _FULL_STORAGE_TEXT.items():
        if words in text:
            return OSError(code, words)
    return None


class StorageGuard(ContextHolder, Stopper):
    """Ends the whole sweep once a storage error was noted in its `SweepContext`.

    Ray saves the stopper in its experiment state and, on `--resume`, replaces the one it is
    given with that copy, which holds no context: it reads the context of the sweep running in
    this thread (`context.running_context`)."""

    def __init__(self, context: SweepContext) -> None:
        self.bind(context)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        context = self._sweep_context or running_context()
        return context is not None and context.storage_failure is not None


# ---------------------------------------------------------------------- quiet logging
class _QuietFilter(logging.Filter):
    """On the console, Ray/Optuna/warnings chatter below ERROR is dropped (it is in sweep.log)."""

    NOISY = ("ray", "optuna", "py.warnings", "filelock", "urllib3", "wandb")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and storage_error(record.exc_info[1] or Exception()) is not None:
            return False  # a storage error: in sweep.log; the sweep stops with one line
        if _names_full_storage(record) is not None:
            return False  # the same, reported by Ray as text (e.g. its state sync failed)
        if record.levelno >= logging.ERROR:
            # Ray's summary of failed trials repeats what the console already said per trial.
            return not str(record.msg).startswith("Trials did not complete")
        return not record.name.startswith(self.NOISY)


class _SweepLogHandler(logging.FileHandler):
    """`sweep.log`; a write the storage refuses (disk full) stops the sweep instead of printing
    a logging traceback on the console for every record."""

    def __init__(self, path: Path, context: SweepContext) -> None:
        super().__init__(path)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            failure = storage_error(record.exc_info[1])  # e.g. Ray's state sync: disk full
            if failure is not None:
                self.context.note_storage_failure(failure)
        named = _names_full_storage(record)  # the same, as text only
        if named is not None and self.context.storage_failure is None:
            self.context.note_storage_failure(named)
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        failure = storage_error(exc) if exc is not None else None
        if failure is None:
            super().handleError(record)
        else:
            self.context.note_storage_failure(failure)


@contextlib.contextmanager
def sweep_logging(log_dir: Path, *, context: SweepContext, verbose: bool = False) -> Iterator[Path]:
    """Full logs to `log_dir/sweep.log`; the console keeps only our own warnings and errors. A
    record the storage refuses is noted in `context` (the sweep then stops)."""
    import optuna

    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / SWEEP_LOG
    handler = _SweepLogHandler(path, context)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    ray_logger = logging.getLogger("ray")
    quiet = _QuietFilter()
    console_handlers = [
        h
        for h in (*root.handlers, *ray_logger.handlers)
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    saved_root_level = root.level
    saved_levels = [(h, h.level) for h in console_handlers]
    saved_optuna = optuna.logging.get_verbosity()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    ray_logger.addHandler(handler)
    for h in console_handlers:
        h.addFilter(quiet)
        if not verbose and h.level < logging.WARNING:
            h.setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        logging.captureWarnings(False)
        optuna.logging.disable_propagation()
        optuna.logging.enable_default_handler()
        optuna.logging.set_verbosity(saved_optuna)
        for h, level in saved_levels:
            h.removeFilter(quiet)
            h.setLevel(level)
        ray_logger.removeHandler(handler)
        root.removeHandler(handler)
        root.setLevel(saved_root_level)
        with contextlib.suppress(OSError):  # a full disk: what is buffered is lost
            handler.close()
