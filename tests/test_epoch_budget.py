"""`--epoch-budget`: a sweep starts no trial once its trial-epochs are spent or committed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import tune_main_env
from ray.tune.search import Searcher

from rsst_tune.errors import ConfigError
from rsst_tune.tune import SweepOptions, load_experiment, resolve_plan, run_sweep
from rsst_tune.tune.cli import build_parser
from rsst_tune.tune.plan import SweepPlan
from rsst_tune.tune.search.epoch_budget import EpochBudget, state_costs

REPO = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = {"model": "vit_digits", "dataset": "digits", "pruning_times": 3}


class Scripted(Searcher):
    """A searcher that proposes one fixed config per call and records what it was told."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(metric="val_acc", mode="max")
        self.config = config
        self.asked: list[str] = []
        self.completed: list[str] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self.asked.append(trial_id)
        return dict(self.config)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.completed.append(trial_id)


def _ask(searcher: Searcher, trial_id: str) -> Any:
    """A suggestion: a config, None (wait) or Searcher.FINISHED (a str)."""
    return searcher.suggest(trial_id)


def _state(state: int, epochs: int) -> dict[str, Any]:
    return {"state": state, "epochs_trained": epochs, "pruning_times": 3}


def test_state_costs_follow_epochs_and_finetune_epochs() -> None:
    assert state_costs({**BASE, "epochs": 4}) == {0: 4, 1: 4, 2: 4}
    assert state_costs({**BASE, "epochs": 4, "finetune_epochs": 1}) == {0: 4, 1: 1, 2: 1}
    # a trial on 2 data-parallel workers spends 2 device-epochs per epoch
    assert state_costs({**BASE, "epochs": 4}, workers=2) == {0: 8, 1: 8, 2: 8}


def test_budget_counts_spent_and_committed_and_gives_back_a_stopped_trials_epochs() -> None:
    inner = Scripted({"epochs": 2})  # each trial: states 0, 1, 2 of 2 epochs = 6 at most
    budget = EpochBudget(inner, 13, BASE)
    assert budget.suggest("a") == {"epochs": 2}  # 0 spent, 0 committed
    assert (budget.spent, budget.committed) == (0, 6)
    assert budget.suggest("b") == {"epochs": 2}  # 6 < 13
    assert budget.committed == 12
    budget.on_trial_result("a", _state(0, 2))
    budget.on_trial_result("b", _state(0, 0))  # state 0 from the dense cache: costs nothing
    assert (budget.spent, budget.committed) == (2, 8)
    assert budget.suggest("c") == {"epochs": 2}  # 10 < 13: admitted (6 more committed)
    assert (budget.spent, budget.committed) == (2, 14)
    assert budget.suggest("d") is None  # 16 >= 13 while trials run: wait, not finished
    assert inner.asked == ["a", "b", "c"]  # the inner searcher was not asked for "d"
    # a scheduler stops "a" after state 1 (its last result reaches on_trial_complete only)
    budget.on_trial_complete("a", _state(1, 2))
    assert (budget.spent, budget.committed) == (4, 10)  # state 2 of "a" is given back
    assert inner.completed == ["a"]
    assert budget.suggest("d") is None  # 14 >= 13
    budget.on_trial_complete("b", _state(2, 2))  # b ran to the end: 0 + 2 + 2 (its state 1
    assert (budget.spent, budget.committed) == (6, 6)  # counts from its last row only)
    assert budget.suggest("e") == {"epochs": 2}  # 12 < 13: admitted
    assert budget.suggest("f") is None
    for trial in ("c", "e"):
        for state in (0, 1, 2):
            budget.on_trial_result(trial, _state(state, 2))
        budget.on_trial_complete(trial, _state(2, 2))
    assert (budget.spent, budget.committed) == (18, 0)
    assert _ask(budget, "f") == Searcher.FINISHED  # spent >= 13 and nothing runs
    assert inner.asked == ["a", "b", "c", "e"]


def test_budget_option_is_checked_and_stored_in_the_plan(tmp_path: Path) -> None:
    opts: dict[str, Any] = {"space": "vit_head_mlp", "preset": "smoke", "storage": str(tmp_path)}
    plan = resolve_plan(SweepOptions(**opts, epoch_budget=40))
    assert plan.epoch_budget == 40
    assert SweepPlan.from_json(plan.to_json()).epoch_budget == 40
    assert resolve_plan(SweepOptions(**opts)).epoch_budget is None
    bad: Any
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ConfigError, match="--epoch-budget"):
            resolve_plan(SweepOptions(**opts, epoch_budget=bad))
    args = build_parser().parse_args(["--space", "vit_head_mlp", "--epoch-budget", "12"])
    assert args.epoch_budget == 12
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--space", "vit_head_mlp", "--epoch-budget", "ten"])


