"""The measured latency model (`rsst_tune.latency_model`), `rsst-tune latency-table`, and
predicted latency in a sweep: the objective `latency_ms`, `--latency-budget` and the report."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from rsst_tune.errors import ConfigError
from rsst_tune.latency_model import BlockTimes, LatencyTable, build_latency_table
from rsst_tune.tune.plan import SweepOptions, load_plan, resolve_plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vit_table() -> LatencyTable:
    return build_latency_table("vit_digits", img_size=8, max_points=4, repeats=2)


def test_block_times_interpolate_between_widths_and_clamp_at_the_ends() -> None:
    times = BlockTimes((1, 4, 8), (1.0, 4.0, 6.0))
    assert times.at(1) == 1.0 and times.at(8) == 6.0 and times.full == 6.0
    assert times.at(2) == pytest.approx(2.0)
    assert times.at(6) == pytest.approx(5.0)
    assert times.at(0) == 1.0 and times.at(99) == 6.0


def test_a_table_times_each_distinct_block_once_and_predicts_by_sums(
    vit_table: LatencyTable,
) -> None:
    t = vit_table
    # vit_digits: 4 blocks, each with heads and an MLP; identical blocks share their timings
    assert t.order["filter"] == []
    assert len(t.order["head"]) == len(t.order["neuron"]) == 4
    assert len(t.groups) == 8 and len(t.blocks) == 2
    assert t.predict_s({}) == t.dense_s  # every unit: the dense time
    assert t.predict_s(t.num_units) == pytest.approx(t.dense_s)
    heads = t.blocks[t.groups["blocks.0.attn"]]
    assert heads.widths == (1, 2, 3, 4)  # every head count
    mlp = t.blocks[t.groups["blocks.0.mlp"]]
    assert mlp.widths[0] == 1 and mlp.widths[-1] == t.num_units["blocks.0.mlp"]
    alive = {"blocks.0.attn": 2, "blocks.2.mlp": mlp.widths[1]}
    a, b = t.scale["head"], t.scale["neuron"]  # fitted to tickets timed whole
    expected = t.dense_s + a * (heads.at(2) - heads.full) + b * (mlp.seconds[1] - mlp.full)
    assert t.predict_s(alive) == pytest.approx(max(expected, 0.0))
    assert 0.0 <= a <= 3.0 and 0.0 <= b <= 3.0 and t.calibration["tickets"] == 12
    assert t.predict_ms(alive) == pytest.approx(1000 * t.predict_s(alive))
    again = LatencyTable.from_json(t.to_json())
    assert again == t
    from rsst_tune.latency import hold_freed_memory

    assert t.memory_held == hold_freed_memory()  # the CPU's timings held freed memory
    old = json.loads(t.to_json())
    del old["memory_held"]  # a table written before the field: read, and not claimed held
    assert LatencyTable.from_json(json.dumps(old)).memory_held is False


def test_calibration_fits_one_factor_per_kind_to_tickets_timed_whole(
    vit_table: LatencyTable,
) -> None:
    import dataclasses

    from rsst_tune.latency_model import _calibrated

    raw = dataclasses.replace(vit_table, scale={}, calibration={})
    groups = [SimpleNamespace(name=n, kind=k, num_units=raw.num_units[n])
              for k, names in raw.order.items() for n in names]  # fmt: skip

    def delta(alive: dict[str, int], kind: str) -> float:
        return sum(
            raw.blocks[raw.groups[g.name]].at(alive[g.name]) - raw.blocks[raw.groups[g.name]].full
            for g in groups
            if g.kind == kind
        )

    # a machine on which a cut head saves twice what its block alone showed, a neuron half;
    # one ticket is timed in a spell of load that slows it and the dense run beside it by half
    def whole(alive: dict[str, int], slow: float = 1.0) -> tuple[float, float]:
        ticket = raw.dense_s + 2.0 * delta(alive, "head") + 0.5 * delta(alive, "neuron")
        return slow * ticket, slow * raw.dense_s

    spells = iter([1.0] * 6 + [1.5] + [1.0] * 3)
    fitted = _calibrated(raw, groups, lambda alive: whole(alive, next(spells)), 10)
    assert fitted.dense_s == pytest.approx(raw.dense_s)
    assert fitted.scale["head"] == pytest.approx(2.0, rel=1e-6)  # the slow spell cancels out
    assert fitted.scale["neuron"] == pytest.approx(0.5, rel=1e-6)
    assert fitted.calibration["median_error"] == pytest.approx(0.0, abs=1e-9)
    assert fitted.margin == pytest.approx(0.0, abs=1e-9)  # nothing under-predicted
    # the dense model, timed beside the tickets, ran faster than in the table: the dense
    # time is the fastest run of all
    faster = _calibrated(raw, groups, lambda alive: whole(alive, 0.8), 10)
    assert faster.dense_s == pytest.approx(0.8 * raw.dense_s)
    # a machine the factors cannot fit exactly: some ticket is under-predicted, and the
    # margin covers the worst of them
    noise = iter([1.0, 1.06, 0.97, 1.02, 1.0, 0.99, 1.04, 1.0, 0.98, 1.01])

    timed: list[tuple[dict[str, int], float]] = []

    def noisy(alive: dict[str, int]) -> tuple[float, float]:
        ticket, dense = whole(alive)
        timed.append((alive, ticket * next(noise)))
        return timed[-1][1], dense

    rough = _calibrated(raw, groups, noisy, 10)
    worst = max(measured / rough.predict_s(alive) - 1 for alive, measured in timed)
    assert worst > 0 and rough.margin == pytest.approx(worst)
    assert all(rough.upper_s(alive) >= measured * (1 - 1e-9) for alive, measured in timed)
    assert rough.calibration["median_error"] > 0
    assert fitted.calibration["median_error_raw"] > 0


def test_calibration_tickets_span_sparse_to_dense(vit_table: LatencyTable) -> None:
    from rsst_tune.latency_model import spread_tickets

    groups = [SimpleNamespace(name=n, kind=k, num_units=vit_table.num_units[n])
              for k, names in vit_table.order.items() for n in names]  # fmt: skip
    tickets = spread_tickets({g.name: g.num_units for g in groups}, 10, random.Random(0))
    kept = sorted(
        sum(t[g.name] for g in groups) / sum(g.num_units for g in groups) for t in tickets
    )
    assert kept[0] < 0.2 and kept[-1] > 0.7  # not all about half, as independent widths are
    assert all(1 <= t[g.name] <= g.num_units for t in tickets for g in groups)


def test_a_state_result_maps_to_groups_by_kind_and_layer(vit_table: LatencyTable) -> None:
    t = vit_table
    result = SimpleNamespace(
        heads_per_layer=(4, 3, 2, 1), neurons_per_layer=(128, 64, 32, 16), filters_per_layer=None
    )
    alive = t.alive_from_result(result)
    assert alive["blocks.0.attn"] == 4 and alive["blocks.3.attn"] == 1
    assert alive["blocks.1.mlp"] == 64
    assert t.predict_result_ms(result) == pytest.approx(t.predict_ms(alive))
    with pytest.raises(ConfigError, match="4 head groups, the result has 2"):
        t.alive_from_result(SimpleNamespace(heads_per_layer=(1, 2)))


def test_removing_filters_is_predicted_faster_on_a_cnn() -> None:
    t = build_latency_table("resnet20", img_size=32, max_points=3, repeats=3)
    # only removable convs are timed; a state's counts list every conv
    assert set(t.groups) < set(t.order["filter"]) and len(t.order["filter"]) == 18
    counts = SimpleNamespace(filters_per_layer=(1,) * 18)
    assert t.predict_result_ms(counts) == pytest.approx(t.predict_ms({n: 1 for n in t.groups}))
    thin = {name: 1 for name in t.groups}
    # one filter left in the first conv of every residual block: far fewer MACs
    assert t.predict_s(thin) < 0.95 * t.dense_s, (t.predict_s(thin), t.dense_s)


def test_timings_are_the_fastest_run_and_exports_are_timed_as_the_table_was(
    tmp_path: Path, vit_table: LatencyTable
) -> None:
    import dataclasses
    import time

    import torch

    from rsst_tune.best_exports import _timing, _torch_threads
    from rsst_tune.experiment.experiment import Experiment
    from rsst_tune.latency_model import fastest_time

    # a run slowed by other work (here: a sleep in every third call) does not move the result
    calls = iter(range(10**6))

    def run() -> None:
        if next(calls) % 3 == 0:
            time.sleep(0.004)

    assert fastest_time(run, torch.device("cpu"), repeats=9, min_run_s=0.0) < 0.002

    # the export step times a sweep's tickets at the table's batch too, with its threads
    table = dataclasses.replace(vit_table, batch=256, threads=1)
    path = table.save(tmp_path / "t.json")
    exp = Experiment(name="e", path=str(tmp_path), space="s", objectives=(), trials=())
    assert _timing(exp) == ((1, 64), None)
    with_table = dataclasses.replace(exp, latency_batch=256, latency_table=str(path))
    assert _timing(with_table) == ((1, 64, 256), 1)
    gone = dataclasses.replace(with_table, latency_table=str(tmp_path / "gone.json"))
    assert _timing(gone) == ((1, 64), None)
    before = torch.get_num_threads()
    with _torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


_FREED_MEMORY = """
import sys
import torch
from rsst_tune.latency import hold_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

