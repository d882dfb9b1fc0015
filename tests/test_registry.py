"""Registries that really extend: one Registry type, config validation that asks it, and a
contract test generated from the registries (a user's registration meets the same tests)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import FAST

from rsst_tune.config import DENSE, EXECUTION, GROUPS, NUMERICS, PRUNE, TrialConfig
from rsst_tune.data import DATASETS
from rsst_tune.dense_cache import dense_key
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop
from rsst_tune.models import MODELS, create_model
from rsst_tune.pruning.criteria import CRITERIA, register_criterion
from rsst_tune.pruning.methods import METHODS, register_method
from rsst_tune.pruning.regularizer import SCHEDULES, lam, register_schedule
from rsst_tune.registry import Registry
from search_spaces import SPACES

ALL_REGISTRIES = {
    "model": MODELS,
    "dataset": DATASETS,
    "criterion": CRITERIA,
    "method": METHODS,
    "RST_schedule": SCHEDULES,
    "search space": SPACES,
}


# =========================================================================== the one type
def _f() -> int:
    return 1


def _g() -> int:
    return 2


def test_registry_lookup_aliases_and_one_line_errors() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("alpha", _f, "a")
    assert reg.get("a") is _f and reg.canonical("a") == "alpha" and "a" in reg
    assert reg.names() == ["alpha"] and reg.aliases("alpha") == ["a"]
    with pytest.raises(ConfigError) as err:
        reg.get("beta")
    assert str(err.value) == "unknown widget 'beta'; choose one of: alpha"


def test_duplicates_are_refused_unless_override() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("alpha", _f, "a")
    reg.add("alpha", _f)  # the same definition again (a reloaded module): quiet
    with pytest.raises(ConfigError, match=r"already registered.*override=True"):
        reg.add("alpha", _g)
    with pytest.raises(ConfigError, match="'a' is already registered"):
        reg.add("other", _g, "a")
    reg.add("alpha", _g, override=True)
    assert reg.get("alpha") is _g
    reg.unregister("a")
    assert "alpha" not in reg and "a" not in reg


@pytest.mark.parametrize("kind", sorted(ALL_REGISTRIES))
def test_every_registry_behaves_the_same(kind: str) -> None:
    reg = ALL_REGISTRIES[kind]
    assert isinstance(reg, Registry) and len(reg) > 0
    name = reg.names()[0]
    assert reg.get(name) is reg.get(name) and name in reg
    with pytest.raises(ConfigError) as err:
        reg.get("no_such_name")
    message = str(err.value)
    assert "\n" not in message and "no_such_name" in message
    assert all(n in message for n in reg.names())
    with pytest.raises(ConfigError, match="already registered"):
        reg.add(name, object())


# =========================================================================== config asks
def test_a_registered_criterion_method_and_schedule_are_valid_config_values() -> None:
    @register_criterion("test_reverse_l1")
    def reverse(model, groups, inputs):  # type: ignore[no-untyped-def]
        return [-s for s in CRITERIA.get("l1")(model, groups, inputs)]

    @register_method("test_refill_like", structured=True)
    def refill_like(U, R):  # type: ignore[no-untyped-def]
        return METHODS.get("refill").policy(U, R)

    @register_schedule("test_sqrt")
    def sqrt(u: float, g: float, k: float) -> float:
        return g * math.sqrt(u)

    try:
        cfg = TrialConfig(criteria="test_reverse_l1", method="test_refill_like")
        assert cfg.structured and cfg.effective_rate() == 0.2
        assert TrialConfig(RST_schedule="test_sqrt").RST_schedule == "test_sqrt"
    finally:
        CRITERIA.unregister("test_reverse_l1")
        METHODS.unregister("test_refill_like")
        SCHEDULES.unregister("test_sqrt")
    with pytest.raises(ConfigError, match="unknown criteria 'test_reverse_l1'; choose one of"):
        TrialConfig(criteria="test_reverse_l1")


def test_create_model_works_with_defaults() -> None:
    for name in MODELS.names():
        if name == "vit_base":
            continue  # 86M parameters: slow to build, same code path as vit_small
        model = create_model(name)
        entry = MODELS.get(name)
        x = torch.randn(2, entry.in_chans, entry.img_size, entry.img_size)
        with torch.no_grad():
            assert model.eval()(x).shape == (2, entry.num_classes), name


# =========================================================================== field groups
def test_every_config_field_belongs_to_exactly_one_group() -> None:
    for f in dataclasses.fields(TrialConfig):
        assert f.metadata.get("group") in GROUPS, f.name
        assert f.metadata.get("help"), f"{f.name} has no help text"
    names = [n for g in GROUPS for n in TrialConfig.fields_in(g)]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(TrialConfig))


def _other_value(cfg: TrialConfig, name: str) -> object:
    """A valid value of field `name` different from cfg's."""
    special = {
        "model": "vit_tiny",
        "dataset": "synthetic",
        "decreasing_lr": (5,),
        "extra": {"a": 1},
        "augment": True,
        "amp": False,  # auto (None, the default) -> fixed fp32
        "val_size": 100,
        "img_size": 16,
        "pretrained_file": "weights.pt",
        "device": "cpu",
        "lr_schedule": "constant",
        "data_dir": "elsewhere",
        "rewind_epoch": 2,
        "head_ratios": (0.25, 0.0, 0.5, 0.25),  # one ratio per layer: prune-only, like head_ratio
        "mlp_ratios": (0.5, 0.25, 0.0, 0.0),
        "filter_ratios": (0.5,),
        "prune_type": "pt",  # rewind_lt puts θr's epoch in the key (test_dense_key_special_cases)
        "finetune_epochs": 3,
        "data_workers": 2,
    }
    if name in special:
        return special[name]
    f = next(f for f in dataclasses.fields(TrialConfig) if f.name == name)
    value = getattr(cfg, name)
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != value)
    registry = {"method": METHODS, "criteria": CRITERIA, "RST_schedule": SCHEDULES}.get(name)
    if registry is not None:
        return next(c for c in registry.names() if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.25
    if value is None:  # the ratios and rate
        return 0.3
    raise AssertionError(f"no other value for {name}")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrialConfig)])
