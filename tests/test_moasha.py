"""MO-ASHA (`--scheduler moasha`): the ranking, the stops it gives, and a real sweep with it.

The hand computation that the scripted tests check (η = 2, rungs at states 1 and 2 of trials
with states 0..4; a point is (val_acc, macs_frac), val_acc maximised, macs_frac minimised; a
trial continues iff the number of points strictly better than it at the rung, `rank`, is
< n / η, n counting its own point):

Rung state 1, trials arriving T1..T6:

* T1 (0.90, 0.50): n = 1, rank 0 < 0.5: continue.
* T2 (0.80, 0.60): T1 dominates it (more accurate and cheaper): front 1, rank 1; n = 2,
  1 < 1 fails: **stop**.
* T3 (0.95, 0.70): T1 and T3 do not dominate each other: front 0 = {T1, T3}, a front of two
  points, both at infinite crowding distance; rank 0 < 1.5: continue.
* T4 (0.85, 0.40): front 0 = {T4, T1, T3} (T4 is the cheapest, T3 the most accurate), front 1
  = {T2}. T4 and T3 are the extremes (infinite distance); T1's distance is 1 + 1 = 2. Nothing is
  strictly better than T4: rank 0 < 2: continue.
* T5 (0.88, 0.55): T1 dominates T5, T5 dominates T2: front 0 {T4, T1, T3}, front 1 {T5},
  front 2 {T2}; rank 3 (the three of front 0); n = 5, 3 < 2.5 fails: **stop**.
* T6 (0.92, 0.45): T6 dominates T1 (and so T5 and T2): front 0 = {T4, T6, T3}; T6 is the
  interior point, distance (0.95 - 0.85) / 0.10 + (0.70 - 0.40) / 0.30 = 2, the extremes
  T4 and T3 are infinite, so rank 2; n = 6, 2 < 3: continue.

Rung state 2, the trials still running arriving T1, T3, T4, T6:

* T1 (0.89, 0.30): n = 1: continue.
* T3 (0.93, 0.45): T1 cheaper, T3 more accurate: one front of two, rank 0 < 1: continue.
* T4 (0.80, 0.20): the cheapest, an extreme of front 0 = {T4, T1, T3}: rank 0 < 1.5: continue.
* T6 (0.60, 0.25): T4 dominates it (0.80 > 0.60 and 0.20 < 0.25): front 1, rank 3; n = 4,
  3 < 2 fails: **stop**.

So MO-ASHA stops T2 and T5 at state 1 and T6 at state 2; T1, T3 and T4 run to state 4.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsst_tune.tune import SweepOptions
from rsst_tune.tune.search.moasha import (
    MoashaRungs,
    continues,
    crowding_distance,
    dominates,
    non_dominated_sort,
    orient,
    ranks,
    rung_states,
)

REPO = Path(__file__).resolve().parents[1]
METRICS = ("val_acc", "macs_frac")
MODES = ("max", "min")
LAST_STATE = 4  # states 0..4: rungs at 1 and 2 (4, the last state, is never a rung)
DENSE = (0.97, 1.0)
# (val_acc, macs_frac) per trial at the rung states; other states reuse DENSE / LATE.
SCRIPT: dict[str, dict[int, tuple[float, float]]] = {
    "T1": {1: (0.90, 0.50), 2: (0.89, 0.30)},
    "T2": {1: (0.80, 0.60)},
    "T3": {1: (0.95, 0.70), 2: (0.93, 0.45)},
    "T4": {1: (0.85, 0.40), 2: (0.80, 0.20)},
    "T5": {1: (0.88, 0.55)},
    "T6": {1: (0.92, 0.45), 2: (0.60, 0.25)},
}
LATE = (0.70, 0.10)
EXPECTED_STOPS = {"T2": 1, "T5": 1, "T6": 2}  # the hand computation above
# The smoke preset may re-run its best tickets with more seeds at the end (`confirm`): off here.
NO_CONFIRM: dict[str, Any] = (
    {"confirm": 0} if "confirm" in {f.name for f in fields(SweepOptions)} else {}
)


def _values(trial: str, state: int) -> dict[str, float]:
    val, macs = DENSE if state == 0 else SCRIPT[trial].get(state, LATE)
    return {"val_acc": val, "macs_frac": macs}


def _run_script(rungs: MoashaRungs, order: list[str]) -> dict[str, int]:
    """Run the trials one after the other (as one Ray worker would); where each stopped."""
    stops = {}
    for trial in order:
        for state in range(LAST_STATE + 1):
            if not rungs.on_result(trial, state, _values(trial, state), LAST_STATE):
                stops[trial] = state
                break
    return stops


# ---------------------------------------------------------------------- the hand computation
def test_scripted_results_give_the_hand_computed_stops() -> None:
    rungs = MoashaRungs(METRICS, MODES, grace=1, reduction_factor=2)
    assert rung_states(1, 2, LAST_STATE) == [1, 2]
    assert _run_script(rungs, list(SCRIPT)) == EXPECTED_STOPS
    assert rungs.stopped() == {1: ["T2", "T5"], 2: ["T6"]}
    # The ranks the docstring derives, at rung 1 after T6 arrived (order T1..T6).
    points = [orient(_values(t, 1), METRICS, MODES) for t in SCRIPT]
    assert non_dominated_sort(points) == [1, 3, 0, 0, 2, 0]
    crowd = crowding_distance(points, non_dominated_sort(points))
    assert crowd[2] == crowd[3] == math.inf and crowd[5] == pytest.approx(2.0)
    assert ranks(points) == [3, 5, 0, 0, 4, 2]
    # A state reported again (a resumed trial) gets the decision taken the first time.
    assert rungs.on_result("T5", 1, _values("T1", 1), LAST_STATE) is False
    assert rungs.on_result("T4", 1, _values("T2", 1), LAST_STATE) is True


def test_rungs_and_the_promotion_rule() -> None:
    assert rung_states(1, 2, 9) == [1, 2, 4, 8]
    assert rung_states(2, 3, 9) == [2, 6]
    assert rung_states(1, 2, 1) == []  # two states: no rung below the last
    assert [continues(r, 6, 2) for r in range(6)] == [True, True, True, False, False, False]
    assert continues(0, 1, 2) and not continues(1, 2, 2) and continues(1, 3, 2)
    with pytest.raises(ValueError):
        rung_states(0, 2, 4)
    # The extremes of a rung's Pareto front always continue, however many points are worse.
    rungs = MoashaRungs(METRICS, MODES, grace=1, reduction_factor=4)
    for i in range(8):  # each dominated by the ones before it: only the first continues
        worse = {"val_acc": 0.5 - 0.01 * i, "macs_frac": 0.9}
        assert rungs.on_result(f"w{i}", 1, worse, 3) == (i == 0)
    # equal points share a rank, so a copy of a continuing point continues too
    assert rungs.on_result("copy", 1, {"val_acc": 0.5, "macs_frac": 0.9}, 3)
    assert rungs.on_result("acc", 1, {"val_acc": 0.99, "macs_frac": 0.95}, 3)
    assert rungs.on_result("cheap", 1, {"val_acc": 0.1, "macs_frac": 0.05}, 3)
    # A missing or non-finite objective ranks last.
    assert orient({"val_acc": math.nan}, METRICS, MODES) == (-math.inf, -math.inf)


def test_rungs_pickle_and_round_trip_as_json() -> None:
    rungs = MoashaRungs(METRICS, MODES, grace=1, reduction_factor=2)
    _run_script(rungs, ["T1", "T2", "T3"])
    for copy in (pickle.loads(pickle.dumps(rungs)), MoashaRungs.from_json(rungs.to_json())):
        assert copy.recorded == rungs.recorded
        # the copy goes on as the original would
        assert _run_script(copy, ["T4", "T5", "T6"]) == {"T5": 1, "T6": 2}


def test_restore_rows_rebuild_the_rungs_a_sweep_recorded() -> None:
    """What a resumed sweep does (`on_trial_add`): the rungs rebuilt from result rows."""
    rows = {
        t: [{"state": s, "pruning_times": LAST_STATE + 1, **_values(t, s)} for s in states]
        for t, states in {
            "T1": range(5),
            "T2": range(2),
            "T3": range(5),
            "T4": range(5),
            "T5": range(2),
            "T6": range(2),
        }.items()
    }
    rebuilt = MoashaRungs(METRICS, MODES, grace=1, reduction_factor=2)
    for t, r in rows.items():
        rebuilt.restore_rows(t, r)
        if t in ("T2", "T5"):
            rebuilt.mark_stopped(t, 1)
    assert {s: list(r) for s, r in rebuilt.recorded.items()} == {
        1: ["T1", "T2", "T3", "T4", "T5", "T6"],
        2: ["T1", "T3", "T4"],
    }
    assert rebuilt.stopped() == {1: ["T2", "T5"], 2: []}
    # T6 resumes at state 2 and meets T4 there: stopped as in the uninterrupted sweep.
    assert rebuilt.on_result("T6", 2, _values("T6", 2), LAST_STATE) is False


def _bench_search() -> Any:
    """benchmarks/bench_search.py as a module (benchmarks/ is not a package)."""
    name = "_bench_search_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks/bench_search.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclass looks its module up while it is built
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_benchmark_hypervolume_by_hand() -> None:
    hv = _bench_search().hypervolume
    # (val_acc, 1 - macs_frac) against (0.1, 0.0): strips of a staircase, by accuracy
    # descending: (0.9 - 0.1) x 0.2 + (0.7 - 0.1) x (0.5 - 0.2) + (0.5 - 0.1) x (0.8 - 0.5)
    points = [(0.9, 0.2), (0.7, 0.5), (0.5, 0.8)]
    assert hv(points) == pytest.approx(0.16 + 0.18 + 0.12)
    # a dominated point, a dense state (no MACs saved) and one at chance add nothing
    assert hv([*points, (0.6, 0.4), (0.95, 0.0), (0.1, 0.9)]) == pytest.approx(0.46)
    assert hv([]) == 0.0


def test_the_benchmark_judges_the_goal_on_the_seed_averaged_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two seeds, budget 20: random+fifo ends at 0.2 and 0.5 (mean 0.35, reached at epoch 20
    on the averaged curve); tpe+moasha reaches 0.6 at epoch 5 in seed 0 (5 / 20 = 0.25) and
    0.1 at epoch 10 in seed 1 (never 0.5): on its averaged curve 0.3 at 5 and 0.35 at 10, so
    10 / 20 = 0.5 (met) where one seed alone does not meet it."""
    bench = _bench_search()
    base = {0: [(10, 0.1), (20, 0.2)], 1: [(10, 0.3), (20, 0.5)]}
    curves = {
        "tpe+moasha": {0: [(5, 0.6)], 1: [(10, 0.1)]},
        "tpe+fifo": {0: [(20, 0.1)], 1: [(20, 0.1)]},
        "random+moasha": base,
        "random+fifo": base,
    }
    mean = bench.mean_curve(curves["tpe+moasha"], (0, 1), 20)
    assert mean[4] == (5, pytest.approx(0.3)) and mean[9] == (10, pytest.approx(0.35))
    size = dict(seeds=[0, 1], states=2, epochs=10, fifo_trials=1, moasha_trials=2)
    saved = tmp_path / "curves.json"
    saved.write_text(json.dumps({"size": size, "budget": 20, "curves": curves}))
    assert bench.main(["--from-curves", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "tpe+moasha    per seed 0.25, never; <= 0.5 in 1 of 2" in out
    assert "tpe+moasha    10 epochs (0.50)" in out and "tpe+fifo      never" in out
    assert "on the seed-averaged curve: met (0.50); per seed: met in 1 of 2" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ratio"]["tpe+moasha"] == 0.5 and summary["goal_met"] is True
    assert summary["ratio_per_seed"]["tpe+moasha"] == [0.25, "never"]
    assert summary["ratio"]["tpe+fifo"] == "never"
    del curves["tpe+fifo"][1]  # a partial file: refused, naming what is missing
    saved.write_text(json.dumps({"size": size, "budget": 20, "curves": curves}))
    with pytest.raises(SystemExit):
        bench.main(["--from-curves", str(saved)])
    assert "has no curve for tpe+fifo seed 1" in capsys.readouterr().err


def test_tpe_start_up_is_a_fifth_of_the_trials_within_2_and_10() -> None:
    from rsst_tune.tune.search.samplers import make_sampler, tpe_startup

    sizes = {1: 2, 6: 2, 8: 2, 15: 3, 16: 3, 24: 4, 32: 6, 50: 10, 500: 10}
    assert {n: tpe_startup(n) for n in sizes} == sizes
    sampler: Any = make_sampler("tpe", 0, 24, 2)  # Optuna keeps its settings private
    assert sampler._n_startup_trials == 4 and sampler._constant_liar
    serial: Any = make_sampler("tpe", 0, 24, 1)
    assert not serial._constant_liar


# ---------------------------------------------------------------------- non-dominated sort
points_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=6).map(float),
        st.integers(min_value=0, max_value=6).map(float),
        st.integers(min_value=0, max_value=3).map(float),
    ).map(lambda p: p[:2] if p[2] > 1 else p),
    min_size=1,
    max_size=24,
).filter(lambda ps: len({len(p) for p in ps}) == 1)


