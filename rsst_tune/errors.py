"""Errors that reach the user as one line.

`ConfigError` is bad input: the CLI prints it and exits with status 2. `TrialDiverged` is a
trial whose training loss stopped being a finite number: `rsst-tune run` prints it and exits
with status 1; in a sweep the trial ends as an error and the sweep goes on. `CommandFailed` is
an unexpected error after work started, with the log file that holds its traceback (exit 1).
`SweepInterrupted` is a sweep that stopped before its trials finished: the CLI prints how to
resume it and exits with status 130. `ReportFailed` is a sweep that finished but could not
write its report (exit 1, the traceback in the sweep's log).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path


class ConfigError(ValueError):
    """Bad user input: an unknown name, a value out of range, a corrupt checkpoint.

    The message is one line and, for unknown names, lists the valid choices.
    """


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The error for an unknown registry name, naming every valid choice."""
    listed = ", ".join(sorted(choices))
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {listed}")


class TrialDiverged(RuntimeError):
    """Training diverged: an epoch's mean loss (or the trained weights) became NaN or infinite.

    Not bad input (the same config may train with another seed): the trial ends as an error,
    no result of the diverged state is reported, and nothing selects it. `state` and `epoch`
    (1-based, the epoch that ended non-finite) say where; `loss` is that epoch's mean loss.
    """

    def __init__(self, state: int, epoch: int, loss: float, what: str = "") -> None:
        super().__init__(state, epoch, loss, what)  # args: what pickling (Ray) passes back
        self.state = state
        self.epoch = epoch
        self.loss = loss
        self.what = what

    def __str__(self) -> str:
        detail = self.what or f"loss {self.loss:g}"
        return f"diverged in state {self.state}, epoch {self.epoch} ({detail})"


class CommandFailed(Exception):
    """An unexpected error after a command started work; its traceback is in `log_path`."""

    def __init__(self, message: str, log_path: str | Path | None = None) -> None:
        super().__init__(message, None if log_path is None else str(log_path))
        self.message = message
        self.log_path = None if log_path is None else str(log_path)

    def __str__(self) -> str:
        if self.log_path is None:
            return self.message
        return f"{self.message} (full traceback in {self.log_path})"


class ReportFailed(Exception):
    """A sweep finished, but its report could not be written (the traceback is in the log);
    its results are intact and `rsst-tune report DIR` writes the report again."""

    def __init__(self, experiment_dir: str | Path) -> None:
        super().__init__(str(experiment_dir))
        self.experiment_dir = str(experiment_dir)

    def __str__(self) -> str:
        return (
            f"the sweep finished but its report could not be written; its results are intact "
            f"in {self.experiment_dir} (`rsst-tune report {self.experiment_dir}` writes it again)"
        )


def describe_exception(exc: BaseException) -> str:
    """`TypeName: first line of the message`: an exception as one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class SweepInterrupted(Exception):
    """A sweep stopped before every trial finished (Ctrl+C, or trials left unfinished).

    Nothing is lost: finished pruning states are checkpointed, and the sweep continues where
    it stopped with `rsst-tune tune --resume DIR` or `rsst_tune.resume_sweep(DIR)`.

    `experiment_dir` is the directory to resume (the one holding `sweep.json`: with URI
    storage, the local directory of the sweep's own files); `resume_hint` the command that
    resumes it; `reason` what happened, e.g. "interrupted after 12s with 1 unfinished trial".

        try:
            experiment = rsst_tune.sweep("vit_head_mlp", preset="smoke")
        except rsst_tune.SweepInterrupted as stop:
            experiment = rsst_tune.resume_sweep(stop.experiment_dir)
    """

    def __init__(self, experiment_dir: str | Path, reason: str = "interrupted") -> None:
        super().__init__(str(experiment_dir), reason)  # args: what pickling passes back
        self.experiment_dir = str(experiment_dir)
        self.reason = reason

    @property
    def resume_hint(self) -> str:
        return f"rsst-tune tune --resume {shlex.quote(self.experiment_dir)}"

    def __str__(self) -> str:
        return (
            f"sweep {self.reason}; continue with: {self.resume_hint} "
            f"(Python: rsst_tune.resume_sweep({self.experiment_dir!r}))"
        )
