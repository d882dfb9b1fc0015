"""Sweeps end to end: real local Ray, real Optuna, the digits profile with a tiny budget.

One Ray cluster (bound to 127.0.0.1) serves the whole module; the SIGINT test drives
`tune_main.py` in subprocesses that join it with `--address`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import tune_main_env

from rsst_tune.errors import ConfigError, SweepInterrupted
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.records import Objective, TrialRecord
from rsst_tune.results import StateResult
from rsst_tune.tune import (
    SweepOptions,
    describe_plan,
    load_experiment,
    parse_objectives,
    resolve_plan,
    run_sweep,
    trial_value,
)
from rsst_tune.tune.cli import main as tune_main

REPO = Path(__file__).resolve().parents[1]
TINY: dict[str, Any] = {"dataset": "digits", "model": "vit_digits", "states": 2, "epochs": 2}


@pytest.fixture(autouse=True)
def _resume_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps sign their pickles with a per-user key: a test's own, not the user's."""
    monkeypatch.setenv("RSST_TUNE_RESUME_KEY", str(tmp_path / "resume.key"))


def _study_trials(exp_dir: Path) -> list[Any]:
    exp = load_experiment(exp_dir)
    assert exp.study is not None, "the Optuna journal must be in the experiment directory"
    return list(exp.study.get_trials(deepcopy=False))