held = hold_freed_memory() if sys.argv[1] == "hold" else None
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, every page touched
peak = rss_mib()
del x
print(held, peak - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_cpu_timings_hold_the_memory_a_forward_frees_for_the_next() -> None:
    # without it, glibc hands a large freed tensor back to the kernel, and the next forward
    # faults in fresh pages: timings then depend on what the process allocated before
    def freed_mib(mode: str) -> tuple[str, float]:
        res = subprocess.run(
            [sys.executable, "-c", _FREED_MEMORY, mode], capture_output=True, text=True,
            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        held, freed = res.stdout.split()
        return held, float(freed)

    held, freed = freed_mib("hold")
    if held == "False":
        pytest.skip("not glibc: nothing to hold")
    assert held == "True" and freed < 8, freed  # kept for the next allocation
    assert freed_mib("default") == ("None", pytest.approx(64, abs=8))  # handed back


def test_a_table_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"version": 99}')
    with pytest.raises(ConfigError, match="not a readable latency table"):
        LatencyTable.load(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="not a readable latency table"):
        LatencyTable.load(tmp_path / "missing.json")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsst_tune.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_rsst_tune_latency_table_writes_a_table_and_refuses_bad_input(tmp_path: Path) -> None:
    res = _cli("latency-table", "--model", "vit_digits", "--img-size", "8", "--out", "t.json",
               "--max-points", "3", "--repeats", "2", "--threads", "1", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.model == "vit_digits" and table.batch == 1 and table.threads == 1
    assert "8 groups, 2 distinct blocks" in res.stdout
    bad = _cli("latency-table", "--model", "vit_digits", "--out", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2 and "is a directory" in bad.stderr, bad.stderr
    bad = _cli("latency-table", "--model", "nope_net", "--out", "u.json", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown model 'nope_net'" in bad.stderr, bad.stderr
    assert bad.stderr.count("\n") == 1


# ---------------------------------------------------------------------- the sweep's plan
def test_the_latency_objective_plans_a_table_in_the_experiment_directory(tmp_path: Path) -> None:
    opts = SweepOptions(
        space="vit_layerwise", preset="smoke", objective="val_acc,latency_ms",
        latency_batch=4, storage=str(tmp_path), name="lat",
    )  # fmt: skip
    plan = resolve_plan(opts)
    assert [o.key for o in plan.objectives] == ["val_acc", "latency_ms"]
    assert plan.latency == {"batch": 4, "table": None, "budget_ms": None}
    assert plan.latency_table_path == str(tmp_path / "lat" / "latency_table.json")
    Path(plan.local_dir).mkdir(parents=True)
    (Path(plan.local_dir) / "sweep.json").write_text(plan.to_json())
    moved = tmp_path / "moved"
    Path(plan.local_dir).rename(moved)
    assert load_plan(moved).latency_table_path == str(moved / "latency_table.json")
    assert resolve_plan(SweepOptions(space="vit_layerwise", preset="smoke")).latency == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"space": "vit_head_mlp", "latency_budget": 2.0}, "does not take --latency-budget"),
        ({"space": "vit_layerwise", "latency_budget": -1.0}, "must be a number of ms > 0"),
        ({"space": "vit_layerwise", "latency_table": "/nope.json"}, "no such file"),
        ({"space": "vit_layerwise", "latency_batch": 0}, "--latency-batch must be an integer"),
        ({"space": "vit_layerwise", "latency_table": "T", "latency_batch": 8}, "batch 1 .--laten"),
        ({"space": "resnet_layerwise", "latency_table": "T"}, "model vit_digits .the sweep's"),
    ],
)
def test_bad_latency_options_are_refused(
    options: dict[str, object], message: str, vit_table: LatencyTable, tmp_path: Path
) -> None:
    if options.get("latency_table") == "T":  # a table timed for vit_digits at batch 1
        options = {**options, "latency_table": str(vit_table.save(tmp_path / "t.json"))}
    with pytest.raises(ConfigError, match=message):
        resolve_plan(SweepOptions(preset="smoke", **options))  # type: ignore[arg-type]


