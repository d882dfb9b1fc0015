"""`--epoch-budget B`: a sweep that starts no trial once B trial-epochs are spent or committed.

A trial-epoch is one epoch of one trial (a state 0 loaded from the shared dense cache costs
0: each state's `epochs_trained` is what counts); a trial on N data-parallel workers
(`--workers-per-trial N`) costs N per epoch: the budget counts device-epochs. `EpochBudget`
wraps the sweep's searcher (as Ray's `ConcurrencyLimiter` does) and, before each new trial,
adds

* the epochs spent: `epochs_trained` of every pruning state reported so far, and
* the epochs committed: for each running trial, the epochs of its states not yet reported
  (`TrialConfig.state_epochs`, at most; a state 0 that turns out to come from the dense cache
  gives its share back when it reports),

and starts a trial only while that sum is below B. At or above B it waits while trials run
(they may give epochs back: a trial an early-stopping scheduler stops, a state 0 that came
from the cache), and once nothing runs it generates no more trials (Ray's
`Searcher.FINISHED`) and the sweep ends. So a sweep spends at most B plus the epochs of the
last trial admitted, and every epoch below B is used; with an early-stopping scheduler
(`--scheduler moasha`) the epochs a stopped trial did not spend go to new trials: with a budget,
MO-ASHA's savings become more trials instead of an earlier end. `--num-samples` still caps
the number of trials; give a large one to let the budget decide.

Resume: the wrapper keeps no state of its own in Ray's search checkpoint; after `--resume` it
recounts from the sweep's record (`load_experiment`: the states every trial reported, and the
unfinished trials Ray resumes), so a resumed sweep honours the same budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from rsst_tune.config import TrialConfig
from rsst_tune.experiment.reader import load_experiment

log = logging.getLogger(__name__)


def state_costs(config: Mapping[str, Any], workers: int = 1) -> dict[int, int]:
    """State -> the most device-epochs a trial of `config` (a full TrialConfig dict) on
    `workers` workers trains in it (its epochs x workers)."""
    cfg = TrialConfig.from_dict(dict(config))
    return {s: cfg.state_epochs(s) * workers for s in range(cfg.pruning_times)}


def full_trials(budget: int, base_config: Mapping[str, Any], workers: int = 1) -> int:
    """How many trials of `base_config` the budget buys when each runs every state: its
    pruned states' epochs per trial (state 0 is shared through the dense cache), at least 1.
    What TPE's random start-up is sized by under a budget (`samplers.tpe_startup`): an
    early-stopping sweep admits more, shorter trials, which should not buy more random ones."""
    per_trial = sum(e for s, e in state_costs(base_config, workers).items() if s > 0)
    return max(1, int(budget) // max(1, per_trial))


class EpochBudget(Searcher):
    """Wraps a searcher; its `suggest` returns FINISHED once spent + committed epochs reach
    `budget` (see the module docstring)."""

    def __init__(
        self,
        searcher: Searcher,
        budget: int,
        base_config: Mapping[str, Any],
        experiment_dir: str | None = None,
        workers: int = 1,
    ) -> None:
        if int(budget) < 1:
            raise ValueError(f"an epoch budget must be a positive number of epochs, got {budget}")
        self.searcher = searcher  # Ray's SearchGenerator walks wrappers by this name
        self.budget = int(budget)
        self._base = dict(base_config)
        self._experiment_dir = experiment_dir
        self.workers = workers  # a trial's epoch costs this many device-epochs
        self._spent: dict[tuple[str, int], int] = {}  # (trial, state) -> epochs trained
        self._left: dict[str, dict[int, int]] = {}  # running trial -> {state: epochs, at most}
        self._recount = False
        self._said = False
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # ------------------------------------------------------------------ accounting
    @property
    def spent(self) -> int:
        return sum(self._spent.values())

    @property
    def committed(self) -> int:
        return sum(sum(left.values()) for left in self._left.values())

    def _record(self, trial_id: str, result: Mapping[str, Any] | None) -> None:
        if not result or "state" not in result:
            return
        state = int(result["state"])
        epochs = int(result.get("epochs_trained", 0) or 0)
        self._spent[(trial_id, state)] = epochs * self.workers
        left = self._left.get(trial_id)
        if left is not None:
            for s in [s for s in left if s <= state]:
                del left[s]

    def _recount_from_record(self) -> None:
        """After a resume: spent and committed epochs from the sweep's record."""
        self._recount = False
        if self._experiment_dir is None or not Path(self._experiment_dir).is_dir():
            return

        self._spent.clear()
        self._left.clear()
        for trial in load_experiment(self._experiment_dir).trials:
            reported = {s.state: int(s.epochs_trained) for s in trial.states}
            for state, epochs in reported.items():
                self._spent[(trial.trial_id, state)] = epochs * self.workers
            if trial.status == "running":  # Ray resumes it: what it has left is committed
                costs = state_costs({**self._base, **trial.config}, self.workers)
                last = max(reported, default=-1)
                self._left[trial.trial_id] = {s: e for s, e in costs.items() if s > last}
        log.info(
            "epoch budget after the resume: %d spent, %d committed of %d",
            self.spent,
            self.committed,
            self.budget,
        )

    # ------------------------------------------------------------------ Searcher
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return bool(self.searcher.set_search_properties(metric, mode, config, **spec))

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return bool(self.searcher.set_max_concurrency(max_concurrent))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._recount:
            self._recount_from_record()
        if self.spent + self.committed >= self.budget:
            if self.committed > 0:  # running trials may still give epochs back (a stop, a
                return None  # state 0 from the dense cache): ask again later
            if not self._said:
                self._said = True
                log.warning(
                    "epoch budget reached: %d of %d trial-epochs spent; no more trials are started",
                    self.spent,
                    self.budget,
                )
            finished: Any = Searcher.FINISHED
            return finished  # type: ignore[no-any-return]
        config: Any = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._left[trial_id] = state_costs({**self._base, **config}, self.workers)
        return config  # type: ignore[no-any-return]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._record(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        # Ray does not pass the result a scheduler stops on to on_trial_result: record it here
        self._record(trial_id, result)
        self._left.pop(trial_id, None)  # a stopped or failed trial commits nothing more
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kwargs)

    def get_state(self) -> dict[str, Any]:
        return {}  # recounted from the sweep's record on restore, never from a stale copy

    def set_state(self, state: dict[str, Any]) -> None:
        self._recount = True  # called when Ray restores a sweep (`--resume`)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