@pytest.mark.sweep
def test_a_sweep_stops_starting_trials_at_its_epoch_budget(
    ray_cluster: str, tmp_path: Path
) -> None:
    """One trial at a time, 2 states of 1 epoch, the dense state 0 shared (the smoke preset
    pins lr): the first trial costs 2 epochs, each later one 1 (its state 0 comes from the
    cache). Budget 4: trial 1 starts (0 used), trial 2 (2 spent), trial 3 (3 spent); then 4
    are spent: no 4th trial although --num-samples allows 8, and the sweep ends normally."""
    plan = resolve_plan(
        SweepOptions(
            space="vit_head_mlp",
            preset="smoke",
            dataset="digits",
            model="vit_digits",
            states=2,
            epochs=1,
            num_samples=8,
            max_concurrent=1,
            scheduler="fifo",
            epoch_budget=4,
            confirm=0,
            onnx=False,
            storage=str(tmp_path),
            name="budget",
        )
    )
    assert run_sweep(plan, show=False) is not None  # not "interrupted": the budget ended it
    exp = load_experiment(tmp_path / "budget")
    spent = sum(s.epochs_trained for t in exp.trials for s in t.states)
    assert len(exp.trials) == 3, [(t.trial_id, t.status) for t in exp.trials]
    assert all(t.status == "complete" for t in exp.trials)
    assert spent == 4
    # after a resume the wrapper recounts from the record: the budget is spent, nothing starts
    inner = Scripted({"epochs": 1})
    resumed = EpochBudget(inner, 4, plan.base_config, str(tmp_path / "budget"))
    resumed.set_state({})  # what Ray's restore calls
    assert _ask(resumed, "x") == Searcher.FINISHED and inner.asked == []
    assert (resumed.spent, resumed.committed) == (4, 0)
    larger = EpochBudget(inner, 5, plan.base_config, str(tmp_path / "budget"))
    larger.set_state({})
    assert larger.suggest("x") == {"epochs": 1} and inner.asked == ["x"]


@pytest.mark.sweep
def test_an_interrupted_budgeted_sweep_resumes_to_the_same_budget(
    ray_cluster: str,
    tmp_path: Path,
    interrupt_after_first_state: Callable[[subprocess.Popen[str], Path], str],
) -> None:
    """SIGINT after the first state, then --resume: Ray restores the budget wrapper from its
    pickle and it recounts from the record; the sweep still stops at 3 trials and 4 epochs."""
    env = tune_main_env()
    cmd = [sys.executable, str(REPO / "tune_main.py"), "--space", "vit_head_mlp"]
    cmd += ["--preset", "smoke", "--dataset", "digits", "--model", "vit_digits"]
    cmd += ["--states", "2", "--epochs", "1", "--num-samples", "8", "--max-concurrent", "1"]
    cmd += ["--scheduler", "fifo", "--confirm", "0", "--no-onnx", "--epoch-budget", "4"]
    cmd += ["--storage", str(tmp_path), "--name", "b", "--address", ray_cluster]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = interrupt_after_first_state(proc, tmp_path / "b")
    assert proc.returncode == 130, out
    resume = [sys.executable, str(REPO / "tune_main.py"), "--resume", str(tmp_path / "b")]
    res = subprocess.run(
        [*resume, "--address", ray_cluster],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "trial-epochs spent: 4 (--epoch-budget 4)" in res.stdout, res.stdout
    exp = load_experiment(tmp_path / "b")
    assert [t.status for t in exp.trials] == ["complete"] * 3
    assert sum(s.epochs_trained for t in exp.trials for s in t.states) == 4


def test_tpe_startup_under_a_budget_counts_the_full_length_trials_it_buys() -> None:
    from rsst_tune.tune.search.epoch_budget import full_trials
    from rsst_tune.tune.search.samplers import tpe_startup

    base = {**BASE, "epochs": 4, "pruning_times": 4}  # 3 pruned states x 4 epochs = 12
    assert full_trials(196, base) == 16  # the benchmark's budget: 16 FIFO trials
    assert tpe_startup(min(32, full_trials(196, base))) == 3  # as FIFO's 16 trials, not 32's 6
    assert full_trials(5, base) == 1
    assert full_trials(40, {**base, "finetune_epochs": 1}) == 13  # 3 epochs per trial