def test_the_latency_budget_judges_a_proposal_by_its_planned_units(tmp_path: Path) -> None:
    from rsst_tune.config import TrialConfig
    from rsst_tune.latency_model import table_for_config
    from rsst_tune.macs_plan import LatencyBudget, analytic_model
    from rsst_tune.unit_budget import planned_alive
    from search_spaces import get_space

    base = get_space("vit_layerwise").resolve_base(preset="smoke")
    base = TrialConfig.from_dict({**base, "threads": 1}).to_dict()
    table = table_for_config(TrialConfig.from_dict(base), batch=1, device="cpu")
    path = table.save(tmp_path / "t.json")
    proposal = {"head_ratios": [0.5] * 4, "mlp_ratios": [0.5] * 4}
    cfg = TrialConfig.from_dict({**base, **proposal})
    every, pruned, _ = analytic_model(cfg)
    alive = planned_alive(cfg, every, pruned, cfg.pruning_times - 1)
    assert alive is not None
    predicted = table.predict_ms(alive)
    upper = table.upper_ms(alive)  # the prediction raised by the calibration's margin
    assert upper == pytest.approx(predicted * (1 + table.margin)) and table.margin >= 0
    for budget in (predicted * 0.9, upper * 1.1):
        constraint = LatencyBudget(base, budget, str(path))
        value = constraint(proposal)
        assert constraint.latency_ms(proposal) == pytest.approx(predicted)
        assert value == pytest.approx((upper - budget) / budget)
        assert (value <= 0) == (upper <= budget)
    # pickled with the searcher, table included: a moved or resumed sweep needs no file
    data = pickle.dumps(constraint)
    path.unlink()
    assert pickle.loads(data)(proposal) == pytest.approx(value)
    path = table.save(tmp_path / "t.json")
    # with a MACs budget too, both must hold: the larger excess decides
    both = LatencyBudget(base, predicted * 10, str(path), macs_budget=0.01)
    assert both(proposal) > 0


