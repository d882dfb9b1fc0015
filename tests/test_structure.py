"""ALGORITHMS.md §1: prunable layers and units (heads, neurons, filters), on real tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from rsst_tune.pruning import masks as mk
from rsst_tune.pruning.structure import Member, find_structure

EMBED, HEADS, HEAD_DIM, HIDDEN, DEPTH = 64, 4, 16, 128, 4  # vit_digits


def _zeroed(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Names → boolean 'this element is masked out' for every parameter."""
    params = dict(model.named_parameters())
    return {
        n: ~masks[n] if n in masks else torch.zeros_like(p, dtype=torch.bool)
        for n, p in params.items()
    }


def _remove_one(model: nn.Module, structure, group_name: str, unit: int) -> dict[str, Tensor]:
    group = next(g for g in structure.groups if g.name == group_name)
    keep = torch.ones(group.num_units, dtype=torch.bool)
    keep[unit] = False
    base = mk.full_masks(model, structure.maskable_names)
    R = mk.from_units(model, structure, {group_name: keep}, base)
    assert all(m.dtype == torch.bool for m in R.values())
    return _zeroed(model, R)


# --------------------------------------------------------------------------- ViT layers
def test_vit_prunable_layers_are_qkv_proj_fc1_fc2_only(vit: nn.Module) -> None:
    s = find_structure(vit, target="both")
    expected_w = {
        f"blocks.{b}.{layer}.weight"
        for b in range(DEPTH)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert set(s.weight_names) == expected_w
    expected_bias = {
        f"blocks.{b}.{layer}.bias" for b in range(DEPTH) for layer in ("attn.qkv", "mlp.fc1")
    }
    assert set(s.maskable_names) == expected_w | expected_bias
    # never the classifier, the patch embedding, norms, tokens or position embeddings
    for name in s.maskable_names:
        assert not name.startswith(("head.", "patch_embed.", "norm.", "cls_token", "pos_embed"))
    kinds = {g.name: (g.kind, g.num_units) for g in s.groups}
    for b in range(DEPTH):
        assert kinds[f"blocks.{b}.attn"] == ("head", HEADS)
        assert kinds[f"blocks.{b}.mlp"] == ("neuron", HIDDEN)


@pytest.mark.parametrize(
    ("target", "kinds"), [("head", ["head"]), ("mlp", ["neuron"]), ("both", ["head", "neuron"])]
)
def test_vit_targets(vit: nn.Module, target: str, kinds: list[str]) -> None:
    s = find_structure(vit, target=target)
    assert s.kinds == kinds
    assert len(s.groups) == DEPTH * len(kinds)


def test_vit_patch_embedding_not_prunable_even_with_prune_stem(vit: nn.Module) -> None:
    s = find_structure(vit, target="both", prune_stem=True)
    assert not any(n.startswith("patch_embed") for n in s.maskable_names)


@pytest.mark.parametrize("block", range(DEPTH))
def test_head_mask_covers_qkv_rows_biases_and_proj_columns(vit: nn.Module, block: int) -> None:
    s = find_structure(vit, target="both")
    h = (block + 1) % HEADS  # a different head in every block
    zeroed = _remove_one(vit, s, f"blocks.{block}.attn", h)
    p = f"blocks.{block}.attn"
    rows = torch.cat(
        [torch.arange(j * EMBED + h * HEAD_DIM, j * EMBED + (h + 1) * HEAD_DIM) for j in range(3)]
    )  # q, k and v rows of head h
    exp_qkv = torch.zeros(3 * EMBED, EMBED, dtype=torch.bool)
    exp_qkv[rows] = True
    exp_bias = torch.zeros(3 * EMBED, dtype=torch.bool)
    exp_bias[rows] = True
    exp_proj = torch.zeros(EMBED, EMBED, dtype=torch.bool)
    exp_proj[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = True
    assert torch.equal(zeroed[f"{p}.qkv.weight"], exp_qkv)
    assert torch.equal(zeroed[f"{p}.qkv.bias"], exp_bias)
    assert torch.equal(zeroed[f"{p}.proj.weight"], exp_proj)
    others = {f"{p}.qkv.weight", f"{p}.qkv.bias", f"{p}.proj.weight"}
    for name, z in zeroed.items():
        if name not in others:
            assert not z.any(), f"removing head {h} of block {block} touched {name}"


def test_head_mask_silences_exactly_that_heads_output(vit: nn.Module) -> None:
    """Functional check: the removed head's slice of proj's input is 0, the others are not."""
    s = find_structure(vit, target="head")
    zeroed = _remove_one(vit, s, "blocks.2.attn", 1)
    with torch.no_grad():
        for n, p in vit.named_parameters():
            p[zeroed[n]] = 0.0
    seen: list[Tensor] = []
    handle = vit.blocks[2].attn.proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    vit.eval()
    with torch.no_grad():
        vit(torch.randn(3, 1, 8, 8))
    handle.remove()
    heads = seen[0].reshape(3, -1, HEADS, HEAD_DIM)
    assert heads[:, :, 1].abs().max() == 0
    for other in (0, 2, 3):
        assert heads[:, :, other].abs().max() > 0


def test_neuron_mask_covers_fc1_row_bias_and_fc2_column(vit: nn.Module) -> None:
    s = find_structure(vit, target="mlp")
    n = 77
    zeroed = _remove_one(vit, s, "blocks.3.mlp", n)
    p = "blocks.3.mlp"
    exp_fc1 = torch.zeros(HIDDEN, EMBED, dtype=torch.bool)
    exp_fc1[n] = True
    exp_b = torch.zeros(HIDDEN, dtype=torch.bool)
    exp_b[n] = True
    exp_fc2 = torch.zeros(EMBED, HIDDEN, dtype=torch.bool)
    exp_fc2[:, n] = True
    assert torch.equal(zeroed[f"{p}.fc1.weight"], exp_fc1)
    assert torch.equal(zeroed[f"{p}.fc1.bias"], exp_b)
    assert torch.equal(zeroed[f"{p}.fc2.weight"], exp_fc2)
    for name, z in zeroed.items():
        if name not in {f"{p}.fc1.weight", f"{p}.fc1.bias", f"{p}.fc2.weight"}:
            assert not z.any(), name
    # fc2's bias belongs to the block output, not to a neuron
    assert not zeroed[f"{p}.fc2.bias"].any()


# --------------------------------------------------------------------------- CNN layers
def test_resnet_filters_exclude_stem_and_classifier(resnet: nn.Module) -> None:
    s = find_structure(resnet, example_input=torch.randn(2, 1, 8, 8))
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == "conv1"
    assert [g.name for g in s.groups] == convs[1:]
    assert all(g.kind == "filter" for g in s.groups)
    assert not any(n.startswith(("conv1.", "bn1.", "fc.")) for n in s.maskable_names)
    with_stem = find_structure(resnet, prune_stem=True, example_input=torch.randn(2, 1, 8, 8))
    assert [g.name for g in with_stem.groups] == convs
    stem = with_stem.groups[0]
    assert {m.param for m in stem.members} == {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert not any(n.startswith("fc.") for n in with_stem.maskable_names)


def test_filter_mask_covers_conv_channel_and_its_batchnorm(resnet: nn.Module) -> None:
    s = find_structure(resnet)
    c = 5
    zeroed = _remove_one(resnet, s, "layer2.1.conv1", c)
    exp_w = torch.zeros(32, 32, 3, 3, dtype=torch.bool)
    exp_w[c] = True
    exp_bn = torch.zeros(32, dtype=torch.bool)
    exp_bn[c] = True
    assert torch.equal(zeroed["layer2.1.conv1.weight"], exp_w)
    assert torch.equal(zeroed["layer2.1.bn1.weight"], exp_bn)
    assert torch.equal(zeroed["layer2.1.bn1.bias"], exp_bn)
    for name, z in zeroed.items():
        if name not in {"layer2.1.conv1.weight", "layer2.1.bn1.weight", "layer2.1.bn1.bias"}:
            assert not z.any(), name


def test_filter_mask_silences_the_bn_output_channel(resnet: nn.Module) -> None:
    s = find_structure(resnet)
    zeroed = _remove_one(resnet, s, "layer1.1.conv1", 3)
    with torch.no_grad():
        for n, p in resnet.named_parameters():
            p[zeroed[n]] = 0.0
    out: list[Tensor] = []
    h = resnet.layer1[1].bn1.register_forward_hook(lambda _m, _a, o: out.append(o))
    resnet.eval()
    with torch.no_grad():
        resnet(torch.randn(2, 1, 8, 8))
    h.remove()
    assert out[0][:, 3].abs().max() == 0
    assert out[0][:, 4].abs().max() > 0


def test_vgg_filter_covers_conv_bias_and_bn_and_never_the_classifier(build_model) -> None:
    model = build_model("vgg16_bn")
    s = find_structure(model)
    first = s.groups[0]  # features.0 is the stem and excluded
    assert first.name == "features.3"
    assert {m.param for m in first.members} == {
        "features.3.weight",
        "features.3.bias",
        "features.4.weight",
        "features.4.bias",
    }
    assert not any(n.startswith("classifier") for n in s.maskable_names)
    zeroed = _remove_one(model, s, "features.3", 0)
    assert bool(zeroed["features.3.bias"][0]) and not zeroed["features.3.bias"][1:].any()


def test_member_expand_and_per_unit_round_trip() -> None:
    m = Member("w", (3, 4, 5, 7), 1, True)
    units = torch.tensor([True, False, True, False])
    full = m.expand(units, torch.Size([60, 7]))
    assert full.shape == (60, 7)
    assert torch.equal(m.per_unit(full.float()), units.float() * 3 * 5 * 7)
    assert torch.equal(m.per_unit(full, reduce="any"), units)
