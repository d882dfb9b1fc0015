"""What an early-stopping scheduler (`--scheduler moasha`, `asha`) stopped, in one summary.

`stop_summary(experiment)` is the one computation; the console prints its `line()` when a
sweep ends (`console.print_stop_summary`) and the report shows the same line in its summary,
so the two never disagree:

    MO-ASHA stopped 3 of 8 trials: 2 after state 1, 1 after state 2 (saved 42 of the 72
    trial-epochs those 3 trials would have trained to the last state)

Only trials the scheduler stopped count (`TrialRecord.stopped_by` is STOPPED_BY_SCHEDULER:
Optuna has them PRUNED with `stopped_after_state` and no `stopped_by`). A trial that errored
is not stopped; one the time budget cut, or one the sweep ended otherwise, is named after the
count as not counted, as is a pruned trial whose reason was not recorded (no Optuna trial).

Trial-epochs are those of `StateResult.epochs_trained` (a state 0 from the shared dense cache
trained 0) and `TrialConfig.state_epochs` for the states a stopped trial did not run: saved =
the epochs of its states after the one it stopped at; a full run = what it trained + saved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.records import STOPPED_BY_SCHEDULER, TrialRecord

# the schedulers that stop trials early, as the line names them
EARLY_STOPPING = {"moasha": "MO-ASHA", "asha": "ASHA"}
# why a pruned trial ended early when it was not the scheduler (TrialRecord.stopped_by)
_OTHER_STOPS = {"time_budget": "cut by --time-budget", "stopped": "ended when the sweep stopped"}
_UNRECORDED = "ended early for a reason the study did not record"


@dataclass(frozen=True)
class StopSummary:
    """The trials an early-stopping scheduler stopped, per state, and the epochs it saved."""

    scheduler: str  # as the plan names it ("moasha", "asha"; "" when the record lacks it)
    trials: int  # every trial of the sweep
    stopped_after: tuple[tuple[int, int], ...]  # (state, trials stopped after it), by state
    trained_epochs: int  # what the stopped trials trained
    saved_epochs: int  # what their states after the stop would have trained
    no_config: int = 0  # stopped trials without a readable config (left out of the epochs)
    not_counted: tuple[tuple[str, int], ...] = ()  # (why, trials) of other early ends

    @property
    def stopped(self) -> int:
        return sum(n for _, n in self.stopped_after)

    @property
    def full_epochs(self) -> int:
        """What the stopped trials (those with a readable config) would have trained had
        they run to their last state."""
        return self.trained_epochs + self.saved_epochs

    def line(self) -> str:
        """The summary in one line (the console's and the report's)."""
        name = EARLY_STOPPING.get(self.scheduler, "The scheduler")
        if not self.stopped:
            text = f"{name} stopped none of {_count(self.trials, 'trial')}"
        else:
            where = ", ".join(f"{n} after state {s}" for s, n in self.stopped_after)
            text = f"{name} stopped {self.stopped} of {_count(self.trials, 'trial')}: {where}"
            with_config = self.stopped - self.no_config
            if with_config:
                whose = "that trial" if with_config == 1 else f"those {with_config} trials"
                text += (
                    f" (saved {self.saved_epochs} of the {self.full_epochs} trial-epochs "
                    f"{whose} would have trained to the last state"
                )
                if self.no_config:
                    text += f"; {self.no_config} without a readable config not included"
                text += ")"
            else:
                text += " (no readable config: the epochs saved are unknown)"
        if self.not_counted:
            others = ", ".join(f"{_count(n, 'trial')} {why}" for why, n in self.not_counted)
            text += f"; not counted: {others}"
        return text


def stop_summary(experiment: Experiment) -> StopSummary | None:
    """The early stops of `experiment`'s scheduler; None when its scheduler never stops a
    trial (fifo), or is unknown and stopped none."""
    stopped: Counter[int] = Counter()
    others: Counter[str] = Counter()
    trained = saved = no_config = 0
    for trial in experiment.trials:
        if trial.status != "pruned":  # complete, error, running: not stopped early
            continue
        if trial.stopped_by != STOPPED_BY_SCHEDULER or not trial.states:
            others[_OTHER_STOPS.get(str(trial.stopped_by), _UNRECORDED)] += 1
            continue
        last = trial.states[-1].state
        epochs = _state_epochs(trial)
        if epochs is not None and last >= len(epochs) - 1:  # ran every state: not stopped
            continue
        stopped[last] += 1
        if epochs is None:
            no_config += 1
            continue
        trained += sum(int(s.epochs_trained) for s in trial.states)
        saved += sum(epochs[last + 1 :])
    if experiment.scheduler not in EARLY_STOPPING and not (experiment.scheduler == "" and stopped):
        return None
    return StopSummary(
        scheduler=experiment.scheduler,
        trials=len(experiment.trials),
        stopped_after=tuple(sorted(stopped.items())),
        trained_epochs=trained,
        saved_epochs=saved,
        no_config=no_config,
        not_counted=tuple(sorted(others.items())),
    )


def _state_epochs(trial: TrialRecord) -> list[int] | None:
    """The epochs of each of the trial's states (`TrialConfig.state_epochs`), None when its
    config does not say (missing or unreadable: no default stands in for it)."""

    config: Any = trial.config
    if not isinstance(config, dict) or not ({"pruning_times", "states"} & config.keys()):
        return None
    try:
        cfg = TrialConfig.from_dict(config)
    except (ConfigError, TypeError, ValueError):
        return None
    return [cfg.state_epochs(s) for s in range(cfg.pruning_times)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