@settings(max_examples=200, deadline=None)
@given(points_strategy)
def test_non_dominated_sort_properties(points: list[tuple[float, ...]]) -> None:
    fronts = non_dominated_sort(points)
    assert min(fronts) == 0 and set(fronts) == set(range(max(fronts) + 1))
    for i, p in enumerate(points):
        # front 0 is exactly the points nothing dominates
        assert (fronts[i] == 0) == (not any(dominates(q, p) for q in points))
        # a point's front is one more than the deepest front of the points dominating it
        above = [fronts[j] for j, q in enumerate(points) if dominates(q, p)]
        assert fronts[i] == (max(above) + 1 if above else 0)
        for j, q in enumerate(points):
            if dominates(p, q):
                assert fronts[i] < fronts[j]
            if p == q:
                assert fronts[i] == fronts[j]
    # the fronts do not depend on the order of the points
    order = sorted(range(len(points)), key=lambda i: (points[i], i), reverse=True)
    shuffled = non_dominated_sort([points[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(points))] == fronts


@settings(max_examples=200, deadline=None)
@given(points_strategy)
def test_ranks_and_crowding_properties(points: list[tuple[float, ...]]) -> None:
    fronts = non_dominated_sort(points)
    crowd = crowding_distance(points, fronts)
    rank = ranks(points)
    assert all(c >= 0 for c in crowd)
    for level in set(fronts):
        members = [points[i] for i in range(len(points)) if fronts[i] == level]
        for m in range(len(points[0])):  # each objective's best and worst in a front: infinite
            for extreme in (max(p[m] for p in members), min(p[m] for p in members)):
                assert any(
                    crowd[i] == math.inf
                    for i in range(len(points))
                    if fronts[i] == level and points[i][m] == extreme
                )
    for i, p in enumerate(points):
        for j, q in enumerate(points):
            if dominates(p, q):
                assert rank[i] < rank[j]
            if p == q:
                assert rank[i] == rank[j] and crowd[i] == crowd[j]
    # someone is always kept: the best-ranked point continues at any reduction factor
    assert continues(min(rank), len(points), 100)


# ---------------------------------------------------------------------- Ray


def _scripted_trainable(config: dict[str, Any]) -> None:
    """Reports the script's values state by state with a checkpoint; trial `fail` raises
    once, before its state 2, until the marker file exists."""
    from ray import tune

    config = config["cfg"]
    trial = config["tid"]
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = int((Path(d) / "state").read_text()) + 1
    for state in range(start, config["states"]):
        marker = Path(config["marker"])
        if trial == config["fail"] and state == 2 and not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("scripted failure before state 2")
        val, macs = config["script"].get(str(state), config["other"])
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state").write_text(str(state))
            tune.report(
                {
                    "state": state,
                    "pruning_times": config["states"],
                    "val_acc": val,
                    "macs_frac": macs,
                },
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def _tuner(tmp_path: Path, name: str, fail: str) -> Any:
    from ray import tune

    from rsst_tune.tune.search.moasha import make_scheduler

    configs = [
        {
            "tid": t,
            "script": {str(s): v for s, v in {0: DENSE, **SCRIPT[t]}.items()},
            "other": LATE,
            "states": LAST_STATE + 1,
            "fail": fail,
            "marker": str(tmp_path / "failed_once"),
        }
        for t in SCRIPT
    ]
    return tune.Tuner(
        _scripted_trainable,
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            scheduler=make_scheduler(list(METRICS), list(MODES), grace=1, reduction_factor=2),
            max_concurrent_trials=1,  # T1..T6 one after the other, as the docstring assumes
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(tmp_path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _last_states(results: Any) -> dict[str, tuple[int, bool]]:
    out = {}
    for r in results:
        out[r.config["cfg"]["tid"]] = (int(r.metrics["state"]), r.error is not None)
    return out


@pytest.mark.sweep
def test_ray_scheduler_stops_what_the_hand_computation_stops_and_survives_a_restore(
    ray_cluster: str, tmp_path: Path
) -> None:
    """A real Tuner runs the script; T6 fails once before state 2 (max_failures 0: ERROR).
    `Tuner.restore(resume_errored=True)` then resumes T6 at state 2 with the scheduler
    unpickled from tuner.pkl (empty: Ray does not save a scheduler's state): it must rebuild
    rung 2 (T1, T3, T4) from the trials' result rows and stop T6 there; a scheduler that
    forgot them would see T6 alone at rung 2 and let it run to state 4."""
    from ray import cloudpickle, tune

    # The Ray workers cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    first = _last_states(_tuner(tmp_path, "scripted", fail="T6").fit())
    assert first == {
        "T1": (4, False),
        "T2": (1, False),  # stopped at rung 1
        "T3": (4, False),
        "T4": (4, False),
        "T5": (1, False),  # stopped at rung 1
        "T6": (1, True),  # failed before state 2
    }

    restored = tune.Tuner.restore(
        str(tmp_path / "scripted"), trainable=_scripted_trainable, resume_errored=True
    )
    after = _last_states(restored.fit())
    assert after["T6"] == (2, False), after  # resumed at 2 and stopped there
    stops = {t: s for t, (s, err) in after.items() if s < LAST_STATE and not err}
    assert stops == EXPECTED_STOPS
    rows = [
        row["state"]
        for p in (tmp_path / "scripted").glob("*/result.json")
        for row in map(json.loads, p.read_text().splitlines())
        if row["config"]["cfg"]["tid"] == "T6"
    ]
    assert rows == [0, 1, 2], rows  # no state of T6 ran twice


def test_the_scheduler_unpickles_in_a_fresh_process() -> None:
    """Ray stores the scheduler in tuner.pkl; `--resume` unpickles it in a new process,
    before anything has built the Ray class."""
    from rsst_tune.tune.search.moasha import make_scheduler

    scheduler = make_scheduler(list(METRICS), list(MODES), grace=1, reduction_factor=2)
    for t in ("T1", "T2"):
        for s in range(3):
            scheduler.rungs.on_result(t, s, _values(t, s), LAST_STATE)
    code = (
        "import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
        "print(type(s).__name__, s.rungs.stopped())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(scheduler),
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    assert out.stdout.decode().split() == ["MoashaScheduler", "{1:", "['T2'],", "2:", "[]}"]


# ---------------------------------------------------------------------- a real smoke sweep
@pytest.mark.sweep
def test_smoke_sweep_with_moasha_stops_trials_and_ends_with_a_pareto_front(
    ray_cluster: str, tmp_path: Path
) -> None:
    import optuna

    from rsst_tune.tune import load_experiment, resolve_plan, run_sweep
    from rsst_tune.tune.console import EVENTS_FILE

    plan = resolve_plan(
        SweepOptions(
            space="vit_head_mlp",
            preset="smoke",
            num_samples=6,
            max_concurrent=2,
            storage=str(tmp_path),
            name="mo",
            seed=0,
            states=3,
            epochs=2,
            scheduler="moasha",
            **NO_CONFIRM,
        )
    )
    assert plan.scheduler == "moasha" and plan.asha == {"grace": 1, "reduction_factor": 2}
    experiment = run_sweep(plan, show=False)
    assert experiment is not None
    exp = load_experiment(tmp_path / "mo")
    stopped = [t for t in exp.trials if t.status == "pruned"]
    assert stopped, "MO-ASHA stopped no trial; the test needs at least one"
    events = [json.loads(line) for line in (tmp_path / "mo" / EVENTS_FILE).read_text().splitlines()]
    pruned_at = {e["trial_id"]: e["state"] for e in events if e["event"] == "pruned"}
    for t in exp.trials:
        if t.status == "pruned":
            assert [s.state for s in t.states] == [0, 1]  # the rung, state 1
            assert pruned_at[t.trial_id] == 1
        else:
            assert t.status == "complete" and [s.state for s in t.states] == [0, 1, 2]
    # Optuna: named objectives, one record per state, PRUNED with the last state's values.
    assert exp.study is not None and exp.study.metric_names == ["val_acc", "macs_frac"]
    by_ray = {ot.user_attrs["ray_trial_id"]: ot for ot in exp.study.get_trials(deepcopy=False)}
    for t in exp.trials:
        ot = by_ray[t.trial_id]
        for s in t.states:
            assert ot.user_attrs[f"values_state_{s.state}"] == {
                "val_acc": pytest.approx(s.val_acc),
                "macs_frac": pytest.approx(s.macs_frac),
            }
        if t.status == "pruned":
            assert ot.state == optuna.trial.TrialState.PRUNED
            assert ot.user_attrs["stopped_after_state"] == 1
            assert ot.user_attrs["pruned_values"] == {
                "val_acc": pytest.approx(t.states[-1].val_acc),
                "macs_frac": pytest.approx(t.states[-1].macs_frac),
            }
        else:
            assert ot.state == optuna.trial.TrialState.COMPLETE
            assert ot.values == [
                pytest.approx(t.states[-1].val_acc),
                pytest.approx(t.states[-1].macs_frac),
            ]
    front = exp.pareto()
    assert front and any(t.macs_frac < 1.0 for t in front)
    # The benchmark's curve counts every state, a stopped trial's too, with its epochs.
    points = _bench_search().curve(tmp_path / "mo")
    assert len(points) == sum(len(t.states) for t in exp.trials)
    assert points[-1][0] == sum(s.epochs_trained for t in exp.trials for s in t.states)
    report = (tmp_path / "mo" / "report.md").read_text()
    assert "Pareto front" in report and "pruned" in report


# ---------------------------------------------------------------------- options and plan
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--grace", "0"], "--grace must be a pruning state >= 1 for moasha"),
        (["--grace", "-1"], "--grace: must be an integer"),
        (["--reduction-factor", "1"], "--reduction-factor: must be an integer in [2, 100]"),
        (["--scheduler", "fifo", "--grace", "2"], "apply to --scheduler moasha or asha"),
        (["--scheduler", "asha"], "use --scheduler moasha"),
    ],
)
def test_bad_moasha_options_are_one_line_and_exit_2(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rsst_tune.tune.cli import main as tune_main

    storage = tmp_path / "store"
    try:  # argparse's type errors exit; a plan's ConfigError returns the status
        rc = tune_main(["--space", "vit_head_mlp", "--storage", str(storage), "--dry-run", *argv])
    except SystemExit as exc:
        rc = exc.code  # type: ignore[assignment]
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not storage.exists()


def test_the_plan_keeps_the_rungs_and_reads_older_asha_settings(tmp_path: Path) -> None:
    import dataclasses

    from rsst_tune.tune.plan import (
        SweepPlan,
        describe_plan,
        halving_settings,
        moasha_rungs,
        resolve_plan,
    )

    plan = resolve_plan(
        SweepOptions(space="vit_head_mlp", storage=str(tmp_path), reduction_factor=3, states=8)
    )
    assert plan.scheduler == "moasha"  # the space's default: it searches sparsity
    assert halving_settings(plan) == (1, 3) and moasha_rungs(plan) == [1, 3]
    assert "rungs at states 1, 3; reduction factor 3" in describe_plan(plan)
    again = SweepPlan.from_json(plan.to_json())
    assert halving_settings(again) == (1, 3)
    # a plan written before MO-ASHA stored ASHA's grace period in Ray iterations (state + 1)
    older = dataclasses.replace(plan, asha={"grace_period": 1, "reduction_factor": 2})
    assert halving_settings(older) == (0, 2)
    two = resolve_plan(SweepOptions(space="vit_head_mlp", storage=str(tmp_path), states=2))
    assert moasha_rungs(two) == [] and "no rung below the last state 1" in describe_plan(two)
