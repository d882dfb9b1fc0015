"""docs/methods.md §1 (masks), §2.4.1 (U), §3.1 (criteria), §3.2 (budgets, sorting) and §4 (the
regularizer as a unit), on real tiny models and real digits batches."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from rsst_tune.data import DeviceData, make_generator
from rsst_tune.errors import ConfigError
from rsst_tune.pruning import masks as mk
from rsst_tune.pruning.criteria import ScoreInputs, get_criterion, list_criteria
from rsst_tune.pruning.regularizer import TargetPull, lam
from rsst_tune.pruning.select import (
    Budget,
    clamp_keep,
    density_matched_keep,
    explicit_keep,
    magnitude_prune,
    ranked,
    round_half_up,
    select_units,
)
from rsst_tune.pruning.structure import find_structure
from rsst_tune.train import build_optimizer, train_state, train_step


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_masks(model: nn.Module, names: list[str], keep: float, seed: int) -> dict[str, Tensor]:
    g = _gen(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) < keep for n in names}


# =========================================================================== masks (§1)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_mask_enforced_after_every_optimizer_step(vit, digits_small, make_cfg, optimizer) -> None:
    """Weights outside M are exactly 0 after every step, with momentum / AdamW + weight decay."""
    cfg = make_cfg(optimizer=optimizer, weight_decay=0.1, lr=1e-2, momentum=0.9)
    s = find_structure(vit)
    M = _random_masks(vit, s.maskable_names, 0.5, seed=1)
    M_before = mk.clone(M)
    enforcer = mk.MaskEnforcer(vit, M)
    data = DeviceData(digits_small.train, digits_small.spec, "cpu")
    params = dict(vit.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = build_optimizer(vit, cfg)
    enforcer.apply()
    loss_fn = nn.CrossEntropyLoss()
    for x, y in data.train_batches(64, make_generator(0, "cpu"), augment=False):
        train_step(
            vit,
            x,
            y,
            opt=opt,
            loss_fn=loss_fn,
            enforcer=enforcer,
            pull=None,
            lam_value=0.0,
            amp=None,
        )
        for n, m in M.items():
            assert (params[n][~m] == 0).all(), f"{n} has weights outside M after a step"
    # masks stay binary (bool), unchanged, and never aliased with the weights
    for n, m in M.items():
        assert m.dtype == torch.bool
        assert torch.equal(m, M_before[n])
        assert m.data_ptr() != params[n].data_ptr()
    # training did happen inside M
    changed = sum(int((params[n][M[n]] != start[n][M[n]]).sum()) for n in M)
    assert changed > 0.9 * sum(int(m.sum()) for m in M.values())


def test_mask_enforced_by_train_state_with_adamw_weight_decay(vit, digits_small, make_cfg) -> None:
    cfg = make_cfg(optimizer="adamw", weight_decay=0.5, epochs=2)
    s = find_structure(vit)
    M = _random_masks(vit, s.maskable_names, 0.3, seed=2)
    data = DeviceData(digits_small.train, digits_small.spec, "cpu")
    stats = train_state(
        vit,
        vit,
        data,
        cfg,
        generator=make_generator(0, "cpu"),
        enforcer=mk.MaskEnforcer(vit, M),
        pull=None,
        amp=None,
    )
    assert stats.steps == 2 * data.num_batches(64)
    params = dict(vit.named_parameters())
    for n, m in M.items():
        assert (params[n][~m] == 0).all()
        assert (params[n][m] != 0).float().mean() > 0.99


def test_mask_operations_return_fresh_tensors(vit) -> None:
    s = find_structure(vit)
    a = _random_masks(vit, s.maskable_names, 0.5, 3)
    b = _random_masks(vit, s.maskable_names, 0.5, 4)
    for out in (mk.clone(a), mk.union(a, b), mk.minus(a, b)):
        for n, m in out.items():
            assert m.dtype == torch.bool
            assert m.data_ptr() not in (a[n].data_ptr(), b[n].data_ptr())
    groups = s.by_kind("head")
    R = mk.from_units(
        vit, s, {g.name: torch.tensor([1, 0, 1, 1], dtype=torch.bool) for g in groups}, a
    )
    ptrs = {m.data_ptr() for m in R.values()}
    assert len(ptrs) == len(R)
    assert not ptrs & {m.data_ptr() for m in a.values()}


# =========================================================================== U (§2.4.1)
def _prunable(model: nn.Module) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in find_structure(model).weight_names}


def test_magnitude_prune_imp_density_compounds(vit) -> None:
    """After p prunes at `rate`, the prunable density is (1 − rate)^p (up to rounding)."""
    weights = _prunable(vit)
    total = sum(w.numel() for w in weights.values())
    M = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    rate = 0.2
    for p in range(1, 6):
        kept_before = sum(int(m.sum()) for m in M.values())
        U = magnitude_prune(weights, M, rate, _gen(p))
        kept = sum(int(m.sum()) for m in U.values())
        assert kept == kept_before - round_half_up(rate * kept_before)
        assert abs(kept / total - (1 - rate) ** p) <= p / total
        for n in M:  # U ⊆ M: only weights M still keeps are pruned
            assert not (U[n] & ~M[n]).any()
        M = U
        with torch.no_grad():  # as the loop does: pruned weights are 0 in the model
            for n, w in weights.items():
                w.mul_(M[n])


def test_magnitude_prune_is_global_across_layers(vit) -> None:
    """One layer with tiny weights is emptied first: the threshold is global, not per layer."""
    weights = _prunable(vit)
    small = "blocks.1.mlp.fc1.weight"
    with torch.no_grad():
        for n, w in weights.items():  # every other weight has |w| >= 1e-3, this layer < 1e-6
            w.copy_(w * 1e-4 if n == small else torch.sign(w) * (w.abs() + 1e-3))
    M = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    rate = weights[small].numel() / total
    U = magnitude_prune(weights, M, rate, _gen(0))
    assert not U[small].any()
    for n in weights:
        if n != small:
            assert U[n].all(), n


def test_magnitude_prune_keeps_the_largest_magnitudes(vit) -> None:
    weights = _prunable(vit)
    M = _random_masks(vit, list(weights), 0.7, 5)
    U = magnitude_prune(weights, M, 0.4, _gen(0))
    kept = torch.cat([weights[n].detach().abs()[U[n]] for n in weights])
    dropped = torch.cat([weights[n].detach().abs()[M[n] & ~U[n]] for n in weights])
    assert kept.min() >= dropped.max()
    n_m = sum(int(m.sum()) for m in M.values())
    assert dropped.numel() == round_half_up(0.4 * n_m)


def test_magnitude_prune_ties_broken_by_seeded_permutation() -> None:
    weights = {"a.weight": torch.ones(20, 10), "b.weight": torch.ones(30, 5)}
    M = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    u1 = magnitude_prune(weights, M, 0.3, _gen(1))
    u2 = magnitude_prune(weights, M, 0.3, _gen(2))
    u1b = magnitude_prune(weights, M, 0.3, _gen(1))
    count = [sum(int(m.sum()) for m in u.values()) for u in (u1, u2)]
    assert count[0] == count[1] == 350 - 105
    assert any(not torch.equal(u1[n], u2[n]) for n in weights)  # different seeds differ
    assert all(torch.equal(u1[n], u1b[n]) for n in weights)  # same seed repeats
    # not index order: the dropped weights are not simply the first 105
    flat = torch.cat([u1[n].flatten() for n in weights])
    assert flat[:105].any()


# =========================================================================== budgets (§3.2)
def test_round_half_up_not_truncation_nor_bankers() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49, 2.01, 0.99)] == [1, 2, 3, 2, 2, 1]


def test_three_heads_at_ratio_033_lose_exactly_one() -> None:
    assert explicit_keep(3, 0.33, 1) == 2
    assert explicit_keep(3, 0.5, 1) == 2  # round(1.5) = 2 (half up)


def test_explicit_budgets_compound_over_states() -> None:
    assert [explicit_keep(4, 0.25, p) for p in range(5)] == [4, 3, 2, 2, 1]
    assert [explicit_keep(128, 0.5, p) for p in range(4)] == [128, 64, 32, 16]
    for c, r in ((12, 0.3), (64, 0.2), (3, 0.33)):
        for p in range(6):
            assert explicit_keep(c, r, p) == math.floor(c * (1 - r) ** p + 0.5)


def test_min_units_clamp() -> None:
    assert clamp_keep(0, alive=4, min_units=1) == 1
    assert clamp_keep(1, alive=4, min_units=2) == 2
    assert clamp_keep(9, alive=3, min_units=1) == 3  # never more than alive
    assert clamp_keep(0, alive=1, min_units=2) == 1  # never more than alive either


def test_density_matched_keep_formula() -> None:
    # k = round(|U|/W + (C − |U|/W) · fillback_rate)
    assert density_matched_keep(1000, 300, 10, 0.0) == 3
    assert density_matched_keep(1000, 300, 10, 0.5) == 7
    assert density_matched_keep(1000, 300, 10, 1.0) == 10  # fillback 1: all alive
    assert density_matched_keep(450, 300, 4, 0.0) == 2  # 1.5 rounds half up
    for kept in range(0, 1201, 37):
        assert density_matched_keep(kept, 300, 4, 1.0) == 4


def _select(groups, scores, alive, keeps, sorting="layer", min_units=1, seed=0):
    budgets = [Budget(k, int(alive[g.name].sum()), None) for g, k in zip(groups, keeps)]
    return select_units(
        groups, scores, alive, budgets, sorting=sorting, min_units=min_units, generator=_gen(seed)
    )


def test_removed_unit_never_returns(vit) -> None:
    groups = find_structure(vit, target="head").groups[:1]
    alive = {groups[0].name: torch.tensor([False, True, True, True])}
    scores = [torch.tensor([100.0, 1.0, 2.0, 3.0])]
    keep = _select(groups, scores, alive, [2])
    assert keep[groups[0].name].tolist() == [False, False, True, True]
    keep = _select(groups, scores, alive, [4])  # even a budget larger than alive
    assert keep[groups[0].name].tolist() == [False, True, True, True]
    keep = _select(groups, scores, alive, [2], sorting="global")
    assert keep[groups[0].name].tolist() == [False, False, True, True]


def test_unit_ties_broken_randomly_not_by_index(vit) -> None:
    groups = find_structure(vit, target="mlp").groups[:1]
    name = groups[0].name
    alive = {name: torch.ones(128, dtype=torch.bool)}
    scores = [torch.ones(128)]
    k1 = _select(groups, scores, alive, [64], seed=1)[name]
    k2 = _select(groups, scores, alive, [64], seed=2)[name]
    k1b = _select(groups, scores, alive, [64], seed=1)[name]
    assert int(k1.sum()) == int(k2.sum()) == 64
    assert not torch.equal(k1, k2)
    assert torch.equal(k1, k1b)
    assert not k1[:64].all()  # not index order
    perm = ranked(torch.zeros(50), _gen(3))
    assert not torch.equal(perm, torch.arange(50))


def test_global_sorting_normalises_per_layer_and_keeps_min_units(vit) -> None:
    groups = find_structure(vit, target="head").groups[:2]
    a, b = groups[0].name, groups[1].name
    alive = {a: torch.ones(4, dtype=torch.bool), b: torch.ones(4, dtype=torch.bool)}
    scores = [torch.tensor([400.0, 300.0, 200.0, 100.0]), torch.tensor([4.0, 3.5, 2.0, 1.0])]
    keep = _select(groups, scores, alive, [2, 2], sorting="global")
    # on raw scores layer a would take 3 of the 4 places; normalised by the layer mean, b's
    # second unit (3.5 / 2.625 = 1.33) beats a's third (200 / 250 = 0.8)
    assert keep[a].tolist() == [True, True, False, False]
    assert keep[b].tolist() == [True, True, False, False]
    # a layer whose scores are all tiny still keeps min_units
    scores = [torch.tensor([400.0, 300.0, 200.0, 100.0]), torch.tensor([1e-6, 0.0, 0.0, 0.0])]
    for m in (1, 2):
        keep = _select(groups, scores, alive, [2, 2], sorting="global", min_units=m)
        assert int(keep[b].sum()) >= m
        assert int(keep[a].sum()) + int(keep[b].sum()) == 4


def test_global_sorting_layer_with_dead_units(vit) -> None:
    groups = find_structure(vit, target="head").groups[:2]
    a, b = groups[0].name, groups[1].name
    alive = {a: torch.tensor([True, True, False, False]), b: torch.ones(4, dtype=torch.bool)}
    scores = [torch.tensor([5.0, 5.0, 99.0, 99.0]), torch.tensor([4.0, 3.0, 2.0, 1.0])]
    keep = _select(groups, scores, alive, [1, 3], sorting="global")
    assert not keep[a][2:].any()
    assert int(keep[a].sum()) + int(keep[b].sum()) == 4


# =========================================================================== criteria (§3.1)
def test_criteria_registry_names_choices() -> None:
    assert list_criteria() == ["l1", "l2", "magnitude", "remain", "saliency"]
    with pytest.raises(ConfigError, match="l1, l2, magnitude, remain, saliency"):
        get_criterion("taylor")


def _inputs(model, structure, batches, U=None, M=None) -> ScoreInputs:
    full = mk.full_masks(model, structure.maskable_names)
    return ScoreInputs(
        U if U is not None else full,
        M if M is not None else mk.clone(full),
        batches,
        nn.CrossEntropyLoss(),
    )


def test_remain_counts_u_kept_weights_per_unit(vit, digits_batches) -> None:
    s = find_structure(vit, target="both")
    U = _random_masks(vit, s.maskable_names, 0.6, 7)
    scores = get_criterion("remain")(vit, s.groups, _inputs(vit, s, digits_batches, U=U))
    g = s.groups[0]  # blocks.0.attn
    for h in range(4):
        rows = torch.cat([torch.arange(j * 64 + h * 16, j * 64 + (h + 1) * 16) for j in range(3)])
        expect = int(U["blocks.0.attn.qkv.weight"][rows].sum()) + int(
            U["blocks.0.attn.proj.weight"][:, h * 16 : (h + 1) * 16].sum()
        )
        assert scores[0][h].item() == expect  # biases not counted
    g = s.groups[1]  # blocks.0.mlp
    assert g.kind == "neuron"
    expect = U["blocks.0.mlp.fc1.weight"].sum(1) + U["blocks.0.mlp.fc2.weight"].sum(0)
    assert torch.equal(scores[1], expect.float())


def test_magnitude_ignores_biases_and_respects_M(vit, digits_batches) -> None:
    s = find_structure(vit, target="mlp")
    crit = get_criterion("magnitude")
    base = crit(vit, s.groups, _inputs(vit, s, digits_batches))
    fc1, fc2 = vit.blocks[0].mlp.fc1, vit.blocks[0].mlp.fc2
    expect = fc1.weight.detach().abs().sum(1) + fc2.weight.detach().abs().sum(0)
    assert torch.allclose(base[0], expect, rtol=1e-5)
    with torch.no_grad():
        fc1.bias.fill_(1e3)
    assert torch.equal(crit(vit, s.groups, _inputs(vit, s, digits_batches))[0], base[0])
    M = mk.full_masks(vit, s.maskable_names)
    M["blocks.0.mlp.fc1.weight"][3, :10] = False
    masked = crit(vit, s.groups, _inputs(vit, s, digits_batches, M=M))[0]
    assert torch.allclose(base[0][3] - masked[3], fc1.weight.detach()[3, :10].abs().sum())
    assert torch.equal(masked[torch.arange(128) != 3], base[0][torch.arange(128) != 3])


ACTIVATION_CRITERIA = ["l1", "l2", "saliency"]


@pytest.mark.parametrize("criterion", ACTIVATION_CRITERIA)
def test_activation_criteria_read_each_heads_own_output_in_every_block(
    vit, digits_batches, criterion
) -> None:
    s = find_structure(vit, target="head")
    silenced = {}
    with torch.no_grad():
        for b, blk in enumerate(vit.blocks):
            h = (b * 3 + 1) % 4  # a different head in every block
            rows = slice(128 + h * 16, 128 + (h + 1) * 16)  # v rows of head h
            blk.attn.qkv.weight[rows] = 0.0
            blk.attn.qkv.bias[rows] = 0.0
            silenced[f"blocks.{b}.attn"] = h
    before = {n: p.detach().clone() for n, p in vit.named_parameters()}
    scores = get_criterion(criterion)(vit, s.groups, _inputs(vit, s, digits_batches))
    for g, sc in zip(s.groups, scores, strict=True):
        h = silenced[g.name]
        assert sc[h].item() == 0.0, (criterion, g.name)
        others = [i for i in range(4) if i != h]
        assert (sc[others] > 0).all(), (criterion, g.name, sc)
    # a criterion only scores: weights unchanged, no gradients left behind
    for n, p in vit.named_parameters():
        assert torch.equal(p, before[n])
        assert p.grad is None


@pytest.mark.parametrize("criterion", ACTIVATION_CRITERIA)
def test_activation_criteria_read_each_neurons_own_output_in_every_block(
    vit, digits_batches, criterion
) -> None:
    s = find_structure(vit, target="mlp")
    silenced = {}
    with torch.no_grad():
        for b, blk in enumerate(vit.blocks):
            n = 10 + 31 * b
            blk.mlp.fc1.weight[n] = 0.0
            blk.mlp.fc1.bias[n] = 0.0
            silenced[f"blocks.{b}.mlp"] = n
    scores = get_criterion(criterion)(vit, s.groups, _inputs(vit, s, digits_batches))
    for g, sc in zip(s.groups, scores, strict=True):
        n = silenced[g.name]
        assert sc[n].item() == 0.0
        assert (sc[torch.arange(128) != n] > 0).all()


@pytest.mark.parametrize("criterion", ACTIVATION_CRITERIA)
def test_activation_criteria_read_each_filters_own_output(resnet, digits_batches, criterion):
    s = find_structure(resnet)
    silenced = {}
    convs = dict(resnet.named_modules())
    with torch.no_grad():
        for i, g in enumerate(s.groups):
            c = (5 * i + 2) % g.num_units
            convs[g.name].weight[c] = 0.0
            silenced[g.name] = c
    scores = get_criterion(criterion)(resnet, s.groups, _inputs(resnet, s, digits_batches))
    for g, sc in zip(s.groups, scores, strict=True):
        c = silenced[g.name]
        assert sc[c].item() == 0.0, (g.name, criterion)
        others = sc[torch.arange(g.num_units) != c]
        if criterion == "saliency":  # an untrained ResNet has a few dead-ReLU channels (∂L/∂a = 0)
            assert (others > 0).float().mean() >= 0.8, (g.name, criterion)
        else:
            assert (others > 0).all(), (g.name, criterion)


def test_l1_l2_values_match_a_hand_hook(vit, digits_batches) -> None:
    """l1 = mean |a|, l2 = sqrt(mean a²) of the neuron's post-GELU output (fc2's input)."""
    s = find_structure(vit, target="mlp")
    acts: list[Tensor] = []
    h = vit.blocks[2].mlp.fc2.register_forward_pre_hook(lambda _m, a: acts.append(a[0]))
    vit.eval()
    with torch.no_grad():
        for x, _ in digits_batches:
            vit(x)
    h.remove()
    a = torch.cat([t.reshape(-1, 128) for t in acts]).double()
    l1 = get_criterion("l1")(vit, s.groups, _inputs(vit, s, digits_batches))[2]
    l2 = get_criterion("l2")(vit, s.groups, _inputs(vit, s, digits_batches))[2]
    assert torch.allclose(l1.double(), a.abs().mean(0), rtol=1e-5)
    assert torch.allclose(l2.double(), a.pow(2).mean(0).sqrt(), rtol=1e-5)


# =========================================================================== regularizer (§4)
G, K = 2.5, 3.0


@pytest.mark.parametrize(
    ("schedule", "half"),
    [
        ("constant", G),
        ("x", G / 2),
        ("x^2", G / 4),
        ("x^3", G / 8),
        ("exp", G * (math.exp(0.5) - 1) / (math.e - 1)),
        ("exp_custom_exponents", G * (math.exp(0.5**K) - 1) / (math.e - 1)),
    ],
)
def test_schedule_values(schedule: str, half: float) -> None:
    assert lam(schedule, 0.0, G, K) == pytest.approx(G if schedule == "constant" else 0.0, abs=0)
    assert lam(schedule, 0.5, G, K) == pytest.approx(half, rel=1e-12)
    assert lam(schedule, 1.0, G, K) == pytest.approx(G, rel=1e-12)
    # a pure function of u: same input, same output; monotone non-decreasing
    us = [i / 20 for i in range(21)]
    vals = [lam(schedule, u, G, K) for u in us]
    assert vals == [lam(schedule, u, G, K) for u in us]
    assert all(b >= a for a, b in itertools.pairwise(vals))


def test_unknown_schedule_names_choices() -> None:
    with pytest.raises(ConfigError, match="exp_custom_exponents"):
        lam("cosine", 0.5, 1.0)


def test_target_pull_changes_exactly_T_gradients_by_lambda_w(vit, digits_batches) -> None:
    s = find_structure(vit, target="both")
    T = _random_masks(vit, s.maskable_names[:6], 0.3, 11)  # weights and biases
    T["blocks.3.mlp.fc1.bias"] = torch.zeros(128, dtype=torch.bool)  # an empty one
    x, y = digits_batches[0]
    nn.CrossEntropyLoss()(vit(x), y).backward()
    before = {n: p.grad.clone() for n, p in vit.named_parameters()}
    pull = TargetPull(vit, T)
    lam_value = 0.7
    pull.apply(lam_value)
    for n, p in vit.named_parameters():
        if n in T:
            t = T[n]
            delta = p.grad - before[n]
            assert torch.equal(p.grad[~t], before[n][~t]), n  # outside T: untouched, bitwise
            assert torch.allclose(delta[t], lam_value * p.detach()[t], rtol=1e-5, atol=1e-7), n
        else:
            assert torch.equal(p.grad, before[n]), n
    expected_norm = math.sqrt(
        sum(float((p.detach()[T[n]] ** 2).sum()) for n, p in vit.named_parameters() if n in T)
    )
    assert pull.norm() == pytest.approx(expected_norm, rel=1e-5)
    snap = {n: p.grad.clone() for n, p in vit.named_parameters()}
    pull.apply(0.0)  # λ = 0 changes nothing
    assert all(torch.equal(p.grad, snap[n]) for n, p in vit.named_parameters())


@pytest.mark.parametrize("criterion", ACTIVATION_CRITERIA)
def test_activation_criteria_score_in_eval_mode_and_restore_train_mode(
    resnet, digits_batches, criterion
) -> None:
    """Scores come from eval mode: BatchNorm running statistics do not move while scoring."""
    s = find_structure(resnet)
    resnet.train()
    buffers = {n: b.clone() for n, b in resnet.named_buffers()}
    get_criterion(criterion)(resnet, s.groups, _inputs(resnet, s, digits_batches))
    assert resnet.training
    for n, b in resnet.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_no_weight_decay_on_vit_tokens_and_position_embedding() -> None:
    from rsst_tune.config import TrialConfig
    from rsst_tune.models import create_model
    from rsst_tune.train import build_optimizer

    model = create_model("vit_digits", num_classes=10, in_chans=1, img_size=8)
    opt = build_optimizer(model, TrialConfig(weight_decay=0.05))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(named["blocks.0.attn.qkv.weight"]) in decayed
    for name in ("pos_embed", "cls_token", "blocks.0.attn.qkv.bias", "blocks.0.norm1.weight"):
        assert id(named[name]) not in decayed, name
