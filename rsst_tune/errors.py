"""Errors that reach the user as one line.

`ConfigError` is bad input: the CLI prints it and exits with status 2. `SweepInterrupted` is
a sweep that stopped before its trials finished: the CLI prints how to resume it and exits
with status 130.
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
