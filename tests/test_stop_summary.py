"""The end-of-sweep stop summary (`rsst_tune.experiment.stops`): what an early-stopping scheduler
stopped, per state, and the trial-epochs it saved; the console and the report say the same
line. No Ray is started: records built by hand, and an experiment directory written as a sweep
leaves it (Ray's state as JSON, result.json rows, a real searcher telling a real journal)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from rsst_tune.config import TrialConfig
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.records import STOPPED_BY_SCHEDULER, Objective, TrialRecord
from rsst_tune.experiment.stops import StopSummary, stop_summary
from rsst_tune.results import StateResult
from rsst_tune.tune.console import print_stop_summary

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = (Objective("val_acc", "max"), Objective("macs_frac", "min"))
# 4 states: state 0 trains 10 epochs, states 1..3 fine-tune 5 each (a full trial: 25)
CONFIG = TrialConfig(pruning_times=4, epochs=10, finetune_epochs=5).to_dict()


def row(s: int, *, trained: int | None = None) -> dict[str, Any]:
    """A result row of state `s` as the trainable reports it (with `pruning_times`, which
    `is_complete` reads); `trained`: its epochs_trained (default: the state's epochs)."""
    macs = 1.0 - 0.2 * s
    return {
        "state": s,
        "pruning_times": 4,
        "method": "rsst",
        "val_acc": 0.95 - 0.01 * s,
        "test_acc": 0.94 - 0.01 * s,
        "train_loss": 0.4,
        "rate": 0.0 if s == 0 else 0.2,
        "density_U": macs,
        "density_R": macs,
        "sparsity": 1.0 - macs,
        "density_total": macs,
        "params": round(100_000 * macs),
        "macs": round(2_000_000 * macs),
        "params_frac": macs,
        "macs_frac": macs,
        "heads": 16,
        "neurons": 512,
        "wall_time_s": 1.0,
        "epochs_trained": (10 if s == 0 else 5) if trained is None else trained,
    }


def states(n: int, *, cached: bool = False) -> tuple[StateResult, ...]:
    """States 0..n-1; `cached`: state 0 came from the shared dense cache (0 epochs)."""
    return tuple(
        StateResult.from_dict(row(s, trained=0 if cached and s == 0 else None)) for s in range(n)
    )


def record(
    tid: str,
    status: str,
    ran: tuple[StateResult, ...],
    stopped_by: str | None = None,
    config: dict[str, Any] | None = None,
) -> TrialRecord:
    return TrialRecord(
        tid,
        status,
        dict(CONFIG if config is None else config),
        {},
        ran,
        error="RuntimeError: boom" if status == "error" else None,
        stopped_by=stopped_by,
    )


def experiment(trials: list[TrialRecord], scheduler: str = "moasha") -> Experiment:
    return Experiment(
        "s", "/nowhere/s", "vit_head_mlp", OBJECTIVES, tuple(trials), scheduler=scheduler
    )


def eight_trials() -> list[TrialRecord]:
    """3 stopped by the scheduler (2 after state 1, one of them with a cached state 0; 1 after
    state 2), 2 complete, 1 errored after state 0, 1 cut by the time budget after state 1,
    1 interrupted (SIGINT: still running) after state 0."""
    return [
        record("t1", "pruned", states(2), STOPPED_BY_SCHEDULER),
        record("t2", "pruned", states(2, cached=True), STOPPED_BY_SCHEDULER),
        record("t3", "pruned", states(3), STOPPED_BY_SCHEDULER),
        record("t4", "complete", states(4)),
        record("t5", "complete", states(4, cached=True)),
        record("t6", "error", states(1)),
        record("t7", "pruned", states(2), "time_budget"),
        record("t8", "running", states(1)),
    ]


# By hand: trained = t1 (10+5) + t2 (0+5) + t3 (10+5+5) = 40; saved = t1 states 2,3 (5+5)
# + t2 states 2,3 (5+5) + t3 state 3 (5) = 25; a full run of the three: 40 + 25 = 65.
EIGHT_LINE = (
    "MO-ASHA stopped 3 of 8 trials: 2 after state 1, 1 after state 2 (saved 25 of the 65 "
    "trial-epochs those 3 trials would have trained to the last state); not counted: "
    "1 trial cut by --time-budget"
)


def test_counts_per_state_and_the_epochs_saved_by_hand() -> None:
    summary = stop_summary(experiment(eight_trials()))
    assert summary == StopSummary(
        scheduler="moasha",
        trials=8,
        stopped_after=((1, 2), (2, 1)),
        trained_epochs=40,
        saved_epochs=25,
        not_counted=(("cut by --time-budget", 1),),
    )
    assert summary.stopped == 3 and summary.full_epochs == 65
    assert summary.line() == EIGHT_LINE


def test_errored_cut_and_interrupted_trials_are_never_counted() -> None:
    only_others = [t for t in eight_trials() if t.stopped_by != STOPPED_BY_SCHEDULER]
    summary = stop_summary(experiment(only_others))
    assert summary is not None and summary.stopped == 0 and summary.saved_epochs == 0
    assert (
        summary.line()
        == "MO-ASHA stopped none of 5 trials; not counted: 1 trial cut by --time-budget"
    )
    # an errored trial stays out even if something had marked it the scheduler's
    odd = record("t9", "error", states(2), STOPPED_BY_SCHEDULER)
    assert stop_summary(experiment([odd])).line() == "MO-ASHA stopped none of 1 trial"  # type: ignore[union-attr]


def test_a_pruned_trial_without_a_recorded_reason_is_named_not_counted() -> None:
    summary = stop_summary(
        experiment([record("t1", "pruned", states(2)), record("t2", "complete", states(4))])
    )
    assert summary is not None and summary.stopped == 0
    assert summary.line() == (
        "MO-ASHA stopped none of 2 trials; not counted: 1 trial ended early for a reason the "
        "study did not record"
    )


def test_fifo_says_nothing_and_asha_is_named() -> None:
    assert stop_summary(experiment(eight_trials(), scheduler="fifo")) is None
    assert stop_summary(experiment([record("t4", "complete", states(4))], scheduler="")) is None
    asha = stop_summary(
        experiment([record("t1", "pruned", states(1), STOPPED_BY_SCHEDULER)], "asha")
    )
    assert asha is not None
    assert asha.line() == (
        "ASHA stopped 1 of 1 trial: 1 after state 0 (saved 15 of the 25 trial-epochs that "
        "trial would have trained to the last state)"
    )


def test_a_stopped_trial_without_a_readable_config_counts_but_adds_no_epochs() -> None:
    trials = [
        record("t1", "pruned", states(2), STOPPED_BY_SCHEDULER),
        record("t2", "pruned", states(2), STOPPED_BY_SCHEDULER, config={}),  # no default stands in
    ]
    summary = stop_summary(experiment(trials))
    assert summary is not None and summary.stopped == 2 and summary.no_config == 1
    assert summary.line() == (
        "MO-ASHA stopped 2 of 2 trials: 2 after state 1 (saved 10 of the 25 trial-epochs that "
        "trial would have trained to the last state; 1 without a readable config not included)"
    )


def test_the_console_prints_the_same_line_and_fifo_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_stop_summary(experiment(eight_trials()), show=True)
    print_stop_summary(experiment(eight_trials()), show=False)
    print_stop_summary(experiment(eight_trials(), scheduler="fifo"), show=True)
    assert capsys.readouterr().out == EIGHT_LINE + "\n"


def test_the_report_holds_the_line(tmp_path: Path) -> None:
    from rsst_tune.report import write_report

    md = Path(write_report(experiment(eight_trials()), tmp_path))
    summary = md.read_text().split("## Pareto front")[0]  # in the report's Summary
    assert EIGHT_LINE + "." in summary
    assert EIGHT_LINE + "." in (tmp_path / "report.html").read_text()


def test_a_fifo_report_says_nothing_of_stops() -> None:
    from rsst_tune.report import collect_tickets
    from rsst_tune.report.document import to_markdown
    from rsst_tune.report.sections import summary_blocks

    for scheduler, said in (("fifo", False), ("moasha", True)):
        exp = experiment(eight_trials(), scheduler=scheduler)
        text = to_markdown(summary_blocks(exp, collect_tickets(exp), (None, None)))
        assert ("stopped" in text) is said


# ------------------------------------------------------------ from an experiment directory
def _define(trial: optuna.Trial) -> dict[str, Any]:
    return {"rate": trial.suggest_float("rate", 0.1, 0.5)}


def test_load_experiment_tells_the_schedulers_stops_from_the_time_budgets(tmp_path: Path) -> None:
    """A sweep directory as a moasha sweep that ran out of time leaves it: the searcher told
    Optuna of the scheduler's stop, the error and the complete trial; the time-budget trial is
    settled by the sweep's end (`_settle_study`); a SIGINT-interrupted one stays running."""
    from rsst_tune.experiment.layout import JOURNAL_FILE, PLAN_FILE
    from rsst_tune.experiment.reader import load_experiment
    from rsst_tune.tune.plan import SweepOptions, resolve_plan
    from rsst_tune.tune.run.runner import _settle_study
    from rsst_tune.tune.search.searcher import PruningAwareOptunaSearch, journal_storage

    plan = resolve_plan(
        SweepOptions(
            space="vit_head_mlp",
            preset="smoke",
            storage=str(tmp_path),
            name="st",
            scheduler="moasha",
        )
    )
    exp = Path(plan.experiment_dir)
    exp.mkdir(parents=True)
    (exp / PLAN_FILE).write_text(plan.to_json())
    searcher = PruningAwareOptunaSearch(
        _define,
        metric=["val_acc", "macs_frac"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=plan.study_name or plan.name,
        storage=journal_storage(exp / JOURNAL_FILE),
    )
    # trial id -> (Ray status, the states it reported, cached state 0)
    trials = {
        "a_stop1": ("TERMINATED", 2, False),
        "b_stop2": ("TERMINATED", 3, True),
        "c_done": ("TERMINATED", 4, False),
        "d_error": ("ERROR", 1, False),
        "e_budget": ("TERMINATED", 2, False),
        "f_sigint": ("RUNNING", 1, False),
    }
    trial_data = []
    for tid, (status, n, cached) in trials.items():
        assert searcher.suggest(tid) is not None
        rows = [row(s, trained=0 if cached and s == 0 else None) for s in range(n)]
        (exp / f"trial_{tid}").mkdir()
        (exp / f"trial_{tid}" / "result.json").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
        trial_data.append([json.dumps({"trial_id": tid, "status": status, "config": CONFIG}), "{}"])
        if tid.startswith(("a_", "b_", "c_")):  # the scheduler stopped it, or it ran every state
            searcher.on_trial_complete(tid, result=rows[-1])
        elif tid == "d_error":
            (exp / f"trial_{tid}" / "error.txt").write_text("RuntimeError: boom\n")
            searcher.on_trial_complete(tid, error=True)
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {}})
    )
    _settle_study(plan, {t: s for t, (s, _, _) in trials.items()}, "time_budget")

    loaded = load_experiment(exp)
    assert loaded.scheduler == "moasha"
    got = {t.trial_id: (t.status, t.stopped_by) for t in loaded.trials}
    assert got == {
        "a_stop1": ("pruned", STOPPED_BY_SCHEDULER),
        "b_stop2": ("pruned", STOPPED_BY_SCHEDULER),
        "c_done": ("complete", None),
        "d_error": ("error", None),
        "e_budget": ("pruned", "time_budget"),
        "f_sigint": ("running", None),
    }
    summary = stop_summary(loaded)
    assert summary is not None
    # trained: a (10+5) + b (0+5+5) = 25; saved: a (5+5) + b (5) = 15
    assert summary.line() == (
        "MO-ASHA stopped 2 of 6 trials: 1 after state 1, 1 after state 2 (saved 15 of the 40 "
        "trial-epochs those 2 trials would have trained to the last state); not counted: "
        "1 trial cut by --time-budget"
    )