def test_dense_key_follows_the_field_groups(name: str) -> None:
    """A field of the DENSE or NUMERICS group changes the shared state 0's key; the others do
    not (θr's epoch counts only for rewind_lt, a data folder only for folder datasets, the
    compile mode only with compile on)."""
    base = TrialConfig(dataset="digits", prune_type="lt", compile=name == "compile_mode")
    other = base.replace(**{name: _other_value(base, name)})
    group = next(f for f in dataclasses.fields(TrialConfig) if f.name == name).metadata["group"]
    changes = dense_key(other) != dense_key(base)
    assert changes == (group in (DENSE, NUMERICS)), (name, group)
    assert group in (DENSE, NUMERICS, PRUNE, EXECUTION)


def test_dense_key_special_cases() -> None:
    rewind = TrialConfig(prune_type="rewind_lt", rewind_epoch=1)
    assert dense_key(rewind) != dense_key(rewind.replace(rewind_epoch=2))
    folder = TrialConfig(dataset="cifar10", data_dir="a")
    assert dense_key(folder) != dense_key(folder.replace(data_dir="b"))
    eager = TrialConfig(compile=False)
    assert dense_key(eager) == dense_key(eager.replace(compile_mode="reduce-overhead"))


# =========================================================================== the contract
# conftest's fast CPU settings, two states (dense, then one prune)
CONTRACT_BASE = {**{k: v for k, v in FAST.items() if k != "rewind_epoch"}, "pruning_times": 2}
CONTRACT_MODELS = ("vit_digits", "resnet20")


def _check_ticket(loop: PruneLoop, cfg: TrialConfig) -> None:
    results = loop.results
    assert [r.state for r in results] == [0, 1]
    last = results[-1]
    assert 0.0 <= last.val_acc <= 1.0 and 0.0 <= last.test_acc <= 1.0
    assert 0.0 < last.sparsity < 1.0, "one prune removes some weights"
    assert set(last.to_dict()) == set(results[0].to_dict())  # every state, every key
    params = dict(loop.model.named_parameters())
    for n, m in loop.M.items():
        assert m.dtype == torch.bool
        assert (params[n].detach()[~m] == 0).all(), f"{n}: weights outside M are not zero"
    if loop.setup.method.structured:  # M's kept weights form whole units
        for g in loop.structure.groups:
            for member in g.weight_members:
                per_unit = member.per_unit(loop.M[member.param].float(), reduce="sum")
                full = member.per_unit(torch.ones_like(loop.M[member.param]).float())
                assert ((per_unit == 0) | (per_unit == full)).all(), member.param