# ---------------------------------------------------------------------- end to end
@pytest.mark.sweep
def test_sweep_runs_end_to_end_and_run_reproduces_a_trial(
    ray_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = resolve_plan(
        SweepOptions(
            space="vit_head_mlp",
            preset="smoke",
            num_samples=3,
            max_concurrent=2,
            storage=str(tmp_path),
            name="e2e",
            seed=3,
            keep_checkpoints="all",  # every state's checkpoint, checked below
            **TINY,
        )
    )
    returned = run_sweep(plan)
    out = capsys.readouterr().out
    assert "running" in out and "done" in out and "best val_acc" in out

    exp_dir = tmp_path / "e2e"
    exp = load_experiment(exp_dir)
    assert returned is not None and returned.path == exp.path
    assert [(t.trial_id, t.status, t.states) for t in returned.trials] == [
        (t.trial_id, t.status, t.states) for t in exp.trials
    ]
    assert exp.space == "vit_head_mlp" and len(exp.trials) == 3
    assert [o.key for o in exp.objectives] == ["val_acc", "macs_frac"]
    for t in exp.trials:
        assert t.status == "complete", (t.trial_id, t.status, t.error)
        assert [s.state for s in t.states] == [0, 1]
        assert all(isinstance(s, StateResult) for s in t.states)
        assert sorted(t.state_checkpoints) == [0, 1]
        assert t.checkpoint_dir is not None
        assert (Path(t.checkpoint_dir) / "state_01.pt").is_file()
        assert 0.0 <= t.states[0].val_acc <= 1.0
    # The study: one Optuna trial per Ray trial, each naming its Ray trial, all COMPLETE.
    import optuna

    trials = _study_trials(exp_dir)
    assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(
        r.trial_id for r in exp.trials
    )
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(len(t.values) == 2 for t in trials)
    # The enqueued recipe ran first and only searched fields reached the config.
    first = min(trials, key=lambda t: t.number)
    assert first.params["head_ratio"] == 0.3 and first.params["mlp_ratio"] == 0.4
    for t in exp.trials:
        assert "rate_mode" not in t.config

    # The report (written at the end of the sweep: rsst_tune.report is part of the package,
    # and a failure to write it is only logged) names a best config: three complete trials
    # guarantee a ticket. `rsst-tune run --config` on it repeats the trial's per-state
    # accuracy (same seed).
    best_file = exp_dir / "best_config.json"
    assert best_file.is_file(), "the sweep wrote no report (see its log)"
    best = json.loads(best_file.read_text())
    assert best["trial_id"] is not None and best["config"] is not None, best
    config_file = exp_dir / best["config_file"]
    expected = best["expected_states"]
    trial = next(t for t in exp.trials if t.trial_id == best["trial_id"])
    assert [s["state"] for s in expected] == list(range(best["state"] + 1))
    assert [s["val_acc"] for s in expected] == [s.val_acc for s in trial.states[: len(expected)]]
    import torch

    from rsst_tune.cli import main as cli_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (1 CPU per trial)
    try:
        rc = cli_main(
            ["run", "--config", str(config_file), "--out", str(tmp_path / "rerun"), "--quiet"]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rerun = json.loads((tmp_path / "rerun" / "results.json").read_text())
    assert len(rerun) == len(expected)
    for ours, theirs in zip(rerun, expected, strict=True):
        assert ours["val_acc"] == theirs["val_acc"]
        assert ours["test_acc"] == theirs["test_acc"]

    # The report command re-reads the experiment directory.
    (exp_dir / "report.md").unlink()
    assert tune_cli(["report", str(exp_dir)]) == 0
    assert (exp_dir / "report.md").is_file()


def tune_cli(argv: list[str]) -> int:
    from rsst_tune.cli import main as cli_main

    return cli_main(argv)


# ---------------------------------------------------------------------- ASHA
@pytest.mark.sweep
def test_asha_stopped_trials_are_pruned_in_the_study(ray_cluster: str, tmp_path: Path) -> None:
    import optuna

    plan = resolve_plan(
        SweepOptions(
            space="vit_unstructured",
            preset="smoke",
            num_samples=5,
            max_concurrent=1,
            storage=str(tmp_path),
            name="asha",
            seed=0,
            dataset="digits",
            model="vit_digits",
            states=3,
            epochs=1,
        )
    )
    assert plan.scheduler == "asha"
    assert run_sweep(plan, show=False) is not None
    exp = load_experiment(tmp_path / "asha")
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in _study_trials(tmp_path / "asha")}
    stopped = [t for t in exp.trials if len(t.states) < 3]
    assert stopped, "ASHA stopped no trial; the test needs at least one"
    for t in exp.trials:
        ot = by_ray[t.trial_id]
        if len(t.states) < 3:
            assert t.status == "pruned"
            assert ot.state == optuna.trial.TrialState.PRUNED, (t.trial_id, ot.state)
            assert ot.user_attrs["stopped_after_state"] == t.states[-1].state
        else:
            assert t.status == "complete"
            assert ot.state == optuna.trial.TrialState.COMPLETE


def test_asha_refused_where_sparsity_is_searched(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"asha.*head_ratio.*--scheduler fifo"):
        resolve_plan(
            SweepOptions(
                space="vit_head_mlp", scheduler="asha", preset="smoke", storage=str(tmp_path)
            )
        )


# ---------------------------------------------------------------------- SIGINT + resume
@pytest.mark.sweep
def test_sigint_then_resume_completes_without_rerunning_a_state(
    ray_cluster: str,
    tmp_path: Path,
    interrupt_after_first_state: Callable[[subprocess.Popen[str], Path], str],
) -> None:
    exp_dir = tmp_path / "sig"
    cmd = [
        sys.executable,
        str(REPO / "tune_main.py"),
        "--space",
        "vit_head_mlp",
        "--preset",
        "smoke",
        "--dataset",
        "digits",
        "--model",
        "vit_digits",
        "--states",
        "3",
        "--epochs",
        "3",
        "--num-samples",
        "2",
        "--max-concurrent",
        "1",
        "--storage",
        str(tmp_path),
        "--name",
        "sig",
        "--address",
        ray_cluster,
        "--seed",
        "1",
        "--scheduler",  # every trial must run every state (MO-ASHA could stop one)
        "fifo",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=tune_main_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = interrupt_after_first_state(proc, exp_dir)
    assert proc.returncode == 130, out
    assert "--resume" in out
    before = load_experiment(exp_dir)
    assert any(t.status == "running" for t in before.trials), [t.status for t in before.trials]
    done_before = {t.trial_id: len(t.states) for t in before.trials}

    resume = [
        sys.executable,
        str(REPO / "tune_main.py"),
        "--resume",
        str(exp_dir),
        "--address",
        ray_cluster,
    ]
    res = subprocess.run(
        resume, cwd=tmp_path, env=tune_main_env(), capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stdout + res.stderr

    after = load_experiment(exp_dir)
    assert len(after.trials) == 2
    resumed = 0
    for t in after.trials:
        assert t.status == "complete", (t.trial_id, t.status, t.error)
        # Ray appends one result.json row per reported state: a re-run state would repeat.
        rows = [
            json.loads(line)
            for line in (exp_dir / f"trial_{t.trial_id}" / "result.json").read_text().splitlines()
            if line.strip()
        ]
        assert [r["state"] for r in rows] == [0, 1, 2], (t.trial_id, [r["state"] for r in rows])
        # Ray's progress.csv stays aligned across the resume: every state reports every key
        # (None where it does not apply), so no row is longer than the header
        with (exp_dir / f"trial_{t.trial_id}" / "progress.csv").open() as fh:
            table = list(csv.reader(fh))
        assert {"acc_before_structure", "t_norm", "lambda_reached"} <= set(table[0])
        assert [len(row) for row in table[1:]] == [len(table[0])] * 3, t.trial_id
        first_run = done_before.get(t.trial_id, 0)
        if first_run:
            assert [r["resumed_from"] for r in rows] == [0] * first_run + [first_run] * (
                3 - first_run
            )
            resumed += 1
    assert resumed >= 1, "no trial had finished a state before SIGINT"
    import optuna

    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in _study_trials(exp_dir))


# ---------------------------------------------------------------------- spaces and CLI
def test_conditional_parameter_is_absent_when_its_condition_is_false() -> None:
    import optuna

    from search_spaces import get_space

    space = get_space("vit_head_mlp")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    base = {
        "target": "head",
        "rate_mode": "derived",
        "reg_granularity_prune": 1.0,
        "criteria": "l1",
        "lr": 1e-3,
    }
    study.enqueue_trial({**base, "RST_schedule": "x^2"})
    study.enqueue_trial({**base, "target": "both", "RST_schedule": "exp_custom_exponents"})
    head_only = study.ask()
    cfg = space.sample(head_only)
    assert "mlp_ratio" not in head_only.params and "mlp_ratio" not in cfg
    assert "exponents" not in head_only.params and "exponents" not in cfg
    assert "rate" not in head_only.params and "rate" not in cfg
    assert "head_ratio" in cfg
    both = study.ask()
    cfg = space.sample(both)
    assert {"mlp_ratio", "head_ratio", "exponents"} <= set(both.params) & set(cfg)


def test_bad_space_name_exits_2_and_lists_the_spaces() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "tune_main.py"), "--space", "nope"],
        env=tune_main_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    for name in ("vit_head_mlp", "vit_unstructured", "vit_refill_vs_rsst", "resnet_rsst"):
        assert name in lines[0]


