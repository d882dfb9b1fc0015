"""Seed confirmation (`--confirm K`): which tickets are re-run, the choice by the mean over
seeds, the record, and a real sweep whose confirmation stage runs through Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.reader import read_confirmation
from rsst_tune.experiment.records import Confirmation, Objective, SeedRun, TrialRecord
from rsst_tune.experiment.seeds import (
    choose_confirmed,
    confirm_candidates,
    confirmed_choices,
    ranked_at_budget,
    seed_stats,
)
from rsst_tune.report import choices_by_budget
from rsst_tune.results import StateResult
from rsst_tune.tune.confirm import plan_runs, write_confirmation
from rsst_tune.tune.plan import SweepOptions, resolve_plan

ROOT = Path(__file__).resolve().parents[1]
N = 360  # the digits val/test split size


def result(state: int, val: float, macs: float, test: float | None = None) -> StateResult:
    return StateResult.from_dict(
        {
            "state": state,
            "method": "rsst",
            "val_acc": val,
            "test_acc": val if test is None else test,
            "sparsity": 1.0 - macs,
            "density_total": macs,
            "params": round(100_000 * macs),
            "macs": round(1_000_000 * macs),
            "params_frac": macs,
            "macs_frac": macs,
            "rate": 0.0 if state == 0 else 0.2,
            "density_U": macs,
            "train_loss": 0.5,
            "epochs_trained": 1,
            "wall_time_s": 1.0,
            "val_size": N,
            "test_size": N,
        }
    )


def experiment(trials: dict[str, list[StateResult]], seed: int = 0) -> Experiment:
    records = tuple(
        TrialRecord(
            trial_id=tid,
            status="complete",
            config={
                "model": "vit_digits",
                "dataset": "digits",
                "seed": seed,
                "epochs": 1,
                "pruning_times": len(states),
            },
            params={},
            states=tuple(states),
        )
        for tid, states in trials.items()
    )
    return Experiment(
        name="x",
        path="/nonexistent",
        space="vit_head_mlp",
        objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
        trials=records,
    )


# Three trials, two states each. Within MACs ≤ 50 %: b/s1 (0.80) and c/s1 (0.79) are tied
# (their Wilson intervals at n=360 overlap), a/s1 (0.60) is not.
EXP = experiment(
    {
        "a": [result(0, 0.95, 1.0), result(1, 0.60, 0.30)],
        "b": [result(0, 0.95, 1.0), result(1, 0.80, 0.45)],
        "c": [result(0, 0.95, 1.0), result(1, 0.79, 0.40)],
    }
)


def test_candidates_are_the_top_k_of_each_budget_in_the_order_the_rule_picks() -> None:
    tickets = EXP.tickets()
    # MACs ≤ 50 %: the tie rule chooses c/s1 (tied with the leader b/s1, fewer MACs) first
    assert [t.label for t in ranked_at_budget(tickets, 0.5)] == ["c/s1", "b/s1", "a/s1"]
    assert [t.label for t in confirm_candidates(tickets, 1, budgets=(0.5,))] == ["c/s1"]
    # unconstrained: the three dense states (tied at 0.95) lead; each ticket listed once
    got = [t.label for t in confirm_candidates(tickets, 2, budgets=(0.5, None))]
    assert got == ["c/s1", "b/s1", "a/s0", "b/s0"]
    assert confirm_candidates(tickets, 0) == []


def test_runs_are_the_tickets_configs_at_their_state_with_the_next_seeds() -> None:
    specs = plan_runs(EXP, 1, extra=2)
    by_label = {(s.ticket, s.seed): s.config for s in specs}
    # top 1 of the budgets 0.25, 0.5, 0.75, unconstrained: c/s1 (0.5 and 0.75) and a/s0
    assert sorted(by_label) == [("a/s0", 1), ("a/s0", 2), ("c/s1", 1), ("c/s1", 2)]
    assert by_label[("c/s1", 2)]["pruning_times"] == 2 and by_label[("c/s1", 2)]["seed"] == 2
    assert by_label[("a/s0", 1)]["pruning_times"] == 1


def _confirmation(runs: dict[tuple[str, int], float | None]) -> Confirmation:
    labels = tuple(dict.fromkeys(label for label, _ in runs))
    out = []
    for (label, seed), val in runs.items():
        state = int(label.rsplit("/s", 1)[1])
        macs = {"a/s1": 0.30, "b/s1": 0.45, "c/s1": 0.40}.get(label, 1.0)
        if val is None:
            out.append(SeedRun(label, seed, "error", None, "TrialDiverged: diverged"))
        else:
            out.append(SeedRun(label, seed, "complete", result(state, val, macs)))
    return Confirmation(k=2, seeds=(1, 2), tickets=labels, runs=tuple(out))


def test_the_mean_over_seeds_decides_and_a_change_of_answer_is_reported() -> None:
    tickets = EXP.tickets()
    single = choices_by_budget(tickets, (0.5,))[0.5]
    assert single is not None and single.chosen.label == "c/s1"
    # c/s1 was lucky: its other seeds are far worse; b/s1 holds up
    conf = _confirmation(
        {("c/s1", 1): 0.60, ("c/s1", 2): 0.62, ("b/s1", 1): 0.81, ("b/s1", 2): 0.79}
    )
    stats = seed_stats(conf, tickets)
    b = next(s for s in stats if s.ticket.label == "b/s1")
    assert b.seeds == (0, 1, 2) and b.val == (0.80, 0.81, 0.79)
    assert b.mean_val == pytest.approx(0.80) and b.std_val == pytest.approx(0.01)
    assert b.val_images == 3 * N
    choice = choose_confirmed(stats, 0.5, single)
    assert choice is not None and choice.chosen is b and choice.leader is b
    assert choice.changed
    # ...and when the extra seeds agree, the single-seed answer stands
    conf = _confirmation(
        {("c/s1", 1): 0.80, ("c/s1", 2): 0.79, ("b/s1", 1): 0.80, ("b/s1", 2): 0.79}
    )
    again = confirmed_choices(seed_stats(conf, tickets), {0.5: single})[0.5]
    assert again is not None and again.chosen.ticket.label == "c/s1" and not again.changed
    assert {s.ticket.label for s in again.tied} == {"b/s1", "c/s1"}


def test_report_and_export_step_share_one_answer_per_budget(tmp_path: Path) -> None:
    """`best_tickets` is the seed-confirmed choice where there is one: the ticket the report
    recommends (best_config.json) and the one its export table lists, i.e. the one the export
    step (`export_best`, on the same `best_tickets`) exports."""
    import dataclasses

    from rsst_tune.experiment.exports import distinct_bests
    from rsst_tune.experiment.seeds import best_choices, best_tickets
    from rsst_tune.report import write_report

    assert best_tickets(EXP)[0.5] is not None and best_tickets(EXP)[0.5].label == "c/s1"
    lucky = _confirmation(
        {("c/s1", 1): 0.60, ("c/s1", 2): 0.62, ("b/s1", 1): 0.81, ("b/s1", 2): 0.79}
    )
    confirmed = dataclasses.replace(EXP, confirmation=lucky)
    bests = best_tickets(confirmed)
    assert bests[0.5] is not None and bests[0.5].label == "b/s1"  # the extra seeds decide
    assert confirmed.best(0.5) is bests[0.5] and EXP.best(0.5) is best_tickets(EXP)[0.5]
    answer = best_choices(confirmed.tickets(), lucky)
    assert answer.k == 2 and answer.bests == bests and answer.confirmed[0.5] is not None
    best = json.loads(write_report(confirmed, tmp_path).with_name("best_config.json").read_text())
    assert (best["trial_id"], best["state"]) == ("b", 1)
    md = (tmp_path / "report.md").read_text()
    rows = [line for line in md.splitlines() if "no checkpoint kept for this state" in line]
    assert rows and [r.split(" | ")[0].strip("| ") for r in rows] == [
        t.label for t, _ in distinct_bests(bests)
    ]


def test_a_failed_seed_run_is_left_out_of_the_mean_and_counted() -> None:
    conf = _confirmation({("b/s1", 1): None, ("b/s1", 2): 0.70})
    (stats,) = seed_stats(conf, EXP.tickets())
    assert stats.val == (0.80, 0.70) and stats.failed == 1 and stats.seeds == (0, 2)
    assert stats.val_images == 2 * N


def test_the_record_round_trips_and_a_damaged_one_is_one_line(tmp_path: Path) -> None:
    conf = _confirmation({("b/s1", 1): 0.81, ("b/s1", 2): None})
    write_confirmation(tmp_path, conf)
    assert read_confirmation(tmp_path) == conf
    assert read_confirmation(tmp_path / "nothing-here") is None
    (tmp_path / "confirm.json").write_text('{"k": 2, "runs": [')
    with pytest.raises(ConfigError, match="not a readable seed-confirmation record"):
        read_confirmation(tmp_path)


def test_confirm_is_validated_and_the_smoke_preset_confirms_two() -> None:
    assert resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke")).confirm == 2
    assert resolve_plan(SweepOptions(space="vit_head_mlp")).confirm == 0
    assert resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke", confirm=0)).confirm == 0
    for bad in (-1, 21, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="--confirm must be an integer in"):
            resolve_plan(SweepOptions(space="vit_head_mlp", confirm=bad))  # type: ignore[arg-type]


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )


@pytest.mark.sweep
@pytest.mark.slow
def test_a_sweep_confirms_its_top_tickets_through_ray_and_the_report_shows_the_means(
    tmp_path: Path,
) -> None:
    sweep = _run(
        "tune_main.py",
        "--space",
        "vit_head_mlp",
        "--preset",
        "smoke",
        "--num-samples",
        "2",
        "--states",
        "2",
        "--epochs",
        "1",
        "--confirm",
        "1",
        "--storage",
        str(tmp_path),
        "--name",
        "c",
        "--quiet",
    )
    assert sweep.returncode == 0, sweep.stderr
    exp_dir = tmp_path / "c"
    conf = read_confirmation(exp_dir)
    assert conf is not None and conf.k == 1 and conf.seeds == (1, 2)
    assert conf.tickets, "at least one ticket is confirmed"
    assert {(r.ticket, r.seed) for r in conf.runs} == {(t, s) for t in conf.tickets for s in (1, 2)}
    assert all(r.status == "complete" and r.result is not None for r in conf.runs)
    for r in conf.runs:  # each run ran to its ticket's state
        assert r.result is not None and r.result.state == int(r.ticket.rsplit("/s", 1)[1])
    # one dense state 0 per seed (0, 1, 2), shared by every trial and run of that seed
    assert len(list((exp_dir / "dense_cache").glob("*.pt"))) == 3
    report = (exp_dir / "report.md").read_text()
    assert "Seed confirmation" in report and "±" in report
    best = json.loads((exp_dir / "best_config.json").read_text())
    assert "seeds" in best and len(best["seeds"]["val_acc"]) == 3

    # rsst-tune report --confirm on the finished sweep: what is recorded is not run again
    again = _run("-m", "rsst_tune.cli", "report", str(exp_dir), "--confirm", "1")
    assert again.returncode == 0, again.stderr
    assert read_confirmation(exp_dir) == conf
    assert "confirming" not in again.stdout


def test_report_confirm_refuses_a_directory_that_is_not_a_finished_sweep(tmp_path: Path) -> None:
    out = _run("-m", "rsst_tune.cli", "report", str(tmp_path), "--confirm", "2")
    assert out.returncode == 2 and "holds no sweep" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