@pytest.mark.parametrize("model", CONTRACT_MODELS)
@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_contract_every_criterion(criterion: str, model: str, digits_small) -> None:
    cfg = TrialConfig.from_dict(
        {**CONTRACT_BASE, "model": model, "method": "refill", "criteria": criterion}
    )
    loop = PruneLoop(cfg, data=digits_small)
    loop.run()
    _check_ticket(loop, cfg)


@pytest.mark.parametrize("model", CONTRACT_MODELS)
@pytest.mark.parametrize("method", METHODS.names())
def test_contract_every_method_at_its_defaults(method: str, model: str, digits_small) -> None:
    """Every method runs with the default rate and ratios (no rate, no ratio given)."""
    cfg = TrialConfig.from_dict({**CONTRACT_BASE, "model": model, "method": method})
    loop = PruneLoop(cfg, data=digits_small)
    loop.run()
    _check_ticket(loop, cfg)


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_contract_every_schedule(schedule: str, digits_small) -> None:
    """λ is a pure function of u with λ(1) = g (and λ(0) = 0 unless constant); an RSST state
    with it reaches g at its last step."""
    g = 1.7
    assert lam(schedule, 1.0, g, 3.0) == pytest.approx(g)
    assert lam(schedule, 0.5, g, 3.0) == lam(schedule, 0.5, g, 3.0)
    if schedule != "constant":
        assert lam(schedule, 0.0, g, 3.0) == pytest.approx(0.0)
    cfg = TrialConfig.from_dict(
        {
            **CONTRACT_BASE,
            "model": "vit_digits",
            "method": "rsst",
            "RST_schedule": schedule,
            "reg_granularity_prune": g,
            "head_ratio": 0.25,
            "mlp_ratio": 0.25,
            "pruning_times": 3,
        }
    )
    loop = PruneLoop(cfg, data=digits_small)
    results = loop.run()
    assert results[2].lambda_reached == pytest.approx(g)


def test_default_config_runs(tmp_path) -> None:
    """`rsst-tune run --model vit_digits --dataset digits` with every other flag at its
    default is a valid run (here shortened to 2 states of 1 epoch)."""
    from rsst_tune.cli import main

    status = main(
        ["run", "--model", "vit_digits", "--dataset", "digits", "--epochs", "1",
         "--pruning_times", "2", "--out", str(tmp_path / "r"), "--quiet"]
    )  # fmt: skip
    assert status == 0
    assert (tmp_path / "r" / "state_01.pt").is_file()


def test_sparsity_counts_every_prunable_layer_whatever_the_target(digits_small) -> None:
    """§6: half the heads of a 4-head ViT is a quarter of qkv+proj+fc1+fc2, not a half."""
    cfg = TrialConfig.from_dict(
        {**CONTRACT_BASE, "method": "refill", "target": "head", "head_ratio": 0.5}
    )
    results = PruneLoop(cfg, data=digits_small).run()
    assert list(results[1].heads_per_layer or ()) == [2] * 4
    assert results[1].sparsity == pytest.approx(0.25, abs=1e-6)
    assert results[1].neurons == 4 * 128  # reported though not pruned


def test_every_run_flag_shows_help_default_and_choices() -> None:
    """`rsst-tune run --help` is generated from the config's field metadata and registries."""
    from rsst_tune.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    by_dest = {a.dest: a for a in run._actions}
    for f in dataclasses.fields(TrialConfig):
        if f.name == "extra":
            continue  # a free-form dict: set it in a --config file
        action = by_dest[f.name]
        assert action.help and f.metadata["help"] in action.help, f.name
        assert "(default: " in action.help, f.name
        choices = f.metadata.get("choices")
        if choices:
            assert all(str(c) in action.help for c in choices), f.name
    for name, reg in (("method", METHODS), ("criteria", CRITERIA), ("RST_schedule", SCHEDULES)):
        assert all(n in str(by_dest[name].help) for n in reg.names()), name
    assert "timm:NAME" in str(by_dest["model"].help)
