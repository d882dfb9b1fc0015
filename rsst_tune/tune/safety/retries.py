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
`fail_reason` (the error as one line, `SweepContext.failure_line`), an `error` event and a
report row.

Each failure is noted in the sweep's `SweepContext` (`rsst_tune.tune.run.context`), which
`RetryPolicy` is given and hands to every trial it adopts: Ray calls the trial's `handle_error`
and `should_recover`, and then the searcher's `on_trial_complete`, before any callback hears of
the failure. The trial's context is left out of its state (`__getstate__`), so Ray's
experiment state is byte for byte the one of its own `Trial`; a trial restored by `--resume`
is adopted again when it starts.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from rsst_tune.errors import ConfigError, TrialDiverged, describe_exception
from rsst_tune.experiment.reader import error_summary
from rsst_tune.tune.run.context import CONTEXT_ATTR, ContextHolder, SweepContext

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


def _one_line(exc: BaseException | None) -> str:

    cause = deterministic_cause(exc)
    if cause is not None:
        return describe_exception(cause)
    return error_summary(str(exc)) if exc is not None else "failed"


class _RetryAwareTrial(Trial):
    """Ray's `Trial`, but a failure in `NOT_RETRIED` raised by the trial's code is final.

    Its sweep's context (set by `adopt`) is an instance attribute that its state leaves out."""

    _sweep_context: SweepContext | None = None  # a copy Ray made of an adopted trial: none

    def handle_error(self, exc: Any = None) -> None:
        super().handle_error(exc)
        if self._sweep_context is not None:
            self._sweep_context.note_trial_failure(
                str(self.trial_id), final=deterministic_cause(exc) is not None, line=_one_line(exc)
            )

    def should_recover(self) -> bool:
        context = self._sweep_context
        if context is not None and context.failed_for_good(str(self.trial_id)):
            return False
        return bool(super().should_recover())  # type: ignore[no-untyped-call]

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()  # type: ignore[no-untyped-call]
        state.pop(CONTEXT_ATTR, None)  # Ray's experiment state is the one of its own Trial
        return state


def adopt(trial: Any, context: SweepContext) -> None:
    """Make `trial` (Ray's `Trial`) a `_RetryAwareTrial` that notes its failures in `context`
    (an instance attribute, left out of the trial's state)."""
    if type(trial) is Trial:
        trial.__class__ = _RetryAwareTrial
    if isinstance(trial, _RetryAwareTrial) and trial._sweep_context is not context:
        trial._sweep_context = context


class RetryPolicy(ContextHolder, Callback):
    """The sweep's callback that makes every trial a `_RetryAwareTrial` of its sweep's context
    before it can fail (the context is not pickled with the callback: see `ContextHolder`)."""

    def __init__(self, context: SweepContext) -> None:
        self.bind(context)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for trial in trials:
            adopt(trial, self.context)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        adopt(trial, self.context)
