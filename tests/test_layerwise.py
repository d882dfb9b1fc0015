"""Layer-wise budgets (issue 9 item 3): per-block/per-conv ratios that compound per state
(docs/methods.md §3.2), their checks, the command line, and `vit_layerwise` and
`resnet_layerwise` under a MACs budget whose over-budget proposals Optuna learns as infeasible
without ever reaching Ray; the analytic MACs of CNN filter ratios against the MACs torch
counts on the sliced model."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import tune_main_env

from rsst_tune.checkpoint import state_file
from rsst_tune.cli import build_parser, config_from_args
from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle
from rsst_tune.errors import ConfigError
from rsst_tune.experiment.layout import CONSTRAINT_ATTR, RAY_TRIAL_ATTR
from rsst_tune.export import export_checkpoint
from rsst_tune.loop import PruneLoop
from rsst_tune.macs_plan import MacsBudget, conv_layers, layer_counts, planned_macs_frac
from rsst_tune.pruning.select import round_half_up
from rsst_tune.pruning.slicing import export_model
from rsst_tune.pruning.structure import find_structure
from rsst_tune.tune import SweepOptions, describe_plan, load_experiment, resolve_plan, run_sweep
from rsst_tune.tune.search.samplers import make_sampler
from rsst_tune.tune.search.searcher import CONSTRAINT_KEY, PruningAwareOptunaSearch
from rsst_tune.unit_budget import planned_alive
from search_spaces import get_space

TINY: dict[str, Any] = dict(
    model="vit_digits",
    dataset="digits",
    epochs=1,
    device="cpu",
    amp=False,
    augment=False,
    warmup_epochs=0.0,
    score_batches=1,
    eval_batch_size=512,
)
HEADS = (0.5, 0.0, 0.0, 0.25)
MLP = (0.25, 0.5, 0.0, 0.1)


def _keep(units: int, ratio: float, prunes: int) -> int:
    """docs/methods.md §3.2 by hand: round-half-up of C·(1 − r)^p, at least 1 unit."""
    return max(1, round_half_up(units * (1 - ratio) ** prunes))


# ---------------------------------------------------------------------- the loop
def test_per_layer_ratios_compound_per_state_and_the_ticket_exports(
    digits_small: DataBundle, tmp_path: Path
) -> None:
    cfg = TrialConfig.from_dict(
        {**TINY, "method": "rsst", "pruning_times": 3, "head_ratios": HEADS, "mlp_ratios": MLP}
    )
    results = PruneLoop(cfg, tmp_path / "run", data=digits_small).run()
    # by hand: vit_digits has 4 blocks of 4 heads and 128 MLP neurons
    assert results[1].heads_per_layer == (2, 4, 4, 3)  # 4·0.5, 4, 4, round(4·0.75)
    assert results[2].heads_per_layer == (1, 4, 4, 2)  # 4·0.25, 4, 4, round(2.25)
    assert results[1].neurons_per_layer == (96, 64, 128, 115)  # round(115.2)
    assert results[2].neurons_per_layer == (72, 32, 128, 104)  # round(103.68)
    for s, r in enumerate(results):
        assert r.heads_per_layer == tuple(_keep(4, h, s) for h in HEADS)
        assert r.neurons_per_layer == tuple(_keep(128, m, s) for m in MLP)
        # the analytic MACs a space's budget uses are the MACs the state reports
        assert planned_macs_frac(cfg, s) == pytest.approx(r.macs_frac, abs=1e-12)
    assert planned_macs_frac(cfg) == pytest.approx(results[-1].macs_frac, abs=1e-12)
    # the ticket slices physically, and the sliced model computes what the masked one does
    report = export_checkpoint(
        tmp_path / "run" / state_file(2), tmp_path / "export", device="cpu", measure=False
    )
    assert report.units == {"head": (16, 11), "neuron": (512, 336)}
    assert report.max_abs_diff <= report.atol
    assert report.params_pruned == report.params_analytic < report.params_dense


def test_the_global_ratio_is_the_same_as_equal_per_layer_ratios(
    digits_small: DataBundle, tmp_path: Path
) -> None:
    one = TrialConfig.from_dict({**TINY, "method": "refill", "pruning_times": 2, "head_ratio": 0.5})
    many = one.replace(head_ratio=None, head_ratios=[0.5] * 4)
    a = PruneLoop(one, tmp_path / "a", data=digits_small).run()
    b = PruneLoop(many, tmp_path / "b", data=digits_small).run()
    assert [r.heads_per_layer for r in a] == [r.heads_per_layer for r in b]
    assert [r.val_acc for r in a] == [r.val_acc for r in b]


# ---------------------------------------------------------------------- the checks
def test_length_exclusivity_and_range_errors(digits_small: DataBundle, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"head_ratio .* or head_ratios .* not both"):
        TrialConfig(head_ratio=0.25, head_ratios=(0.25,) * 4)
    with pytest.raises(ConfigError, match=r"filter_ratio .* or filter_ratios"):
        TrialConfig.from_dict({"filter_ratio": 0.2, "filter_ratios": "0.1,0.2"})
    for bad in ([0.5, 1.0], [-0.1], [], [float("nan")], "0.1,x", [True]):
        with pytest.raises(ConfigError, match=r"mlp_ratios must be a list of numbers in \[0, 1\)"):
            TrialConfig.from_dict({"mlp_ratios": bad})
    # the length is the model's, checked at setup before anything trains
    short = TrialConfig.from_dict({**TINY, "head_ratios": [0.25, 0.25, 0.25]})
    with pytest.raises(ConfigError) as err:
        PruneLoop(short, tmp_path / "short", data=digits_small)
    message = str(err.value)
    assert "\n" not in message
    assert "head_ratios must have 4 ratios for vit_digits" in message and "got 3" in message
    assert not (tmp_path / "short" / state_file(0)).exists()
    convs = TrialConfig.from_dict({**TINY, "model": "resnet20", "filter_ratios": [0.5] * 3})
    with pytest.raises(ConfigError, match=r"filter_ratios must have 18 ratios for resnet20"):
        PruneLoop(convs, tmp_path / "convs", data=digits_small)
    vit = TrialConfig.from_dict({**TINY, "filter_ratios": [0.5]})
    with pytest.raises(ConfigError, match=r"filter_ratios is for convs, and vit_digits has none"):
        PruneLoop(vit, tmp_path / "vit", data=digits_small)


def test_command_line_comma_lists(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["run", "--head_ratios", "0.25,0,0.5,0.25", "--mlp-ratios", "0.1,0.2,0.3,0.4"]
    )
    cfg = config_from_args(args)
    assert cfg.head_ratios == (0.25, 0.0, 0.5, 0.25)
    assert cfg.mlp_ratios == (0.1, 0.2, 0.3, 0.4)
    assert cfg.to_dict()["head_ratios"] == [0.25, 0.0, 0.5, 0.25]  # JSON round trip
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["run", "--head_ratios", "0.25,x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "comma-separated numbers" in err and len(err.strip().splitlines()) == 1
    both = parser.parse_args(["run", "--head_ratio", "0.2", "--head_ratios", "0.1,0.1,0.1,0.1"])
    with pytest.raises(ConfigError, match="not both"):
        config_from_args(both)


# ---------------------------------------------------------------------- the space
def _searcher(
    budget: float, max_proposals: int = 500, space_name: str = "vit_layerwise"
) -> PruningAwareOptunaSearch:
    space = get_space(space_name)
    base = space.resolve_base(preset="smoke")
    return PruningAwareOptunaSearch(
        lambda trial: space.sample(trial, base=base),
        metric=["val_acc", "macs_frac"],
        mode=["max", "min"],
        sampler=make_sampler("tpe", 0, 8, 2),
        study_name="layerwise",
        storage=optuna.storages.InMemoryStorage(),
        constraint=MacsBudget(base, budget),
        max_proposals=max_proposals,
    )


@pytest.mark.parametrize(
    ("space_name", "budget", "ratios", "layers"),
    [("vit_layerwise", 0.35, "head_ratios", 4), ("resnet_layerwise", 0.45, "filter_ratios", 18)],
)
def test_over_budget_proposals_are_infeasible_and_never_handed_out(
    space_name: str, budget: float, ratios: str, layers: int, caplog: pytest.LogCaptureFixture
) -> None:
    base = get_space(space_name).resolve_base(preset="smoke")
    assert layer_counts("vit_digits") == {"head": 4, "neuron": 4}
    assert layer_counts("resnet20") == {"filter": 18}
    searcher = _searcher(budget, space_name=space_name)
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict) and len(config[ratios]) == layers
        frac = planned_macs_frac(TrialConfig.from_dict({**base, **config}))
        assert frac is not None and frac <= budget
    trials = searcher.study.get_trials(deepcopy=False)
    handed = [t for t in trials if RAY_TRIAL_ATTR in t.user_attrs]
    assert [t.user_attrs[RAY_TRIAL_ATTR] for t in handed] == ["t0", "t1", "t2"]
    assert all(t.user_attrs[CONSTRAINT_ATTR][0] <= 0 for t in handed)
    infeasible = [t for t in trials if RAY_TRIAL_ATTR not in t.user_attrs]
    assert infeasible, f"a {budget} budget rejects some random proposals"
    for t in infeasible:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs[CONSTRAINT_ATTR][0] > 0
        assert list(t.constraints.values()) == t.user_attrs[CONSTRAINT_ATTR]  # what TPE reads
    # a budget no proposal can meet: a bounded number of tries, one line, no more trials
    hopeless = _searcher(0.01, max_proposals=4, space_name=space_name)
    with caplog.at_level(logging.WARNING, logger="rsst_tune.tune.search.searcher"):
        assert hopeless.suggest("t0") == hopeless.FINISHED
    assert len(hopeless.study.get_trials(deepcopy=False)) == 4
    assert [r.getMessage() for r in caplog.records if "no proposal" in r.getMessage()] == [
        r.getMessage() for r in caplog.records if r.name == "rsst_tune.tune.search.searcher"
    ]
    assert any("after 4 tries" in r.getMessage() for r in caplog.records)


def test_macs_budget_is_checked_stored_and_shown(tmp_path: Path) -> None:
    opts = dict(preset="smoke", storage=str(tmp_path), name="b")
    plan = resolve_plan(SweepOptions(space="vit_layerwise", macs_budget=0.5, **opts))
    assert plan.macs_budget == 0.5
    assert type(plan).from_json(plan.to_json()).macs_budget == 0.5  # sweep.json
    assert "macs budget 0.5 of the dense MACs at the last state (state 2)" in describe_plan(plan)
    assert "head_ratio_3" in describe_plan(plan)
    for bad in (0, 1.5, -0.2, float("nan"), True):
        with pytest.raises(ConfigError, match=r"--macs-budget must be .* in \(0, 1\]"):
            resolve_plan(SweepOptions(space="vit_layerwise", macs_budget=bad, **opts))
    with pytest.raises(ConfigError, match="space vit_head_mlp does not take --macs-budget"):
        resolve_plan(SweepOptions(space="vit_head_mlp", macs_budget=0.5, **opts))


# ---------------------------------------------------------------------- CNN filter ratios
def _sliced_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs counted by torch's FLOP counter on a real forward (conv and linear: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn"])
def test_planned_macs_of_filter_ratios_are_the_macs_of_the_sliced_model(
    name: str, build_model: Callable[..., torch.nn.Module]
) -> None:
    """For random per-conv ratio vectors, the analytic MACs a budget uses are the MACs torch
    counts on the physically sliced model (independent of rsst_tune.pruning.cost)."""
    rng = random.Random(9)
    x = torch.randn(2, 1, 8, 8)  # digits
    dense = build_model(name)
    structure = find_structure(dense, target="both", example_input=x)
    convs = len(structure.by_kind("filter"))
    dense_macs = _sliced_macs(dense.eval(), x[:1])
    seen = set()
    for _ in range(3):
        ratios = [round(rng.uniform(0.0, 0.6), 3) for _ in range(convs)]
        cfg = TrialConfig.from_dict(
            {"model": name, "dataset": "digits", "pruning_times": 4, "filter_ratios": ratios}
        )
        predicted = planned_macs_frac(cfg)
        assert predicted is not None
        model = build_model(name)
        alive = planned_alive(cfg, structure, structure, prunes=3)
        params = dict(model.named_parameters())
        with torch.no_grad():  # zero the filters past each conv's planned count
            for g in structure.groups:
                drop = torch.arange(g.num_units) >= alive[g.name]
                for m in g.members:
                    params[m.param].mul_(~m.expand(drop, params[m.param].shape))
        sliced = export_model(model, structure, "cpu", example=x).model
        measured = _sliced_macs(sliced, x[:1]) / dense_macs
        assert predicted == pytest.approx(measured, abs=1e-12), (ratios, predicted, measured)
        seen.add(round(predicted, 6))
    assert len(seen) == 3 and max(seen) < 1.0


def test_resnet_layerwise_ties_removable_convs_per_stage_and_keeps_coupled_ones() -> None:
    space = get_space("resnet_layerwise")
    base = space.resolve_base(preset="smoke")
    convs = conv_layers("resnet20")
    assert [c.removable for c in convs] == [True, False] * 9  # conv1 / conv2 of each block
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        trial = study.ask()
        params = space.sample(trial, base=base)
        stages = [trial.params[f"filter_ratio_stage{i}"] for i in range(3)]
        assert "filter_ratio_stage3" not in trial.params
        width = {16: 0, 32: 1, 64: 2}
        assert params["filter_ratios"] == [
            stages[width[c.filters]] if c.removable else 0.0 for c in convs
        ]
        study.tell(trial, 0.0)
    # a deeper model of the same family: still 3 stages (27 removable convs of 54)
    deep = space.sample(optuna.create_study().ask(), base=space.resolve_base({"model": "resnet56"}))
    assert len(deep["filter_ratios"]) == 54


def test_stage_ratios_compound_in_the_loop_as_planned(
    digits_small: DataBundle, tmp_path: Path
) -> None:
    ratios = {16: 0.5, 32: 0.0, 64: 0.25}
    filters = [ratios[c.filters] if c.removable else 0.0 for c in conv_layers("resnet20")]
    cfg = TrialConfig.from_dict(
        {
            **TINY,
            "model": "resnet20",
            "method": "rsst",
            "pruning_times": 3,
            "filter_ratios": filters,
            "optimizer": "sgd",
            "lr": 0.05,
        }
    )
    results = PruneLoop(cfg, tmp_path / "run", data=digits_small).run()
    for s, r in enumerate(results):
        assert r.filters_per_layer is not None
        assert (
            r.filters_per_layer[0::2]
            == (_keep(16, 0.5, s),) * 3 + (32,) * 3 + (_keep(64, 0.25, s),) * 3
        )
        assert r.filters_per_layer[1::2] == (16,) * 3 + (32,) * 3 + (64,) * 3
        assert planned_macs_frac(cfg, s) == pytest.approx(r.macs_frac, abs=1e-12)
    assert results[-1].macs_frac < 0.6


@pytest.mark.sweep
def test_sweep_under_a_macs_budget_runs_only_feasible_trials(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RSST_TUNE_RESUME_KEY", str(tmp_path / "resume.key"))
    budget = 0.35
    plan = resolve_plan(
        SweepOptions(
            space="vit_layerwise",
            preset="smoke",
            macs_budget=budget,
            scheduler="fifo",  # every trial reaches its last state
            num_samples=4,
            max_concurrent=2,
            states=3,
            epochs=1,
            confirm=0,
            onnx=False,
            storage=str(tmp_path),
            name="budget",
        )
    )
    assert run_sweep(plan, show=False) is not None
    exp = load_experiment(tmp_path / "budget")
    assert len(exp.trials) == 4  # infeasible proposals took no trial slot
    assert exp.study is not None
    by_ray = {
        t.user_attrs[RAY_TRIAL_ATTR]: t
        for t in exp.study.get_trials(deepcopy=False)
        if RAY_TRIAL_ATTR in t.user_attrs
    }
    for trial in exp.trials:
        last = trial.states[-1]
        assert last.state == 2 and trial.status == "complete"
        assert last.macs_frac <= budget + 1e-9, (trial.trial_id, last.macs_frac)
        constraint = by_ray[trial.trial_id].user_attrs[CONSTRAINT_ATTR][0]
        assert constraint == pytest.approx(last.macs_frac - budget, abs=1e-9)
    infeasible = [
        t for t in exp.study.get_trials(deepcopy=False) if RAY_TRIAL_ATTR not in t.user_attrs
    ]
    assert infeasible, "a 0.35 budget rejects some proposals"
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in infeasible)
    assert all(t.user_attrs[CONSTRAINT_ATTR][0] > 0 for t in infeasible)
    assert all(t.constraints[CONSTRAINT_KEY] > 0 for t in infeasible)
    assert len(list((tmp_path / "budget").glob("trial_*"))) == 4  # nothing else ran
    assert (tmp_path / "budget" / "report.md").is_file()  # the report reads such a study


def _constrained_trials(exp_dir: Path) -> dict[int, optuna.trial.FrozenTrial]:
    """The study's trials by number (every one has a constraint under --macs-budget)."""
    study = load_experiment(exp_dir).study
    assert study is not None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for t in trials.values():
        assert list(t.constraints.values()) == t.user_attrs[CONSTRAINT_ATTR], t.number
    return trials