def test_dry_run_prints_the_space_and_the_trial_states(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = tune_main(
        [
            "--space",
            "vit_head_mlp",
            "--preset",
            "smoke",
            "--dry-run",
            "--storage",
            str(tmp_path),
            "--name",
            "dry",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    # MO-ASHA (the space's default) may stop trials at state 1: at most 24
    assert "would run   8 trials x 3 states = at most 24 trial-states" in out
    assert "mlp_ratio" in out and "conditional" in out
    assert "val_acc (max), macs_frac (min)" in out
    assert not (tmp_path / "dry").exists(), "a dry run writes nothing"
    plan = resolve_plan(
        SweepOptions(space="vit_unstructured", states=4, num_samples=5, storage=str(tmp_path))
    )
    assert "at most 20 trial-states" in describe_plan(plan)


def _record(trial_id: str, status: str, error: str | None = None) -> TrialRecord:
    return TrialRecord(trial_id, status, config={}, params={}, states=(), error=error)


@pytest.mark.parametrize(
    ("outcome", "status", "message"),
    [
        (
            SweepInterrupted("/x/sig", "interrupted after 3s with 1 unfinished trials"),
            130,
            "tune_main.py: interrupted after 3s with 1 unfinished trials; continue with: "
            "rsst-tune tune --resume /x/sig",
        ),
        (
            [_record("a", "error", "RuntimeError: boom"), _record("b", "error")],
            1,
            "tune_main.py: error: no trial completed (2 of 2 failed; first error: RuntimeError: "
            "boom); see /x/e/sweep.log",
        ),
        ([_record("a", "error"), _record("b", "pruned")], 0, ""),
        (None, 0, ""),  # URI storage: run_sweep returns None
    ],
)
def test_how_a_sweep_ended_is_the_exit_status(
    outcome: Any,
    status: int,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fake_run_sweep(plan: Any, **kwargs: Any) -> Experiment | None:
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            return None
        return Experiment("e", "/x/e", "vit_head_mlp", (), tuple(outcome))

    monkeypatch.setattr("rsst_tune.tune.cli.run_sweep", fake_run_sweep)
    argv = ["--space", "vit_head_mlp", "--preset", "smoke", "--storage", str(tmp_path)]
    assert tune_main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err == message


def test_sweep_interrupted_carries_the_directory_and_pickles() -> None:
    import pickle

    stop = pickle.loads(pickle.dumps(SweepInterrupted("/x/my sweep", "interrupted")))
    assert stop.experiment_dir == "/x/my sweep" and stop.reason == "interrupted"
    assert stop.resume_hint == "rsst-tune tune --resume '/x/my sweep'"
    assert "rsst_tune.resume_sweep('/x/my sweep')" in str(stop)
    assert not isinstance(stop, ConfigError)


@pytest.mark.parametrize("callers", [None, "1", "0"])
def test_the_loopback_setting_of_a_local_sweep_does_not_outlive_its_start(
    callers: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local sweep forces RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its cluster on 127.0.0.1);
    left in the caller's environment, it made `ray start --address` (a worker node started
    later by the caller: the 2-node chaos test in the full suite) exit at once."""
    import ray

    from rsst_tune.tune.run import ray_setup

    var = ray_setup.LOCAL_ONLY_ENV
    if callers is None:
        monkeypatch.delenv(var, raising=False)
    else:
        monkeypatch.setenv(var, callers)
    saved = ray_setup.prepare_ray_env(None)
    ray_setup.prepare_ray_env(None, saved)  # the runner's call, then init_ray's
    assert os.environ[var] == "0"
    ray_setup.restore_ray_env(saved)
    assert os.environ.get(var) == callers
    ray_setup.restore_ray_env(saved)  # nothing to give back
    assert os.environ.get(var) == callers
    # init_ray gives it back however it returns: here with a Ray this process already runs
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    saved = ray_setup.prepare_ray_env(None)
    assert ray_setup.init_ray(None, saved) is False
    assert os.environ.get(var) == callers
    assert ray_setup.init_ray(None) is False  # on its own: prepared and given back
    assert os.environ.get(var) == callers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "resnet_rsst", "--model", "vit_tiny"], "does not allow --model vit_tiny"),
        (["--space", "vit_head_mlp", "--model", "vit_nope"], "unknown model"),
        (["--space", "vit_head_mlp", "--objective", "test_acc"], "never optimised"),
        (
            ["--space", "vit_head_mlp", "--preset", "smoke", "--storage", "/proc/forbidden"],
            "cannot write",
        ),
        (["--resume", "EMPTY"], "holds no sweep"),
        (
            ["--space", "vit_head_mlp", "--preset", "smoke", "--address", "127.0.0.1:9"],
            "nothing answers",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    (tmp_path / "empty").mkdir()
    if "--storage" not in argv:
        argv += ["--storage", str(tmp_path / "store")]
    start = time.monotonic()
    assert tune_main(argv) == 2
    assert time.monotonic() - start < 30, "bad input must fail fast"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list((tmp_path / "store").glob("*/sweep.json")), "nothing written"


def state_result(state: int = 0, **values: Any) -> StateResult:
    """A StateResult with placeholder values, `values` replacing some of them."""
    data: dict[str, Any] = dict.fromkeys(StateResult.keys(), 0)
    data.update(state=state, method="rsst", **values)
    return StateResult.from_dict(data)


def test_objective_parsing_and_budgeted_value() -> None:
    (obj,) = parse_objectives("val_acc@macs<=0.5")
    assert obj == Objective("val_acc", "max", budget_metric="macs_frac", budget=0.5)
    assert obj.key == "val_acc@macs<=0.5"
    states = [
        state_result(0, val_acc=0.95, macs_frac=1.0),
        state_result(1, val_acc=0.93, macs_frac=0.6),
    ]
    assert trial_value(obj, states) == pytest.approx(-0.1)  # closest to the budget: 0.6
    states.append(state_result(2, val_acc=0.91, macs_frac=0.45))
    states.append(state_result(3, val_acc=0.90, macs_frac=0.30))
    assert trial_value(obj, states) == 0.91
    (plain,) = parse_objectives("val_acc")
    assert trial_value(plain, states) == 0.90  # a plain objective is the last state
    assert [o.key for o in parse_objectives("val_acc,macs_frac")] == ["val_acc", "macs_frac"]
    with pytest.raises(ConfigError, match="unknown objective metric"):
        parse_objectives("accuracy")
    with pytest.raises(ConfigError, match="maximised"):
        parse_objectives("macs_frac@params<=0.5")


def test_trials_ended_by_the_time_budget_become_pruned() -> None:
    import optuna

    from rsst_tune.experiment.layout import RAY_TRIAL_ATTR
    from rsst_tune.tune.search.searcher import mark_stopped

    study = optuna.create_study(directions=["maximize", "minimize"])
    running, finished, other = study.ask(), study.ask(), study.ask()
    for trial, rid in ((running, "a"), (finished, "b"), (other, "c")):
        trial.set_user_attr(RAY_TRIAL_ATTR, rid)
    study.tell(finished, [0.9, 0.5])
    assert mark_stopped(study, {"a", "b"}, "time_budget") == 1
    states = {t.user_attrs[RAY_TRIAL_ATTR]: t.state for t in study.get_trials()}
    assert states == {
        "a": optuna.trial.TrialState.PRUNED,
        "b": optuna.trial.TrialState.COMPLETE,
        "c": optuna.trial.TrialState.RUNNING,  # not ended by the sweep: left alone
    }
    assert study.get_trials()[0].user_attrs["stopped_by"] == "time_budget"


# ---------------------------------------------------------------------- reliability (issue 8)
def test_max_failures_is_a_plan_field_and_older_sweep_json_still_loads(tmp_path: Path) -> None:
    from rsst_tune.tune.plan import SweepPlan

    opts = SweepOptions(space="vit_head_mlp", preset="smoke", storage=str(tmp_path))
    assert resolve_plan(opts).max_failures == 2
    plan = resolve_plan(dataclasses_replace(opts, max_failures=0))
    assert plan.max_failures == 0
    data = json.loads(plan.to_json())
    del data["max_failures"]  # a sweep.json written before --max-failures existed
    assert SweepPlan.from_json(json.dumps(data)).max_failures == 2
    with pytest.raises(ConfigError, match="--max-failures"):
        resolve_plan(dataclasses_replace(opts, max_failures=-1))


def dataclasses_replace(opts: SweepOptions, **changes: Any) -> SweepOptions:
    import dataclasses

    return dataclasses.replace(opts, **changes)


def test_bad_max_failures_flag_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--space", "vit_head_mlp", "--preset", "smoke", "--storage", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        tune_main([*argv, "--max-failures", "-1"])
    assert stop.value.code == 2
    assert "--max-failures" in capsys.readouterr().err


def test_optuna_is_settled_from_rays_record() -> None:
    import optuna

    from rsst_tune.experiment.layout import FAIL_REASON_ATTR, RAY_TRIAL_ATTR
    from rsst_tune.tune.search.searcher import fail_lost, settle_finished

    study = optuna.create_study(directions=["maximize", "minimize"])
    trials = {rid: study.ask() for rid in ("done", "cut", "err", "lost", "live")}
    for rid, t in trials.items():
        t.set_user_attr(RAY_TRIAL_ATTR, rid)
    last = {"state": 2, "pruning_times": 3, "val_acc": 0.9, "macs_frac": 0.5}
    finished = {
        "done": ("TERMINATED", last, None),
        "cut": ("TERMINATED", {**last, "state": 0}, None),
        "err": ("ERROR", None, "RuntimeError: boom"),
    }
    assert settle_finished(study, finished, ["val_acc", "macs_frac"], "time_budget") == 3
    assert fail_lost(study, {"done", "cut", "err", "live"}, lambda rid: f"lost {rid}") == 1
    by_id = {t.user_attrs[RAY_TRIAL_ATTR]: t for t in study.get_trials()}
    assert by_id["done"].state.name == "COMPLETE" and by_id["done"].values == [0.9, 0.5]
    assert by_id["cut"].state.name == "PRUNED"
    assert by_id["cut"].user_attrs["stopped_by"] == "time_budget"
    assert by_id["err"].state.name == "FAIL"
    assert by_id["err"].user_attrs[FAIL_REASON_ATTR] == "RuntimeError: boom"
    assert by_id["lost"].state.name == "FAIL"
    assert by_id["lost"].user_attrs[FAIL_REASON_ATTR] == "lost lost"
    assert by_id["live"].state.name == "RUNNING"  # Ray resumes it


def test_a_journal_write_cut_by_a_full_disk_leaves_the_journal_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import optuna
    from optuna.storages.journal import JournalFileBackend

    from rsst_tune.tune.search.searcher import journal_storage

    path = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=journal_storage(path))
    study.tell(study.ask(), 1.0)

    def half_then_enospc(self: Any, logs: list[dict[str, Any]]) -> None:
        with open(self._file_path, "ab") as fh:
            fh.write(b'{"op_code": 4, "worker_id": "cut')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JournalFileBackend, "append_logs", half_then_enospc)
    with pytest.raises(OSError, match="No space"):
        study.ask()
    monkeypatch.undo()
    again = optuna.load_study(study_name="s", storage=journal_storage(path))
    assert [t.state.name for t in again.trials] == ["COMPLETE"]
    again.tell(again.ask(), 2.0)  # and it takes new records after the cut
    assert len(optuna.load_study(study_name="s", storage=journal_storage(path)).trials) == 2


def test_a_retried_trial_is_complete_and_errors_are_summarised() -> None:
    from optuna.trial import TrialState

    from rsst_tune.experiment.reader import _status, error_summary

    rows = [{"state": 0, "pruning_times": 2}, {"state": 1, "pruning_times": 2}]

    class Ot:
        state = TrialState.FAIL

    assert _status("TERMINATED", rows, Ot()) == "complete"  # Ray's record decides
    assert _status("TERMINATED", rows[:1], None) == "pruned"
    assert _status("ERROR", rows, None) == "error"
    assert _status("RUNNING", rows[:1], Ot()) == "running"
    text = (
        "Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n  File x\n"
        "RuntimeError: first\n"
        "Failure # 2 (occurred at 2026-01-01_00-00-09)\n"
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
    )
    assert error_summary(text) == "The actor died unexpectedly before finishing this task."
    assert error_summary(text.split("Failure # 2")[0]) == "RuntimeError: first"


def _fake_experiment(exp_dir: Path, known: list[str], on_disk: list[str]) -> None:
    exp_dir.mkdir(parents=True)
    trial_data = [[json.dumps({"trial_id": t, "status": "RUNNING"}), json.dumps({})] for t in known]
    (exp_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {}})
    )
    (exp_dir / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"\x80\x04N.")
    for t in on_disk:
        (exp_dir / f"trial_{t}" / "checkpoint_000000").mkdir(parents=True)


def test_resume_after_a_killed_driver_settles_trials_ray_never_recorded(tmp_path: Path) -> None:
    import optuna

    from rsst_tune.experiment.layout import FAIL_REASON_ATTR, RAY_TRIAL_ATTR
    from rsst_tune.tune.run.runner import LOST_DIR, _recover
    from rsst_tune.tune.search.searcher import journal_storage

    plan = resolve_plan(
        SweepOptions(space="vit_head_mlp", preset="smoke", storage=str(tmp_path), name="k")
    )
    exp_dir = Path(plan.experiment_dir)
    _fake_experiment(exp_dir, known=["a"], on_disk=["a", "b"])
    study = optuna.create_study(
        study_name="k",
        storage=journal_storage(exp_dir / "optuna.journal"),
        directions=["maximize", "minimize"],
    )
    for rid in ("a", "b"):
        study.ask().set_user_attr(RAY_TRIAL_ATTR, rid)
    (exp_dir / "dense_cache").mkdir()
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    from rsst_tune.locks import LockOwner

    lock = exp_dir / "dense_cache" / "x.lock"
    lock.write_text(LockOwner(int(dead.stdout), LockOwner.me().host, "t").to_text())

    _recover(plan)
    assert (exp_dir / "trial_a").is_dir()
    assert not (exp_dir / "trial_b").exists() and (exp_dir / LOST_DIR / "trial_b").is_dir()
    states = {t.user_attrs[RAY_TRIAL_ATTR]: t for t in study.get_trials()}
    assert states["a"].state.name == "RUNNING"  # Ray resumes it
    assert states["b"].state.name == "FAIL"
    assert "driver was killed" in states["b"].user_attrs[FAIL_REASON_ATTR]
    assert not lock.exists()


def _define_lr(trial: Any) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}


def _search_generator(plan: Any, num_samples: int) -> Any:
    """Ray's SearchGenerator around the sweep's searcher, as `runner._new_tuner` builds it
    (real Optuna, the plan's journal, a concurrency limit of 1)."""
    import optuna
    from ray.tune.experiment import Experiment as RayExperiment
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    from rsst_tune.experiment.layout import JOURNAL_FILE
    from rsst_tune.tune.search.searcher import PruningAwareOptunaSearch, journal_storage

    searcher = PruningAwareOptunaSearch(
        _define_lr,
        metric="val_acc",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=plan.study_name or plan.name,
        storage=journal_storage(Path(plan.experiment_dir) / JOURNAL_FILE),
    )
    gen = SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=1))

    def trainable(config: dict[str, Any]) -> None:  # pragma: no cover - never run
        pass

    gen.add_configurations(
        [RayExperiment(plan.name, trainable, num_samples=num_samples, storage_path=plan.storage)]
    )
    return gen


def test_a_trial_generated_but_never_recorded_is_lost_and_generated_again(
    tmp_path: Path,
) -> None:
    """A full disk (or a killed driver) between the searcher's suggestion of a trial and Ray's
    record of it: the resume fails the trial in Optuna and still runs --num-samples trials."""
    import shutil

    from rsst_tune.experiment.layout import FAIL_REASON_ATTR, RAY_TRIAL_ATTR
    from rsst_tune.experiment.reader import open_study
    from rsst_tune.tune.run.runner import _recover

    plan = resolve_plan(
        SweepOptions(space="vit_head_mlp", preset="smoke", storage=str(tmp_path), name="g")
    )
    exp_dir = Path(plan.experiment_dir)
    exp_dir.mkdir(parents=True)
    gen = _search_generator(plan, num_samples=2)
    first = gen.next_trial()
    assert gen.next_trial() is None  # the limit: one trial at a time
    gen.on_trial_complete(first.trial_id, result={"val_acc": 0.9, "state": 1, "pruning_times": 2})
    second = gen.next_trial()  # suggested (Optuna RUNNING), then the disk filled
    assert second is not None and gen.is_finished()
    session = "2026-01-01_00-00-00"
    gen.save_to_dir(str(exp_dir), session_str=session)
    record = [[json.dumps({"trial_id": first.trial_id, "status": "TERMINATED"}), "{}"]]
    (exp_dir / f"experiment_state-{session}.json").write_text(
        json.dumps({"trial_data": record, "runner_data": {}, "stats": {}})
    )
    as_saved = tmp_path / "as_saved"
    shutil.copytree(exp_dir, as_saved)
    unfixed = _search_generator(plan, num_samples=2)
    unfixed.restore_from_dir(str(as_saved))
    assert unfixed.is_finished()  # Ray's restored state alone: the sweep would end 1 short

    _recover(plan)
    study = open_study(exp_dir, plan.study_name or plan.name)
    by_id = {t.user_attrs[RAY_TRIAL_ATTR]: t for t in study.get_trials()}
    assert by_id[second.trial_id].state.name == "FAIL"
    assert "lost" in by_id[second.trial_id].user_attrs[FAIL_REASON_ATTR]
    resumed = _search_generator(plan, num_samples=2)
    resumed.restore_from_dir(str(exp_dir))
    assert not resumed.is_finished()
    third = resumed.next_trial()  # the missing trial is generated again
    assert third is not None and third.trial_id not in (first.trial_id, second.trial_id)
    assert resumed.is_finished() and resumed.next_trial() is None
    study = open_study(exp_dir, plan.study_name or plan.name)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "RUNNING"]


def test_damaged_ray_state_is_restored_from_its_last_intact_copy(tmp_path: Path) -> None:
    from rsst_tune.experiment.reader import RAY_STATE_BACKUP, ray_state_files, ray_state_intact
    from rsst_tune.tune.run.ray_state import backup_ray_state, repair_ray_state

    exp_dir = tmp_path / "e"
    _fake_experiment(exp_dir, known=["a"], on_disk=["a"])
    assert backup_ray_state(exp_dir)
    state = ray_state_files(exp_dir)[0]
    good = state.read_text()
    state.write_text(good[: len(good) // 2])  # cut off by a full disk
    assert not ray_state_intact(ray_state_files(exp_dir))
    assert backup_ray_state(exp_dir) is False  # a damaged state never replaces the copy
    assert "restored" in (repair_ray_state(exp_dir) or "")
    assert state.read_text() == good and ray_state_intact(ray_state_files(exp_dir))
    assert repair_ray_state(exp_dir) is None
    for path in (exp_dir / RAY_STATE_BACKUP).iterdir():
        path.write_text("{")
    state.write_text("{")
    with pytest.raises(ConfigError, match="damaged"):
        repair_ray_state(exp_dir)


def test_only_infrastructure_failures_are_retried(ray_cluster: str, tmp_path: Path) -> None:
    """A failure the trial's code raised deterministically (a diverged state, a bad config, a
    programming error) ends the trial at once; a dead worker is retried (`--max-failures`)."""
    import math

    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from rsst_tune.errors import TrialDiverged
    from rsst_tune.tune.run.context import SweepContext
    from rsst_tune.tune.safety.retries import RetryPolicy

    context = SweepContext()

    def trial(adopted: bool = True) -> Any:
        t = Trial("train_trial", stub=True, max_failures=2)
        t.storage = StorageContext(str(tmp_path), "e", trial_dir_name=f"trial_{t.trial_id}")
        Path(t.local_path).mkdir(parents=True)  # where Ray writes error.txt
        if adopted:
            RetryPolicy(context).on_trial_start(0, [t], t)
        return t

    def raised(exc: BaseException) -> BaseException:  # how ray.get hands a task's error over
        return RayTaskError("ImplicitFunc.train", "Traceback ...", exc).as_instanceof_cause()

    diverged = trial()
    assert diverged.should_recover()  # not failed yet
    diverged.handle_error(raised(TrialDiverged(1, 2, math.nan)))
    assert diverged.run_metadata.num_failures == 1
    assert not diverged.should_recover()
    line = "TrialDiverged: diverged in state 1, epoch 2 (loss nan)"
    assert context.failure_line(diverged.trial_id) == line
    bug = trial()
    bug.handle_error(raised(KeyError("val_acc")))
    assert not bug.should_recover()
    for infra in (ActorDiedError(), raised(RuntimeError("CUDA error: launch failure"))):
        died = trial()
        died.handle_error(infra)
        assert died.should_recover(), infra  # retried, up to max_failures times
        died.handle_error(infra)
        died.handle_error(infra)
        assert not died.should_recover()  # 3 failures > max_failures 2
    plain = trial(adopted=False)  # Ray's own Trial retries everything
    plain.handle_error(raised(TrialDiverged(1, 2, math.nan)))
    assert plain.should_recover()


def test_a_storage_failure_noted_while_logging_it_does_not_recurse() -> None:
    """sweep.log on the full disk: logging "storage error ...; stopping" fails, and the log
    handler notes that failure again (console._SweepLogHandler.handleError); the note must
    already be taken, or this recursed until RecursionError (seen in the full-disk chaos test)."""
    import errno

    from rsst_tune.tune.run.context import SweepContext

    full = OSError(errno.ENOSPC, "No space left on device")
    seen: list[str] = []
    context = SweepContext()

    class FullDiskHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            context.note_storage_failure(
                OSError(errno.ENOSPC, "No space left on device", "sweep.log")
            )

    logger = logging.getLogger("rsst_tune.tune.run.context")
    handler, level = FullDiskHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        context.note_storage_failure(full)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert context.storage_failure is full and len(seen) == 1, seen


def test_a_full_disk_named_only_in_a_rays_message_stops_the_sweep_and_stays_off_the_console(
    tmp_path: Path,
) -> None:
    """Ray sometimes reports a failed write as text ("... [Errno 28] No space left on device"),
    with no exception attached: the sweep notes it as its storage failure (and stops with its
    one line), and the console does not print Ray's message as a second line."""
    from rsst_tune.tune.console import sweep_logging
    from rsst_tune.tune.run.context import SweepContext

    context = SweepContext()
    console = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(console)
    try:
        with sweep_logging(tmp_path, context=context):
            logging.getLogger("ray.tune.execution").error(
                "Saving experiment state to %s failed: [Errno 28] %s",
                tmp_path,
                "No space left on device",
            )
            logging.getLogger("rsst_tune.tune").error("an ordinary error")
    finally:
        root.removeHandler(console)
    assert isinstance(context.storage_failure, OSError)
    assert context.storage_failure.errno == errno.ENOSPC
    stream = console.stream
    assert isinstance(stream, io.StringIO)
    assert "No space left" not in stream.getvalue()
    assert "an ordinary error" in stream.getvalue()
    assert "No space left" in (tmp_path / "sweep.log").read_text()


def test_rays_state_is_signed_as_it_is_saved_and_verifies_when_synced(
    ray_cluster: str, tmp_path: Path
) -> None:
    """StateSigner signs each version Ray saves in its staging directory under the name its
    syncer gives it in the experiment directory: after a SIGKILL the synced files verify
    (the last few versions are accepted, so a late copy verifies too)."""
    import pickle
    import shutil

    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from rsst_tune.tune.safety.trust import StateSigner, check_resume, sign_all

    trial = Trial("train_trial", stub=True)
    # Ray's staging directory is <session>/artifacts/<second>/<name>: a name of its own, so
    # another test's experiment started in the same second does not share it
    name = f"e-{trial.trial_id}"
    trial.storage = StorageContext(str(tmp_path), name, trial_dir_name=f"trial_{trial.trial_id}")
    staging = Path(trial.storage.experiment_driver_staging_path)
    exp = Path(trial.storage.experiment_fs_path)
    staging.mkdir(parents=True)
    exp.mkdir(exist_ok=True)
    assert exp == tmp_path / name
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    sign_all(exp)  # the runner, before Ray runs
    signer = StateSigner()
    versions = []
    for n in range(3):  # Ray saves its state (one step each), its syncer copies it later
        state = {"trial_data": [[json.dumps({"trial_id": "t", "n": n}), "{}"]]}
        (staging / "experiment_state-s.json").write_text(json.dumps(state))
        (staging / "searcher-state-s.pkl").write_bytes(pickle.dumps({"n": n}))
        signer.on_step_end(n, [trial])
        versions.append({p.name: p.read_bytes() for p in staging.iterdir()})
    for synced in (versions[2], versions[1]):  # the latest, or one copied late
        for name, data in synced.items():
            (exp / name).write_bytes(data)
        assert check_resume(exp) == []
    (exp / "searcher-state-s.pkl").write_bytes(pickle.dumps({"n": 99}))  # never signed
    with pytest.raises(ConfigError, match=r"searcher-state-s\.pkl was not written by your"):
        check_resume(exp)
    assert pickle.loads(pickle.dumps(signer)).__dict__ == {"_seen": {}}  # tuner.pkl: no state
    shutil.rmtree(staging)


_FORKER = """
import os, time
while True:  # a process that keeps forking, as a worker starting its data loaders
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    time.sleep(0.05)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_reaper_kills_the_clusters_processes_and_what_they_fork_while_dying() -> None:
    from rsst_tune.tune.run.ray_setup import _REAPER, _with_start_times

    raylet = "987654321"  # a pid no process has: the mark of this test's "cluster"
    mark = f"RAY_RAYLET_PID={raylet}".encode()

    def marked() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    forker = subprocess.Popen(
        [sys.executable, "-c", _FORKER],
        env={**os.environ, "RAY_RAYLET_PID": raylet},
        start_new_session=True,
    )
    own = subprocess.Popen(["sleep", "600"])  # as the GCS: started by the driver, no mark
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, raylet, *_with_start_times([own.pid])],
            stdin=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while len(marked()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(marked()) >= 5, "the forker did not start"
        assert reaper.stdin is not None
        reaper.stdin.close()  # what the driver's death does
        assert reaper.wait(timeout=60) == 0
        assert marked() == [], "a process of the cluster outlived the reaper"
        assert own.wait(timeout=10) == -9  # known by pid and start time
        assert bystander.poll() is None, "the reaper killed a process not of the cluster"
    finally:
        for p in (own, bystander):
            p.kill()
            p.wait()
        with contextlib.suppress(OSError):
            os.killpg(forker.pid, 9)
        forker.wait()


_RAYLET = """
import subprocess, sys, time
time.sleep(0.5)  # after the reaper started, as an agent the raylet starts late
agent = subprocess.Popen(["sleep", "600"], start_new_session=True)
print(agent.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_reaper_kills_the_orphaned_unmarked_children_of_the_clusters_processes() -> None:
    from rsst_tune.tune.run.ray_setup import _REAPER, _with_start_times

    # As the raylet: started by the driver, it starts agents that carry no RAY_RAYLET_PID and
    # that outlive it (reparented) when the driver's death takes the raylet down.
    raylet = subprocess.Popen([sys.executable, "-c", _RAYLET], stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen(["sleep", "600"])
    agent_pid = 0
    try:
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(raylet.pid), *_with_start_times([raylet.pid])],
            stdin=subprocess.PIPE,
        )
        assert raylet.stdout is not None
        agent_pid = int(raylet.stdout.readline())
        time.sleep(4.5)  # two of the reaper's looks for children
        raylet.kill()
        raylet.wait()
        assert Path(f"/proc/{agent_pid}").exists(), "the agent should outlive its parent"
        assert reaper.stdin is not None
        reaper.stdin.close()  # what the driver's death does
        assert reaper.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while _alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(agent_pid), "the raylet's agent outlived the reaper"
        assert bystander.poll() is None, "the reaper killed a process not of the cluster"
    finally:
        for p in (raylet, bystander):
            p.kill()
            p.wait()
        if agent_pid and _alive(agent_pid):
            os.kill(agent_pid, 9)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed and not yet reaped by init, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False