def test_the_report_sets_the_dense_time_at_the_exports_beside_the_tables(
    tmp_path: Path, vit_table: LatencyTable
) -> None:
    from rsst_tune.report.exports import _speed_sentence, table_dense_ms

    path = vit_table.save(tmp_path / "t.json")
    assert table_dense_ms(str(path)) == pytest.approx(1000 * vit_table.dense_s)
    assert table_dense_ms(None) is None and table_dense_ms(str(tmp_path / "gone.json")) is None
    text = _speed_sentence(4.0, [5.0, 4.4])  # the fastest dense run of the exports counts
    assert "ran in 4.400 ms, and in 4.000 ms when the latency table was built (+10.0 %)" in text
    assert _speed_sentence(None, [5.0]) == _speed_sentence(4.0, []) == ""


# ---------------------------------------------------------------------- a real sweep
@pytest.mark.sweep
@pytest.mark.slow
def test_a_sweep_under_a_latency_budget_runs_only_tickets_within_it(tmp_path: Path) -> None:
    from rsst_tune.config import TrialConfig
    from rsst_tune.experiment.select import best_at_budget
    from rsst_tune.latency_model import table_for_config
    from rsst_tune.tune import load_experiment
    from search_spaces import get_space

    base = get_space("vit_layerwise").resolve_base(preset="smoke")
    table = table_for_config(TrialConfig.from_dict({**base, "threads": 1}), batch=1, device="cpu")
    path = table.save(tmp_path / "table.json")
    # some proposals fit, the dense model does not (the budget holds a ticket to its
    # prediction raised by the table's margin)
    budget = 0.97 * 1000 * table.dense_s * (1 + table.margin)
    ray_dir = tempfile.mkdtemp(prefix="rl", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled",
           "RAY_TMPDIR": ray_dir}  # fmt: skip
    env.pop("WANDB_API_KEY", None)
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tune_main.py"), "--space", "vit_layerwise",
             "--preset", "smoke", "--num-samples", "3", "--epochs", "1", "--states", "2",
             "--scheduler", "fifo", "--confirm", "0", "--objective", "val_acc,latency_ms",
             "--latency-budget", f"{budget:.6f}", "--latency-table", str(path),
             "--storage", str(tmp_path), "--name", "lat", "--quiet"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = load_experiment(tmp_path / "lat")
    done = [t for t in exp.trials if t.status == "complete"]
    assert done, [(t.status, t.error) for t in exp.trials]
    for t in done:
        assert all(s.latency_ms is not None for s in t.states)
        # the trial's own prediction at its last state, raised by the margin, is within the
        # budget it was admitted by
        upper = t.states[-1].latency_ms * (1 + table.margin)
        assert upper <= budget + 1e-9, (t.trial_id, t.states[-1].latency_ms, table.margin)
        assert t.states[-1].latency_ms == pytest.approx(table.predict_result_ms(t.states[-1]))
    report = (tmp_path / "lat" / "report.md").read_text()
    assert "## Latency" in report and "predicted ms" in report
    best = json.loads((tmp_path / "lat" / "best_config.json").read_text())
    lat = best["latency"]
    assert lat["budget_ms"] == pytest.approx(budget) and lat["margin"] == table.margin
    assert lat["upper_ms"] == pytest.approx(lat["predicted_ms"] * (1 + table.margin))
    assert lat["measured_ms"] is None or lat["measured_ms"] > 0
    if lat["measured_ms"] is not None:  # the report says whether it held, not that it did
        assert lat["measured_within_budget"] == (lat["measured_ms"] <= budget)
    assert "within budget" in report and f"{lat['budget_ms']:g} ms" in report
    # the machine's speed at the export beside the table's build, to read a verdict by
    assert lat["dense_ms"]["table"] == pytest.approx(1000 * table.dense_s)
    if lat["measured_ms"] is not None:
        now = lat["dense_ms"]["measured"]
        assert now is not None and now > 0
        assert f"ran in {now:.3f} ms, and in {1000 * table.dense_s:.3f} ms when" in report
    # the ticket a user ships under the budget: the most accurate the budget admits, exported
    # and timed, with whether it measured within the budget
    chosen = lat["budget_best"]
    admitted = [
        (s.val_acc, t.trial_id, s.state)
        for t in done
        for s in t.states
        if s.latency_ms * (1 + table.margin) <= budget
    ]
    assert chosen["upper_ms"] <= budget + 1e-9
    assert (chosen["val_acc"], chosen["trial_id"], chosen["state"]) in admitted
    # chosen among them as the report chooses at a budget (its tie rule)
    want = best_at_budget(
        [t for t in exp.tickets() if (t.val_acc, t.trial_id, t.state) in admitted], None
    )
    assert want is not None and (chosen["trial_id"], chosen["state"]) == (want.trial_id, want.state)
    assert chosen["measured_ms"] is not None and chosen["measured_ms"] > 0
    assert chosen["measured_within_budget"] == (chosen["measured_ms"] <= budget)
    assert chosen["config"]["pruning_times"] == chosen["state"] + 1  # reproduces that state
    assert f"latency ≤ {lat['budget_ms']:g} ms" in report
    # each export is timed as the table was: its threads, and its fastest run recorded
    for record in (tmp_path / "lat" / "best_exports").glob("*/export.json"):
        data = json.loads(record.read_text())
        at_batch = [lat for lat in data["latency"] if lat["batch"] == table.batch]
        assert all(lat["threads"] == table.threads for lat in data["latency"]), data["latency"]
        assert at_batch and at_batch[0]["pruned_min_ms"] <= at_batch[0]["pruned_ms"]