@pytest.mark.sweep
@pytest.mark.slow
def test_budgeted_sweep_survives_sigint_and_resume(
    ray_cluster: str,
    tmp_path: Path,
    interrupt_after_first_state: Callable[[subprocess.Popen[str], Path], str],
) -> None:
    """resnet_layerwise under --macs-budget, interrupted (SIGINT) during its first trial and
    resumed: it ends with --num-samples feasible trials, trained no infeasible proposal, and
    the study keeps every proposal's constraint, the ones told before the interrupt too."""
    repo = Path(__file__).resolve().parents[1]
    env = tune_main_env()
    tune = [sys.executable, str(repo / "tune_main.py")]
    budget, samples, exp_dir = 0.45, 3, tmp_path / "rb"
    cmd = [
        *tune,
        *("--space", "resnet_layerwise", "--preset", "smoke", "--macs-budget", str(budget)),
        *("--states", "3", "--epochs", "3", "--num-samples", str(samples)),
        *("--max-concurrent", "1", "--scheduler", "fifo", "--confirm", "0", "--no-onnx"),
        *("--seed", "1", "--storage", str(tmp_path), "--name", "rb"),
        *("--address", ray_cluster, "--quiet"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = interrupt_after_first_state(proc, exp_dir)  # during the first trial
    assert proc.returncode == 130, out
    before = _constrained_trials(exp_dir)
    assert len(load_experiment(exp_dir).trials) < samples  # the resume has trials to propose
    # the starting point (0.497 of the MACs at state 2) was told infeasible before anything ran
    assert before[0].state == optuna.trial.TrialState.PRUNED
    assert before[0].constraints[CONSTRAINT_KEY] > 0

    res = subprocess.run(
        [*tune, "--resume", str(exp_dir), "--address", ray_cluster, "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout + res.stderr

    exp = load_experiment(exp_dir)
    assert len(exp.trials) == samples
    after = _constrained_trials(exp_dir)
    by_ray = {
        t.user_attrs[RAY_TRIAL_ATTR]: t for t in after.values() if RAY_TRIAL_ATTR in t.user_attrs
    }
    assert set(by_ray) == {t.trial_id for t in exp.trials}
    for trial in exp.trials:
        rows = (exp_dir / f"trial_{trial.trial_id}" / "result.json").read_text().splitlines()
        assert [json.loads(r)["state"] for r in rows if r.strip()] == [0, 1, 2], trial.trial_id
        last = trial.states[-1]
        assert trial.status == "complete" and last.macs_frac <= budget + 1e-9
        ot = by_ray[trial.trial_id]
        assert ot.state == optuna.trial.TrialState.COMPLETE, trial.trial_id
        assert ot.constraints[CONSTRAINT_KEY] == pytest.approx(last.macs_frac - budget, abs=1e-9)
    # the resumed searcher still applies the budget: trials proposed after the resume
    new = [t for n, t in after.items() if n not in before]
    assert any(RAY_TRIAL_ATTR in t.user_attrs for t in new), "no trial proposed after resume"
    # every proposal not handed to Ray is PRUNED as infeasible; nothing is left RUNNING
    for t in after.values():
        if RAY_TRIAL_ATTR not in t.user_attrs:
            assert t.state == optuna.trial.TrialState.PRUNED and t.constraints[CONSTRAINT_KEY] > 0
    # the records told before the interrupt are intact
    for n, t in before.items():
        if t.state.is_finished():
            assert after[n].state == t.state and after[n].constraints == t.constraints, n
    assert len(list(exp_dir.glob("trial_*"))) == samples  # nothing else trained
