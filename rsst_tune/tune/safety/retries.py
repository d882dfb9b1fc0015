"""Which trial failures Ray retries (`--max-failures`): infrastructure failures only.

Ray Tune retries every failure of a trial alike (`FailureConfig(max_failures=N)`), a dead worker
as well as an exception the trial's own code raised. A diverged trial (`TrialDiverged`), a
config the trial refuses (`ConfigError`) or a programming error (`TypeError`, `KeyError`, ...)
fails the same way every time: retrying it only spends the retries. Ray 2.60 has no option for
this, so `RetryPolicy`, a Ray callback, makes each trial of the sweep a `_RetryAwareTrial`: Ray's
`Trial` whose `should_recover` (asked by Ray right after a failure) says no when that failure
was raised by the trial's code and is one of `NOT_RETRIED`. Everything else (the worker or node
died, out of memory, an OSError, a RuntimeError such as a CUDA error) is retried as before.

A trial not retried ends exactly as one whose retries ran out: Ray `ERROR`, Optuna `FAIL` with
`fail_reason` (the error as one line, `failure_line`), an `error` event and a report row.

The subclass holds no state of its own (the failures are kept in this module, in the driver),
so Ray's experiment state is the same as with its own `Trial`; a trial restored by `--resume`
is adopted again when it starts.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from rsst_tune.errors import ConfigError, TrialDiverged, describe_exception

# Raised by the trial's code, these fail again on a retry: the trial ends at the first one.
NOT_RETRIED: tuple[type[BaseException], ...] = (
    TrialDiverged,
    ConfigError,
    TypeError,
    AttributeError,
    NameError,
    KeyError,
    IndexError,
    AssertionError,
    NotImplementedError,
    ZeroDivisionError,
)

_latest: dict[str, tuple[bool, str]] = {}  # Ray trial id -> (not retried, one line) (driver)


def deterministic_cause(exc: BaseException | None) -> BaseException | None:
    """The exception of `NOT_RETRIED` behind `exc` (Ray wraps the trial's exception in a
    `RayTaskError` whose `cause` it is), None for any other failure."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NOT_RETRIED):
            cause = getattr(exc, "cause", None)  # Ray's dual RayTaskError(cause) instance
            return cause if isinstance(cause, NOT_RETRIED) else exc
        exc = getattr(exc, "cause", None)
    return None


def failure_line(trial_id: str) -> str | None:
    """The latest failure of the trial as one line (`TrialDiverged: diverged in state 1,
    epoch 2 (loss nan)`), None when it has not failed in this driver."""
    latest = _latest.get(trial_id)
    return latest[1] if latest else None


def _one_line(exc: BaseException | None) -> str:
    from rsst_tune.experiment.reader import error_summary

    cause = deterministic_cause(exc)
    if cause is not None:
        return describe_exception(cause)
    return error_summary(str(exc)) if exc is not None else "failed"


class _RetryAwareTrial(Trial):
    """Ray's `Trial`, but a failure in `NOT_RETRIED` raised by the trial's code is final."""

    def handle_error(self, exc: Any = None) -> None:
        super().handle_error(exc)
        _latest[str(self.trial_id)] = (deterministic_cause(exc) is not None, _one_line(exc))

    def should_recover(self) -> bool:
        latest = _latest.get(str(self.trial_id))
        if latest is not None and latest[0]:
            return False
        return bool(super().should_recover())  # type: ignore[no-untyped-call]


def adopt(trial: Any) -> None:
    """Make `trial` (Ray's `Trial`) a `_RetryAwareTrial` (no state of its own is added)."""
    if type(trial) is Trial:
        trial.__class__ = _RetryAwareTrial


class RetryPolicy(Callback):
    """The sweep's callback that makes every trial a `_RetryAwareTrial` before it can fail."""

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for trial in trials:
            adopt(trial)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        adopt(trial)
