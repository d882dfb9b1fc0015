"""What one sweep's pieces tell each other while Ray runs it: `SweepContext`.

Ray calls the pieces of a sweep separately (the trials' `handle_error`/`should_recover`, the
searcher, the callbacks, the stopper), each from its own hook, and one process may run many
sweeps (a driver running several, the tests). So the sweep's runner creates one `SweepContext`
per sweep (the seed-confirmation stage one of its own) and hands it to each piece that needs it
when it builds it:

* the trials' failures: `retries._RetryAwareTrial` notes each failure of its trial (whether it
  is retried, the error as one line), which its own `should_recover` and the searcher (the
  Optuna FAIL reason) read;
* the first storage error of the sweep (disk full, permission): the searcher, the console,
  `sweep.log` and the runner note it; `console.StorageGuard` then ends the sweep and the runner
  reports it in one line;
* the caller's environment that `ray_setup.prepare_ray_env` overrides until Ray has started.

The context is never saved: Ray pickles the searcher and the callbacks into `tuner.pkl`, the
stopper into its experiment state, the searcher's own state into `searcher-state-*.pkl`, and a
trial's `__dict__` into its JSON state. Each piece drops its context from what it pickles
(`ContextHolder`, `_RetryAwareTrial.__getstate__`), so Ray's files are byte for byte what they
were without it, and a piece unpickled from them holds none until it is bound again
(`ContextHolder.bind`: the runner binds the pieces of a restored Tuner on `--resume`).

One piece cannot be bound that way: on `--resume` Ray replaces the stopper it is given with the
one it unpickles from its experiment state (`TuneController.__setstate__`), inside
`tuner.fit()`. The runner therefore runs `fit` inside `running(context)`, and a `StorageGuard`
that holds no context reads the context of the sweep running in its thread
(`running_context()`): a `contextvars.ContextVar`, set for the duration of `fit` and reset
after it, so neither a later sweep nor another thread ever sees it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from rsst_tune.tune.run.ray_setup import SavedRayEnv
from rsst_tune.tune.run.storage import describe_storage_error

log = logging.getLogger(__name__)

CONTEXT_ATTR = "_sweep_context"  # the attribute a piece holds its context in (never pickled)


class TrialFailure(NamedTuple):
    """A trial's latest failure: whether it is final (not retried) and the error as one line."""

    final: bool
    line: str


@dataclass(eq=False)
class SweepContext:
    """The state one sweep's pieces share (see the module doc); one per sweep, never pickled."""

    # Ray trial id -> its latest failure (in the driver)
    trial_failures: dict[str, TrialFailure] = field(default_factory=dict)
    # the first storage error of the sweep; None while there was none
    storage_failure: OSError | None = None
    # the caller's environment while `prepare_ray_env(None, ray_env)` overrides it
    ray_env: SavedRayEnv = field(default_factory=SavedRayEnv)

    def note_trial_failure(self, trial_id: str, *, final: bool, line: str) -> None:
        self.trial_failures[str(trial_id)] = TrialFailure(final, line)

    def failure_line(self, trial_id: str) -> str | None:
        """The latest failure of the trial as one line (`TrialDiverged: diverged in state 1,
        epoch 2 (loss nan)`), None when it has not failed in this sweep."""
        failure = self.trial_failures.get(str(trial_id))
        return failure.line if failure else None

    def failed_for_good(self, trial_id: str) -> bool:
        """Whether the trial's latest failure is one that is not retried."""
        failure = self.trial_failures.get(str(trial_id))
        return failure is not None and failure.final

    def note_storage_failure(self, exc: OSError) -> None:
        """Keep the sweep's first storage error; the sweep then stops (`StorageGuard`)."""
        if self.storage_failure is None:
            self.storage_failure = exc  # first: the log line below may itself fail (disk full)
            log.info("%s; stopping the sweep", describe_storage_error(exc))

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a SweepContext is never pickled: the piece holding it must drop it "
            "(rsst_tune.tune.run.context)"
        )


class ContextHolder:
    """A piece of a sweep that holds its `SweepContext` but never pickles it (mixed into the
    Ray callbacks, the stopper and the searcher). A holder unpickled from Ray's files holds
    none until `bind` gives it one."""

    _sweep_context: SweepContext | None = None  # unpickled (unbound) copies read this

    def bind(self, context: SweepContext) -> None:
        self._sweep_context = context

    @property
    def context(self) -> SweepContext:
        if self._sweep_context is None:
            raise RuntimeError(
                f"{type(self).__name__} holds no SweepContext: a piece restored from Ray's "
                "files must be bound to its sweep's context (runner._bind_restored)"
            )
        return self._sweep_context

    def __getstate__(self) -> dict[str, Any] | None:
        # What `object.__getstate__` returns without the context: None for an empty __dict__,
        # so the pickle is byte for byte the one Ray wrote before the context existed.
        state = {k: v for k, v in self.__dict__.items() if k != CONTEXT_ATTR}
        return state or None


_RUNNING: contextvars.ContextVar[SweepContext | None] = contextvars.ContextVar(
    "rsst_tune_running_sweep", default=None
)


@contextlib.contextmanager
def running(context: SweepContext) -> Iterator[SweepContext]:
    """The sweep `context` runs in this thread until the block ends (`tuner.fit()`)."""
    token = _RUNNING.set(context)
    try:
        yield context
    finally:
        _RUNNING.reset(token)


def running_context() -> SweepContext | None:
    """The context of the sweep running in this thread (`running`), None outside one."""
    return _RUNNING.get()
