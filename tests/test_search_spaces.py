"""Every search space loads and samples valid, runnable TrialConfigs with real Optuna trials."""

from __future__ import annotations

import re

import optuna
import pytest

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.experiment.records import Objective
from rsst_tune.tune.space import SearchSpace, varying_sparsity_fields
from search_spaces import get_space, list_spaces

SPACES = list_spaces()


def test_the_spaces_are_registered_by_module_name() -> None:
    spaces = {"vit_head_mlp", "vit_unstructured", "vit_refill_vs_rsst", "vit_layerwise"}
    assert spaces | {"resnet_rsst", "resnet_layerwise"} <= set(SPACES)
    assert all(not name.startswith("_") for name in SPACES)
    with pytest.raises(
        ConfigError, match=r"choose one of: FILE\.py\[:NAME\], package\.module:NAME, resnet_"
    ):
        get_space("nope")


@pytest.mark.parametrize("name", SPACES)
def test_space_declares_what_a_sweep_needs(name: str) -> None:
    space = get_space(name)
    assert isinstance(space, SearchSpace) and space.name == name
    assert space.description and "\n" not in space.description
    assert space.objectives and all(isinstance(o, Objective) for o in space.objectives)
    assert all(o.metric != "test_acc" for o in space.objectives), "select on validation only"
    assert space.scheduler in ("moasha", "asha", "fifo")
    if varying_sparsity_fields(space, space.resolve_base()):  # trials differ in sparsity
        assert space.scheduler in ("moasha", "fifo")
    TrialConfig.from_dict(dict(space.base))  # the base config is valid on its own
    if space.scheduler == "asha":
        assert varying_sparsity_fields(space, space.resolve_base()) == []


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_space_samples_valid_trial_configs(name: str, sampler: str) -> None:
    space = get_space(name)
    base = space.resolve_base()
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=1)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=1, n_startup_trials=3)
    )
    for point in space.starting_points:
        study.enqueue_trial(dict(point))
    for i in range(12):
        trial = study.ask()
        params = space.sample(trial)
        cfg = TrialConfig.from_dict({**base, **params})
        assert set(params) <= set(TrialConfig.field_names())
        for key, value in params.items():
            assert getattr(cfg, key) == (tuple(value) if isinstance(value, list) else value)
        study.tell(trial, [float(i)] * len(study.directions))


@pytest.mark.parametrize("name", SPACES)
def test_smoke_profile_builds_a_runnable_loop(name: str) -> None:
    """The digits smoke profile of every space passes the loop's own checks (model, ratios)."""
    from rsst_tune.loop import PruneLoop

    space = get_space(name)
    base = space.resolve_base(preset="smoke")
    assert base["dataset"] == "digits" and base["augment"] is False
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for point in space.starting_points:
        study.enqueue_trial(dict(point))
    cfg = space.trial_config(base, study.ask())
    loop = PruneLoop(cfg, None)
    assert loop.next_state == 0 and loop.structure.groups


def test_overrides_are_checked_against_the_space() -> None:
    vit = get_space("vit_head_mlp")
    base = vit.resolve_base(
        {"model": "vit_digits", "dataset": "digits", "pruning_times": 2, "epochs": 3}
    )
    assert (base["model"], base["pruning_times"], base["epochs"]) == ("vit_digits", 2, 3)
    assert base["warmup_epochs"] <= 0.3  # warm-up shrinks with a shortened state
    with pytest.raises(ConfigError, match="does not allow --model resnet20"):
        vit.resolve_base({"model": "resnet20"})
    with pytest.raises(ConfigError, match="does not allow --model vit_tiny"):
        get_space("resnet_rsst").resolve_base({"model": "vit_tiny"})
    with pytest.raises(ConfigError, match="unknown dataset"):
        vit.resolve_base({"dataset": "imagenet22k"})


def test_fixed_parameter_is_pinned_and_not_searched() -> None:
    space = get_space("vit_head_mlp")
    base = space.resolve_base(preset="smoke")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        cfg = space.trial_config(base, trial, fixed={"lr": 1.5e-3})
        assert cfg.lr == 1.5e-3
        assert "lr" not in trial.params  # Optuna never suggested it
        assert "reg_granularity_prune" in trial.params  # the rest is still searched
        study.tell(trial, 0.0)


def test_set_gives_every_trial_any_field_the_space_does_not_search() -> None:
    """`--set` (SweepOptions.settings) reaches the base config of every trial: how it executes
    and any other field the space does not search (batch_size); a searched field, or one with
    a flag of its own, is refused with where it goes (--fix, the flag); `--fix` of a field
    the space does not search points to --set, so the two never send a user in a circle."""
    from rsst_tune.tune.plan import SweepOptions, resolve_plan

    plan = resolve_plan(
        SweepOptions.from_keywords(
            "vit_head_mlp",
            {"preset": "smoke", "settings": {"amp": False, "compile": True,
                                             "compile_mode": "reduce-overhead",
                                             "batch_size": 64, "round_to": 8}},
        )
    )  # fmt: skip
    base = plan.base_config
    assert (base["amp"], base["compile"], base["compile_mode"]) == (False, True, "reduce-overhead")
    assert (base["batch_size"], base["round_to"]) == (64, 8)
    default = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke")).base_config
    # amp and compile: auto (None) unless given (rsst_tune.numerics)
    assert (default["amp"], default["compile"], default["round_to"]) == (None, None, 1)
    for pair, message in (
        (("lr", 0.1), "--set lr: space vit_head_mlp searches lr; pin it with --fix lr=VALUE"),
        (("threads", 2), "--set threads: use --cpus-per-trial"),
        (("device", "cpu"), "--set device: use --device"),
        (("model", "vit_tiny"), "--set model: use --model"),
        (("pruning_times", 2), "--set pruning_times: use --states"),
        (("nope", 1), "unknown --set field 'nope'; choose one of: RST_schedule, amp"),
        (("compile_mode", "x"), "unknown compile_mode 'x'; choose one of: default"),
        (("batch_size", 0), "batch_size"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke", settings=(pair,)))
    with pytest.raises(ConfigError, match="set a field it does not search with --set"):
        resolve_plan(SweepOptions(space="vit_head_mlp", fixed=(("batch_size", 64),)))
    from rsst_tune.tune.cli import build_parser
    from rsst_tune.tune.plan import SETTABLE

    assert set(SETTABLE) == {"amp", "compile", "compile_mode", "eval_batch_size", "download"}
    usage = " ".join(build_parser().format_help().split())
    assert f"how trials execute: {', '.join(SETTABLE)}" in usage


def test_fix_names_must_be_searched_parameters() -> None:
    from rsst_tune.tune.plan import SweepOptions, resolve_plan

    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke"))
    assert plan.fixed == {"lr": 3e-3}  # the smoke preset pins the digits recipe
    assert plan.base_config["threads"] == 1  # one torch thread per CPU, recorded for replays
    with pytest.raises(ConfigError, match="does not search epochs"):
        resolve_plan(SweepOptions(space="vit_head_mlp", fixed=(("epochs", 3),)))
