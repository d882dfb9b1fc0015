"""docs/methods.md §1: prunable layers and units (heads, neurons, filters), on real tiny models."""

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


# --------------------------------------------------------------------------- ImageNet-class
def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine BN, so slicing a wrong channel would show."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _mask_every_other(model: nn.Module, structure) -> None:
    """Zero every other unit of every group (unit 0 kept), as a structured mask does."""
    keep = {}
    for g in structure.groups:
        k = torch.ones(g.num_units, dtype=torch.bool)
        k[1::2] = False
        keep[g.name] = k
    R = mk.from_units(model, structure, keep, mk.full_masks(model, structure.maskable_names))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in R:
                p.mul_(R[n])


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    from rsst_tune.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=3, in_chans=3, img_size=32).eval()
    _randomise_bn(model)
    return model


def test_resnet50_inner_bottleneck_convs_are_removable_residual_outputs_stay(
    resnet50: nn.Module,
) -> None:
    """Every conv but the stem holds filters; conv1 and conv2 of each Bottleneck feed only
    the next conv (removable), conv3 and downsample.0 reach the residual add (kept whole)."""
    from torchvision.models.resnet import Bottleneck

    s = find_structure(resnet50, example_input=torch.randn(2, 3, 32, 32))
    blocks = [n for n, m in resnet50.named_modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and len(s.groups) == 16 * 3 + 4  # + one downsample per stage
    by_name = {g.name: g for g in s.groups}
    assert "conv1" not in by_name and not any(n.startswith("fc.") for n in s.maskable_names)
    for b in blocks:
        inner1, inner2, out = (by_name[f"{b}.conv{i}"] for i in (1, 2, 3))
        assert inner1.removable and inner2.removable and not out.removable
        assert [c.param for c in inner1.consumers] == [f"{b}.conv2.weight"]
        assert [c.param for c in inner2.consumers] == [f"{b}.conv3.weight"]
        assert {m.param for m in inner2.members} == {
            f"{b}.conv2.weight", f"{b}.bn2.weight", f"{b}.bn2.bias"
        }  # fmt: skip
    downs = [g for g in s.groups if g.name.endswith("downsample.0")]
    assert len(downs) == 4 and not any(g.removable for g in downs)
    assert {m.param for m in downs[0].members} == {
        "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
        "layer1.0.downsample.1.bias",
    }  # fmt: skip
    stem = find_structure(resnet50, prune_stem=True, example_input=torch.randn(2, 3, 32, 32))
    first = stem.groups[0]  # after the max-pool, read by layer1.0's conv1 and its downsample
    assert first.name == "conv1" and first.removable
    assert {c.param for c in first.consumers} == {
        "layer1.0.conv1.weight", "layer1.0.downsample.0.weight"
    }  # fmt: skip


def test_resnet50_export_slices_inner_filters_and_matches_the_masked_model(
    resnet50: nn.Module, tmp_path
) -> None:
    """Half the filters of every conv masked: the export removes those of conv1/conv2 (and
    the stem's with prune_stem), keeps conv3/downsample whole, and computes the same logits;
    the saved file loads back to the same model."""
    import copy

    from rsst_tune.pruning.cost import CostModel, count_params
    from rsst_tune.pruning.exported import load_exported, save_exported
    from rsst_tune.pruning.slicing import export_model

    model = copy.deepcopy(resnet50)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    s = find_structure(model, prune_stem=True, example_input=x)
    _mask_every_other(model, s)
    result = export_model(model, s, "cpu", example=x)
    pruned = result.model
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert pruned.conv1.out_channels == 32 and pruned.bn1.num_features == 32
    assert pruned.layer1[0].downsample[0].in_channels == 32
    block = pruned.layer2[1]
    assert (block.conv1.out_channels, block.conv2.in_channels, block.conv2.out_channels) == (
        64, 64, 64,
    )  # fmt: skip
    assert (block.conv3.in_channels, block.conv3.out_channels) == (64, 512)
    assert block.bn2.running_var.shape == (64,)
    assert pruned.layer4[2].conv3.out_channels == 2048 and pruned.fc.in_features == 2048
    report = {r.name: r for r in result.layers}
    assert report["layer3.0.conv3"].zero_kept_coupled == 512
    assert report["layer3.0.conv2"].removed == 128
    assert count_params(pruned) == CostModel(model, s, x).cost(result.kept_counts).params
    assert count_params(pruned) < 0.5 * count_params(resnet50)
    path = save_exported(
        result, tmp_path / "model.pt", model_name="resnet50", num_classes=3, in_chans=3,
        img_size=32,
    )  # fmt: skip
    with torch.inference_mode():
        assert torch.allclose(load_exported(path)(x), pruned(x), atol=1e-5)


def tiny_deit_distilled() -> nn.Module:
    """timm's DeiT with a distillation token and head, at a tiny width (no download)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=16, patch_size=4,
        embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5,
    ).eval()  # fmt: skip


def test_deit_distillation_token_heads_and_neurons_export() -> None:
    """Heads and MLP neurons of a distilled DeiT are found and sliced as in any ViT; the
    class and distillation tokens, both heads and the patch embedding are never pruned, and
    the export's averaged logits match the masked model's."""
    from rsst_tune.pruning.cost import CostModel, count_params
    from rsst_tune.pruning.slicing import export_model

    model = tiny_deit_distilled()
    assert model.dist_token.shape == (1, 1, 32) and isinstance(model.head_dist, nn.Linear)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    s = find_structure(model, target="both", example_input=x)
    assert [(g.name, g.kind, g.num_units) for g in s.groups] == [
        ("blocks.0.attn", "head", 4), ("blocks.0.mlp", "neuron", 64),
        ("blocks.1.attn", "head", 4), ("blocks.1.mlp", "neuron", 64),
    ]  # fmt: skip
    never = ("cls_token", "dist_token", "pos_embed", "patch_embed.", "head.", "head_dist.")
    assert not any(n.startswith(never) for n in s.maskable_names)
    _mask_every_other(model, s)
    cost = CostModel(model, s, x)
    assert cost._tokens["blocks.0.attn"] == 16 + 2  # patches + class + distillation token
    result = export_model(model, s, "cpu", example=x)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    pruned = result.model
    assert pruned.blocks[0].attn.num_heads == 2 and pruned.blocks[0].attn.qkv.out_features == 48
    assert pruned.blocks[1].mlp.fc1.out_features == 32
    assert pruned.dist_token.shape == (1, 1, 32) and pruned.head_dist.in_features == 32
    assert count_params(pruned) == cost.cost(result.kept_counts).params
    with torch.inference_mode():  # eval output is the mean of the two heads' logits
        tokens = pruned.forward_features(x)
        mean = (pruned.head(tokens[:, 0]) + pruned.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(pruned(x), mean, atol=1e-6)


def test_a_vit_without_a_class_token_prunes_and_exports() -> None:
    """timm's ViT with no class token (average-pooled tokens, as in some timm `vit_*`
    variants): heads and neurons are found, the MACs count only the patch tokens, and the
    export matches the masked model."""
    import timm

    from rsst_tune.pruning.cost import CostModel, count_params
    from rsst_tune.pruning.slicing import export_model

    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
        num_classes=5, class_token=False, global_pool="avg",
    ).eval()  # fmt: skip
    assert model.cls_token is None
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    s = find_structure(model, target="both", example_input=x)
    assert [(g.kind, g.num_units) for g in s.groups] == [("head", 4), ("neuron", 64)] * 2
    _mask_every_other(model, s)
    cost = CostModel(model, s, x)
    assert cost._tokens["blocks.0.attn"] == 16  # patches only
    result = export_model(model, s, "cpu", example=x)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.model.blocks[0].attn.num_heads == 2
    assert count_params(result.model) == cost.cost(result.kept_counts).params
