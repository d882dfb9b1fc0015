"""docs/methods.md §2 (the loop), §2.5 (rewinding), §3 in the loop, §4 (measured),
§5 (checkpoints and resume) and §6 (per-state results), through the public `PruneLoop` on real
tiny models."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop
from rsst_tune.models import create_model
from rsst_tune.pruning.cost import count_params


def _params(loop: PruneLoop) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in loop.model.named_parameters()}


def _is_structured(loop: PruneLoop, masks: dict[str, Tensor]) -> None:
    """Every unit is wholly kept or wholly removed in `masks`; removed units are not alive."""
    for g in loop.structure.groups:
        per_member = [
            m.per_unit(masks[m.param].float()) / (masks[m.param].numel() / g.num_units)
            for m in g.members
        ]
        for frac in per_member:
            assert torch.all((frac == 0) | (frac == 1)), f"{g.name}: a unit is partly masked"
        kept = per_member[0] == 1
        for frac in per_member[1:]:
            assert torch.equal(frac == 1, kept), f"{g.name}: members disagree on a unit"
        assert torch.equal(kept, loop.alive[g.name].cpu())


# =========================================================================== §2.4 / §3.2 budgets
def test_imp_density_is_one_minus_rate_to_the_p(make_cfg, digits_small) -> None:
    cfg = make_cfg(model="vit_digits", method="imp", rate=0.2, pruning_times=4)
    loop = PruneLoop(cfg, data=digits_small)
    wnames = loop.structure.weight_names
    total = sum(loop.M[n].numel() for n in wnames)
    prev = {n: m.clone() for n, m in loop.M.items()}
    for p, r in enumerate(loop.states()):
        assert r.density_U == pytest.approx(0.8**p, abs=p / total)
        # the ticket evaluated in state p: sparsity of the trained model's prunable weights
        assert r.sparsity == pytest.approx(1 - 0.8**p, abs=1e-3)
        if p < cfg.pruning_times - 1:
            kept = sum(int(loop.M[n].sum()) for n in wnames)
            assert kept / total == pytest.approx(0.8 ** (p + 1), abs=(p + 1) / total)
            for n in wnames:  # U prunes only weights that M still keeps
                assert not (loop.M[n] & ~prev[n]).any()
                assert loop.M[n].dtype == torch.bool
            # imp: M is unstructured, biases stay
            assert all(loop.M[n].all() for n in loop.structure.maskable_names if n not in wnames)
            prev = {n: m.clone() for n, m in loop.M.items()}


def test_three_heads_at_ratio_033_lose_exactly_one_in_the_loop(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_tiny", method="refill", target="head", head_ratio=0.33, pruning_times=3
    )
    loop = PruneLoop(cfg, data=digits_small)
    assert all(g.num_units == 3 for g in loop.structure.groups)
    heads = [list(r.heads_per_layer) for r in loop.states()]
    assert heads == [[3] * 9, [2] * 9, [1] * 9]  # round(3·0.67^p): 2, then round(1.35) = 1


def test_explicit_budgets_compound_and_effective_ratios(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=4,
        criteria="magnitude",
    )
    results = PruneLoop(cfg, data=digits_small).run()
    assert [list(r.heads_per_layer) for r in results] == [[4] * 4, [3] * 4, [2] * 4, [2] * 4]
    assert [list(r.neurons_per_layer) for r in results] == [[128] * 4, [64] * 4, [32] * 4, [16] * 4]
    assert [r.head_ratio_effective for r in results] == pytest.approx([0, 0.25, 1 / 3, 0])
    assert [r.mlp_ratio_effective for r in results] == pytest.approx([0, 0.5, 0.5, 0.5])


def test_min_units_clamp_in_the_loop(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        target="head",
        head_ratio=0.5,
        min_units=3,
        pruning_times=3,
    )
    heads = [list(r.heads_per_layer) for r in PruneLoop(cfg, data=digits_small).run()]
    assert heads == [[4] * 4, [3] * 4, [3] * 4]


@pytest.mark.parametrize(("target", "heads", "neurons"), [("head", 12, 512), ("mlp", 16, 256)])
def test_vit_targets_in_the_loop(make_cfg, digits_small, target, heads, neurons) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="rsst",
        target=target,
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=2,
    )
    r = PruneLoop(cfg, data=digits_small).run()[1]
    assert (r.heads, r.neurons) == (heads, neurons)


def test_ratio_that_removes_nothing_warns_once_with_effective_ratio(
    make_cfg, digits_small, caplog
) -> None:
    # head_ratio 0.05 on 4 heads: round(3.8) = round(3.61) = 4 in both prunes, in all 4 blocks
    cfg = make_cfg(
        model="vit_digits", method="refill", target="head", head_ratio=0.05, pruning_times=3
    )
    with caplog.at_level(logging.WARNING, logger="rsst_tune"):
        results = PruneLoop(cfg, data=digits_small).run()
    assert [r.heads for r in results] == [16, 16, 16]
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "head_ratio" in r.getMessage()
    ]
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    msg = warnings[0].getMessage()
    assert "effective" in msg and "0.05" in msg and "0.00" in msg


def test_density_matched_budget_and_fillback(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        rate=0.5,
        fillback_rate=0.0,
        pruning_times=2,
        criteria="remain",
    )
    loop = PruneLoop(cfg, data=digits_small)
    results = loop.run()
    total = sum(
        p.numel() for n, p in loop.model.named_parameters() if n in loop.structure.weight_names
    )
    r = results[1]
    # per layer |k·W − |U_layer|| ≤ W/2, so R and U hold nearly the same number of weights
    slack = sum(g.weights_per_unit() / 2 for g in loop.structure.groups)
    assert abs(r.density_R - r.density_U) * total <= slack
    assert r.density_U == pytest.approx(0.5, abs=1e-4)
    assert r.heads < 16 and r.neurons < 512
    # fillback 1 keeps every alive unit: the ticket is dense
    full = PruneLoop(cfg.replace(fillback_rate=1.0), data=digits_small).run()
    assert full[1].heads == 16 and full[1].neurons == 512
    assert full[1].density_R == 1.0


def test_global_sorting_keeps_min_units_and_the_total_budget(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        head_ratio=0.75,
        mlp_ratio=0.9,
        sorting="global",
        min_units=1,
        pruning_times=2,
        criteria="l1",
    )
    loop = PruneLoop(cfg, data=digits_small)
    r = loop.run()[1]
    assert all(h >= 1 for h in r.heads_per_layer) and all(n >= 1 for n in r.neurons_per_layer)
    assert r.heads == 4 * 1  # round(4·0.25) = 1 per layer, pooled
    assert r.neurons == 4 * 13  # round(128·0.1) = 13 per layer, pooled
    _is_structured(loop, loop.M)


# =========================================================================== §2.4.3 methods
def test_refill_fills_back_whole_units_and_zeroes_removed_biases(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits", method="refill", rate=0.5, pruning_times=2, criteria="magnitude"
    )
    loop = PruneLoop(cfg, data=digits_small)
    it = loop.states()
    next(it)
    # U removed half of all prunable weights (spread over every unit), yet R = M keeps every
    # weight of a kept unit: U's holes in kept units were filled back
    _is_structured(loop, loop.M)
    assert loop.results[0].state == 0
    kept_units = sum(int(a.sum()) for a in loop.alive.values())
    assert 0 < kept_units < sum(g.num_units for g in loop.structure.groups)
    # `lt` rewind: kept units are back at θ0 (non-zero, including the refilled weights)
    params = dict(loop.model.named_parameters())
    for n, m in loop.M.items():
        assert torch.equal(params[n][m], loop.theta0[n][m])
        assert (params[n][~m] == 0).all()  # removed units: weights and biases zero
    bias_names = [n for n in loop.structure.maskable_names if n.endswith("bias")]
    assert any((~loop.M[n]).any() for n in bias_names)


@pytest.mark.parametrize(
    ("model", "ratios"),
    [("vit_digits", dict(head_ratio=0.25, mlp_ratio=0.5)), ("resnet20", dict(filter_ratio=0.5))],
)
def test_rsst_target_set_nonempty_disjoint_and_imposed(make_cfg, digits_small, model, ratios):
    cfg = make_cfg(model=model, method="rsst", pruning_times=2, reg_granularity_prune=1.0, **ratios)
    loop = PruneLoop(cfg, data=digits_small)
    it = loop.states()
    next(it)
    M, R, T = loop.M, loop.R, loop.T
    assert R is not None and T
    wnames = set(loop.structure.weight_names)
    extra = set(loop.structure.maskable_names) - wnames  # biases and norms
    assert sum(int(t.sum()) for n, t in T.items() if n in wnames) > 0  # non-empty on weights
    for n, t in T.items():
        assert t.dtype == torch.bool
        assert not (t & R[n]).any(), f"T and R overlap in {n}"
        assert not (t & ~M[n]).any(), f"T outside M in {n}"
    for n in M:  # M = U ∨ R and T = U ∧ ¬R, hence M = R ∨ T
        assert torch.equal(M[n], R[n] | T.get(n, torch.zeros_like(M[n])))
    _is_structured(loop, R)
    # every bias / BatchNorm parameter that R zeroes is in T (it is pulled, then zeroed)
    zeroed_extra = [n for n in extra if (~R[n]).any()]
    assert zeroed_extra
    for n in zeroed_extra:
        assert torch.equal(T[n], ~R[n]), n
    # pointers: masks are never aliased with each other or with weights
    ptrs = [m.data_ptr() for d in (M, R, T) for m in d.values()]
    ptrs += [p.data_ptr() for p in loop.model.parameters()]
    assert len(ptrs) == len(set(ptrs))
    R_prev = {n: r.clone() for n, r in R.items()}
    T_prev = {n: t.clone() for n, t in T.items()}
    r1 = next(it)
    # step 2 of the RSST state: M ← R, and T's weights are zero
    for n in M:
        assert torch.equal(loop.M[n], R_prev[n]), n
    params = dict(loop.model.named_parameters())
    for n, t in T_prev.items():
        assert (params[n][t] == 0).all(), n
    for key in ("acc_before_structure", "t_norm", "lambda_reached"):
        assert getattr(r1, key) is not None
    assert r1.density_R == pytest.approx(
        sum(int(R_prev[n].sum()) for n in wnames) / sum(R_prev[n].numel() for n in wnames)
    )


def test_rsst_state_reports_regularizer_keys_even_when_nothing_is_removed(
    make_cfg, digits_small
) -> None:
    """§6: RSST states ≥ 1 report acc_before_structure, ‖T‖ and λ, also when T is empty."""
    cfg = make_cfg(
        model="vit_digits", method="rsst", target="head", head_ratio=0.05, pruning_times=2
    )
    r1 = PruneLoop(cfg, data=digits_small).run()[1]
    assert r1.heads == 16
    for key in ("acc_before_structure", "t_norm", "lambda_reached"):
        assert getattr(r1, key) is not None, f"RSST state 1 result lacks {key!r}"


# =========================================================================== §2.5 rewinding
def test_theta0_is_the_init_and_never_modified(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="rsst",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=3,
        prune_type="pt",
    )
    loop = PruneLoop(cfg, data=digits_small)
    torch.manual_seed(cfg.seed)
    fresh = create_model("vit_digits", num_classes=10, in_chans=1, img_size=8)
    for n, v in fresh.state_dict().items():
        assert torch.equal(loop.theta0[n], v), n
    snap = {n: v.clone() for n, v in loop.theta0.items()}
    model_ptrs = {v.data_ptr() for v in loop.model.state_dict().values()}
    assert not model_ptrs & {v.data_ptr() for v in loop.theta0.values()}
    loop.run()
    for n, v in snap.items():
        assert torch.equal(loop.theta0[n], v), f"θ0[{n}] changed during training"


def _trained_snapshots(loop: PruneLoop) -> dict[tuple[int, int], dict[str, Tensor]]:
    snaps: dict[tuple[int, int], dict[str, Tensor]] = {}

    def on_epoch(state: int, epoch: int, epochs: int, loss: float) -> None:
        snaps[(state, epoch)] = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}

    loop.on_epoch = on_epoch
    return snaps


def test_lt_rewinds_weights_biases_and_batchnorm(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="resnet20",
        method="refill",
        filter_ratio=0.25,
        pruning_times=2,
        prune_type="lt",
        lr=0.05,
    )
    loop = PruneLoop(cfg, data=digits_small)
    snaps = _trained_snapshots(loop)
    next(loop.states())
    trained = snaps[(0, cfg.epochs)]
    params = dict(loop.model.named_parameters())
    bn = [n for n in params if ".bn" in n or n.startswith("bn1")]
    assert any(not torch.equal(trained[n], loop.theta0[n]) for n in bn if n.endswith("bias"))
    for n, p in params.items():
        expect = loop.theta0[n] * loop.M[n] if n in loop.M else loop.theta0[n]
        assert torch.equal(p.detach(), expect), f"{n} not rewound to θ0"
    # the classifier and stem (never masked) are rewound too
    assert torch.equal(params["fc.bias"].detach(), loop.theta0["fc.bias"])
    assert torch.equal(params["bn1.weight"].detach(), loop.theta0["bn1.weight"])


def test_rewind_lt_rewinds_to_the_weights_at_rewind_epoch(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=3,
        epochs=2,
        prune_type="rewind_lt",
        rewind_epoch=1,
    )
    loop = PruneLoop(cfg, data=digits_small)
    snaps = _trained_snapshots(loop)
    it = loop.states()
    next(it)
    at_rewind = snaps[(0, 1)]
    assert not torch.equal(at_rewind["head.weight"], loop.theta0["head.weight"])
    assert not torch.equal(at_rewind["head.weight"], snaps[(0, 2)]["head.weight"])
    for n, p in loop.model.named_parameters():
        expect = at_rewind[n] * loop.M[n] if n in loop.M else at_rewind[n]
        assert torch.equal(p.detach(), expect), f"{n} not rewound to θr"
    assert loop.theta_r is not None
    theta_r = {n: v.clone() for n, v in loop.theta_r.items()}
    next(it)  # θr is taken in state 0 only
    for n, p in loop.model.named_parameters():
        assert torch.equal(loop.theta_r[n], theta_r[n])
        expect = theta_r[n] * loop.M[n] if n in loop.M else theta_r[n]
        assert torch.equal(p.detach(), expect)


def test_pt_keeps_the_trained_weights(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=2,
        prune_type="pt",
    )
    loop = PruneLoop(cfg, data=digits_small)
    snaps = _trained_snapshots(loop)
    next(loop.states())
    trained = snaps[(0, cfg.epochs)]
    for n, p in loop.model.named_parameters():
        expect = trained[n] * loop.M[n] if n in loop.M else trained[n]
        assert torch.equal(p.detach(), expect), n


# =========================================================================== §5 seeds, resume
RESUME_CFG = dict(
    model="vit_digits",
    method="rsst",
    head_ratio=0.25,
    mlp_ratio=0.5,
    pruning_times=3,
    epochs=2,
    prune_type="rewind_lt",
    rewind_epoch=1,
    criteria="saliency",
    augment=True,
    RST_schedule="x",
)


def test_same_seed_repeats_a_run_exactly(make_cfg, digits_small, drop_timing) -> None:
    cfg = make_cfg(**RESUME_CFG)
    a, b = PruneLoop(cfg, data=digits_small), PruneLoop(cfg, data=digits_small)
    ra, rb = drop_timing(a.run()), drop_timing(b.run())
    assert ra == rb
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), n
    other = PruneLoop(cfg.replace(seed=1), data=digits_small).run()
    assert drop_timing(other) != ra


@pytest.mark.parametrize("stop_after", [0, 1])
def test_resume_equals_uninterrupted_run(
    make_cfg, digits_small, drop_timing, tmp_path, stop_after
) -> None:
    cfg = make_cfg(**RESUME_CFG)
    full = PruneLoop(cfg, tmp_path / "full", data=digits_small)
    full_results = drop_timing(full.run())
    part = PruneLoop(cfg, tmp_path / "part", data=digits_small)
    for r in part.states():
        if r.state == stop_after:
            break
    del part
    resumed = PruneLoop.resume(tmp_path / "part", cfg, data=digits_small)
    assert resumed.next_state == stop_after + 1
    results = drop_timing(resumed.run())
    assert results == full_results  # states s+1… bit-identical, states ≤ s carried over
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), n
    # and with the config read back from the checkpoint
    resumed2 = PruneLoop.resume(tmp_path / "part", data=digits_small)
    assert resumed2.next_state == cfg.pruning_times


# =========================================================================== finetune_epochs
def test_finetune_epochs_sets_the_training_of_states_after_the_dense_one(
    make_cfg, digits_small, drop_timing
) -> None:
    cfg = make_cfg(**{**RESUME_CFG, "prune_type": "pt"}, finetune_epochs=1)
    seen: list[tuple[int, int, int]] = []
    loop = PruneLoop(cfg, data=digits_small, on_epoch=lambda s, e, n, _: seen.append((s, e, n)))
    results = drop_timing(loop.run())
    assert [r["epochs_trained"] for r in results] == [2, 1, 1]
    assert seen == [(0, 0, 2), (0, 1, 2), (0, 2, 2), (1, 0, 1), (1, 1, 1), (2, 0, 1), (2, 1, 1)]
    same = drop_timing(PruneLoop(cfg.replace(finetune_epochs=None), data=digits_small).run())
    assert same[0] == results[0]  # state 0 trains `epochs` either way
    assert [r["epochs_trained"] for r in same] == [2, 2, 2]
    assert same[1] != results[1]
    explicit = PruneLoop(cfg.replace(finetune_epochs=2), data=digits_small).run()
    assert drop_timing(explicit) == same  # finetune_epochs = epochs is the default


# =========================================================================== extending a run
@pytest.mark.parametrize("prune_type", ["rewind_lt", "pt"])
def test_resume_with_more_states_extends_a_finished_run_exactly(
    make_cfg, digits_small, drop_timing, tmp_path, prune_type
) -> None:
    """A finished 2-state run resumed with pruning_times=4 equals a 4-state run from scratch:
    results, weights, and the state checkpoints (the last ticket is pruned on resume)."""
    from rsst_tune import checkpoint as ckpt
    from rsst_tune.config import TrialConfig
    from rsst_tune.run import run_trial

    cfg = make_cfg(**{**RESUME_CFG, "prune_type": prune_type, "pruning_times": 4})
    full = PruneLoop(cfg, tmp_path / "full", data=digits_small)
    expected = drop_timing(full.run())
    short = cfg.replace(pruning_times=2)
    assert len(run_trial(short, tmp_path / "run", data=digits_small)) == 2
    again = run_trial(short, tmp_path / "run", resume=True, data=digits_small)
    assert len(again) == 2  # a finished run resumed as it is: nothing to do
    extended = run_trial(cfg, tmp_path / "run", resume=True, data=digits_small)
    assert drop_timing(extended) == expected
    assert TrialConfig.from_json_file(tmp_path / "run" / "config.json").pruning_times == 4
    for state in range(4):
        a = ckpt.TrialCheckpoint.load(tmp_path / "full" / ckpt.state_file(state))
        b = ckpt.TrialCheckpoint.load(tmp_path / "run" / ckpt.state_file(state))
        for part in ("model", "ticket", "M", "T", "alive"):
            x, y = getattr(a, part), getattr(b, part)
            assert all(torch.equal(x[n], y[n]) for n in x), (state, part)
        assert a.prune_stats == b.prune_stats and a.next_state == b.next_state
    # the extended run is the 4-state run: resuming it (config read back) has nothing left
    resumed = PruneLoop.resume(tmp_path / "run", data=digits_small)
    assert resumed.cfg.pruning_times == 4 and resumed.next_state == 4


def test_resume_may_not_drop_below_the_states_done(make_cfg, digits_small, tmp_path) -> None:
    cfg = make_cfg(**{**RESUME_CFG, "pruning_times": 3})
    loop = PruneLoop(cfg, tmp_path, data=digits_small)
    for r in loop.states():
        if r.state == 1:
            break
    with pytest.raises(ConfigError, match=r"^pruning_times must be at least 2, the states the run"):
        PruneLoop.resume(tmp_path, cfg.replace(pruning_times=1), data=digits_small)
    stopped = PruneLoop.resume(tmp_path, cfg.replace(pruning_times=2), data=digits_small)
    assert stopped.next_state == 2 and len(stopped.run()) == 2  # shortened: done


def _run_dir(make_cfg, digits_small, path: Path, states: int = 2, **kw: Any) -> Any:
    cfg = make_cfg(
        model="vit_digits",
        method="rsst",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=states,
        **kw,
    )
    loop = PruneLoop(cfg, path, data=digits_small)
    for _ in loop.states():
        break
    return cfg


def test_checkpoints_hold_the_state_and_load_with_weights_only(
    make_cfg, digits_small, tmp_path
) -> None:
    _run_dir(make_cfg, digits_small, tmp_path, prune_type="rewind_lt", rewind_epoch=1)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "state_00.pt" in files and "theta0.pt" in files
    assert not [f for f in files if f.endswith(".tmp") or f.startswith(".")]  # atomic writes
    theta0 = torch.load(tmp_path / "theta0.pt", weights_only=True)
    ck = torch.load(tmp_path / "state_00.pt", weights_only=True)
    for key in ("model", "M", "U", "R", "T", "theta_r", "config", "results", "rng"):
        assert key in ck, f"checkpoint lacks {key!r} (§5)"
    assert isinstance(theta0, dict) and "head.weight" in theta0
    assert all(m.dtype == torch.bool for m in ck["M"].values())
    assert ck["results"][0]["state"] == 0


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "empty",
        "not_a_checkpoint",
        "missing_masks",
        "missing_config",
        "missing_results",
        "bad_theta0",
    ],
)
def test_corrupt_checkpoint_on_resume_is_a_config_error(
    make_cfg, digits_small, tmp_path, damage
) -> None:
    cfg = _run_dir(make_cfg, digits_small, tmp_path)
    path = tmp_path / "state_00.pt"
    if damage == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_a_checkpoint":
        torch.save({"hello": torch.zeros(3)}, path)
    elif damage == "bad_theta0":
        (tmp_path / "theta0.pt").write_bytes(b"\x00" * 100)
    else:
        ck = torch.load(path, weights_only=True)
        drop = {
            "missing_masks": ("M", "alive"),
            "missing_config": ("config",),
            "missing_results": ("results", "next_state"),
        }[damage]
        for key in drop:
            del ck[key]
        torch.save(ck, path)
    with pytest.raises(ConfigError):
        PruneLoop.resume(tmp_path, cfg, data=digits_small).run()
    with pytest.raises(ConfigError):
        PruneLoop.resume(tmp_path, None, data=digits_small).run()


def test_mismatched_config_on_resume_is_a_config_error(make_cfg, digits_small, tmp_path) -> None:
    cfg = _run_dir(make_cfg, digits_small, tmp_path)
    with pytest.raises(ConfigError, match="different config"):
        PruneLoop.resume(tmp_path, cfg.replace(epochs=3), data=digits_small)
    with pytest.raises(ConfigError):
        PruneLoop.resume(tmp_path / "nothing_here", cfg, data=digits_small)


def test_checkpoint_of_another_model_on_resume_is_a_config_error(
    make_cfg, digits_small, tmp_path
) -> None:
    """θ0 (theta0.pt) of a ResNet beside a ViT state checkpoint: a ConfigError, no traceback."""
    cfg = _run_dir(make_cfg, digits_small, tmp_path / "vit", states=3)
    cnn = make_cfg(model="resnet20", method="rsst", filter_ratio=0.5, pruning_times=2)
    loop = PruneLoop(cnn, tmp_path / "cnn", data=digits_small)
    next(loop.states())
    (tmp_path / "vit" / "theta0.pt").write_bytes((tmp_path / "cnn" / "theta0.pt").read_bytes())
    with pytest.raises(ConfigError):
        PruneLoop.resume(tmp_path / "vit", cfg, data=digits_small).run()
    # a ResNet state checkpoint in place of the ViT's, resumed with the ViT config
    (tmp_path / "vit" / "state_00.pt").write_bytes((tmp_path / "cnn" / "state_00.pt").read_bytes())
    with pytest.raises(ConfigError):
        PruneLoop.resume(tmp_path / "vit", cfg, data=digits_small)


# =========================================================================== §6 results
def _vit_digits_macs(heads: list[int], neurons: list[int]) -> int:
    """By hand: patch conv + per block (qkv, proj, fc1, fc2 per token + QKᵀ and AV) + head."""
    tokens, d, width = 17, 16, 64  # 16 patches + cls
    patch = (1 * 2 * 2 * width) * 16
    blocks = 0
    for h, n in zip(heads, neurons, strict=True):
        blocks += tokens * (3 * h * d * width + width * h * d + 2 * width * n)
        blocks += 2 * tokens * tokens * d * h  # QKᵀ and AV
    return patch + blocks + width * 10


def _vit_digits_params(heads: list[int], neurons: list[int]) -> int:
    dense = 136_138
    removed = sum(
        (4 - h) * (3 * 16 * 64 + 3 * 16 + 64 * 16) + (128 - n) * (64 + 1 + 64)
        for h, n in zip(heads, neurons, strict=True)
    )
    return dense - removed


SECTION6_KEYS = {
    "state",
    "val_acc",
    "test_acc",
    "density_U",
    "density_R",
    "rate",
    "sparsity",
    "density_total",
    "heads",
    "heads_per_layer",
    "neurons",
    "neurons_per_layer",
    "params",
    "macs",
    "params_frac",
    "macs_frac",
    "wall_time_s",
    "head_ratio_effective",
    "mlp_ratio_effective",
}
RSST_KEYS = {"acc_before_structure", "t_norm", "lambda_reached"}


def test_per_state_results_hold_section6_and_hand_counted_costs(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="rsst",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=3,
        reg_granularity_prune=2.0,
        RST_schedule="x^2",
    )
    loop = PruneLoop(cfg, data=digits_small)
    results = loop.run()
    assert _vit_digits_macs([4] * 4, [128] * 4) == 2_380_928
    for s, r in enumerate(results):
        row = r.to_dict()
        assert set(row) >= SECTION6_KEYS | RSST_KEYS, (SECTION6_KEYS | RSST_KEYS) - set(row)
        assert row["filters"] is None and row["filters_per_layer"] is None  # a ViT: no filters
        if s >= 1:
            assert r.lambda_reached == pytest.approx(2.0)  # x^2 at u = 1 is g
            assert r.t_norm is not None and r.t_norm >= 0.0
        else:  # every state reports every key; RSST's are None where they do not apply
            assert all(row[k] is None for k in RSST_KEYS)
        assert r.state == s and r.wall_time_s > 0
        # no rate given: it is derived so that U keeps as many weights as R (§2.4.1)
        assert r.density_U == pytest.approx(r.density_R, abs=1e-4)
        assert 0 <= r.val_acc <= 1 and 0 <= r.test_acc <= 1
        h, n = r.heads_per_layer, r.neurons_per_layer
        assert r.heads == sum(h) and r.neurons == sum(n)
        assert r.macs == _vit_digits_macs(h, n)
        assert r.params == _vit_digits_params(h, n)
        assert r.macs_frac == pytest.approx(r.macs / 2_380_928)
        assert r.params_frac == pytest.approx(r.params / 136_138)
    assert results[0].params == count_params(loop.model) == 136_138
    assert [list(r.heads_per_layer) for r in results] == [[4] * 4, [3] * 4, [2] * 4]
    # sparsity and density_total measured on the final model
    last = results[-1]
    params = dict(loop.model.named_parameters())
    w = loop.structure.weight_names
    zeros = sum(int((params[n] == 0).sum()) for n in w)
    assert last.sparsity == pytest.approx(zeros / sum(params[n].numel() for n in w))
    nz = sum(int(torch.count_nonzero(p)) for p in loop.model.parameters())
    assert last.density_total == pytest.approx(nz / 136_138)
    assert last.density_R == pytest.approx(1 - last.sparsity, abs=1e-6)
    assert last.rate == pytest.approx(1 - last.density_U / results[1].density_U, abs=1e-4)


def test_cnn_results_report_filters(make_cfg, digits_small) -> None:
    cfg = make_cfg(model="resnet20", method="refill", filter_ratio=0.5, pruning_times=2)
    results = PruneLoop(cfg, data=digits_small).run()
    per = [16] * 6 + [32] * 6 + [64] * 6
    assert list(results[0].filters_per_layer) == per
    assert list(results[1].filters_per_layer) == [c // 2 for c in per]
    assert results[1].filters == sum(per) // 2
    assert results[1].filter_ratio_effective == pytest.approx(0.5)
    assert 0.4 < results[1].macs_frac < 0.7 and 0.4 < results[1].params_frac < 0.7


# =========================================================================== §4 measured
def _t_norm(loop: PruneLoop) -> float:
    params = dict(loop.model.named_parameters())
    return math.sqrt(sum(float((params[n].detach()[t] ** 2).sum()) for n, t in loop.T.items()))


def _rsst_pull(make_cfg, digits, g: float) -> tuple[float, dict[str, Any]]:
    cfg = make_cfg(
        model="vit_digits",
        method="rsst",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=2,
        epochs=6,
        lr=3e-3,
        weight_decay=0.05,
        warmup_epochs=1.0,
        reg_granularity_prune=g,
        RST_schedule="x",
        criteria="l1",
    )
    loop = PruneLoop(cfg, data=digits)
    it = loop.states()
    next(it)
    start = _t_norm(loop)  # ‖T‖ at the start of the RSST state (θ0 on T)
    return start, next(it)


@pytest.mark.slow
def test_rsst_pull_drives_T_to_zero_and_zeroing_costs_little(make_cfg, digits) -> None:
    start, r = _rsst_pull(make_cfg, digits, 1.0)
    assert start > 0.5
    assert r.t_norm <= 0.05 * start, (start, r.t_norm)
    assert r.acc_before_structure - r.test_acc <= 0.02, r
    start0, r0 = _rsst_pull(make_cfg, digits, 0.0)
    assert r0.t_norm >= 0.5 * start0, (start0, r0.t_norm)
    assert r0.t_norm > 10 * r.t_norm


# =========================================================================== slow: accuracy
@pytest.mark.slow
def test_digits_vit_dense_95_and_rsst_within_two_points(make_cfg, digits) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="rsst",
        head_ratio=0.25,
        mlp_ratio=0.5,
        pruning_times=2,
        epochs=40,
        warmup_epochs=2.0,
        lr=3e-3,
        optimizer="adamw",
        weight_decay=0.05,
        label_smoothing=0.1,
        augment=False,
        batch_size=64,
        score_batches=4,
        criteria="l1",
        prune_type="lt",
        reg_granularity_prune=1.0,
        RST_schedule="x^2",
    )
    results = PruneLoop(cfg, data=digits).run()
    dense, rsst = results
    print(
        f"dense {dense.test_acc:.4f}  rsst {rsst.test_acc:.4f} "
        f"(before structure {rsst.acc_before_structure:.4f}, ‖T‖ {rsst.t_norm:.4f})"
    )
    assert list(rsst.heads_per_layer) == [3] * 4 and list(rsst.neurons_per_layer) == [64] * 4
    assert dense.test_acc >= 0.95
    assert rsst.test_acc >= dense.test_acc - 0.02


def test_the_criterion_scores_with_the_training_loss_label_smoothing_included(
    make_cfg, digits_small
) -> None:
    """§3.1: `saliency` is |a · dL/da| with L the training loss, so with its label smoothing."""
    import torch.nn.functional as F

    cfg = make_cfg(model="vit_digits", criteria="saliency", label_smoothing=0.3, pruning_times=2)
    loop = PruneLoop(cfg, data=digits_small)
    inputs = loop._score_inputs(loop.M, 1)
    logits, y = (
        torch.randn(16, 10, generator=torch.Generator().manual_seed(0)),
        torch.arange(16) % 10,
    )
    smoothed = F.cross_entropy(logits, y, label_smoothing=0.3)
    assert torch.allclose(inputs.loss_fn(logits, y), smoothed)
    assert not torch.allclose(inputs.loss_fn(logits, y), F.cross_entropy(logits, y))
