"""A contract every registered model keeps (and tiny timm models standing for `timm:NAME`):
its prunable units are found (heads and neurons of a ViT, filters of a CNN), one structured
prune step masks some of them the way the loop does (criterion, per-layer budgets, R), and
the physical export of the masked model computes what the masked model computes, with fewer
parameters. Real tiny inputs, CPU, no mocks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from rsst_tune.models import MODELS, create_model, list_models
from rsst_tune.pruning import masks as mk
from rsst_tune.pruning.cost import count_params
from rsst_tune.pruning.criteria import ScoreInputs, get_criterion
from rsst_tune.pruning.select import Budget, clamp_keep, explicit_keep, select_units
from rsst_tune.pruning.slicing import export_model, zero_units
from rsst_tune.pruning.structure import Structure, find_structure
from rsst_tune.units import FILTER, HEAD, NEURON

# `timm:NAME` builds any timm model: a tiny ViT, a tiny ResNet, and DeiT's two tokens/heads
TIMM = ("timm:test_vit", "timm:test_resnet", "timm:deit_tiny_distilled_patch16_224")
# inputs smaller than the registered default, where the model allows, to keep this fast
SIZE = {"resnet50": 64}
RATIO = 0.5  # each prunable layer loses half its units (at least one is kept)


@dataclass(frozen=True)
class Case:
    name: str
    in_chans: int
    img_size: int


def _case(name: str) -> Case:
    if name.startswith("timm:"):
        return Case(name, 3, 32)
    entry = MODELS.get(name)
    return Case(name, entry.in_chans, SIZE.get(name, entry.img_size))


def _names() -> list[str]:
    return [*list_models(), *TIMM]


def test_every_registered_model_is_covered() -> None:
    assert set(list_models()) <= set(_names())
    assert list_models(), "the registry holds the built-in models"


@torch.no_grad()
def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine weights, so slicing the wrong channel would
    show. The scales stay below 1, as in a trained network: at their initial 1 a deep ResNet's
    residual sum reaches logits in the thousands, where float32 rounding alone exceeds the
    export's 1e-4 check."""
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.4 + 0.1)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _prune_once(model: nn.Module, structure: Structure, x: Tensor) -> dict[str, Tensor]:
    """One structured prune as the loop's step 4 builds it (§3): l1 scores on a batch, an
    explicit per-layer budget, the top units of each layer, their mask R imposed on the
    model. Returns the kept units of each group."""
    M = mk.full_masks(model, structure.maskable_names)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    inputs = ScoreInputs(M, M, [(x, y)], nn.CrossEntropyLoss())
    scores = get_criterion("l1")(model, structure.groups, inputs)
    budgets = [
        Budget(clamp_keep(explicit_keep(g.num_units, RATIO, 1), g.num_units, 1), g.num_units, RATIO)
        for g in structure.groups
    ]
    alive = {g.name: torch.ones(g.num_units, dtype=torch.bool) for g in structure.groups}
    keep = select_units(
        structure.groups,
        scores,
        alive,
        budgets,
        sorting="layer",
        min_units=1,
        generator=torch.Generator().manual_seed(0),
    )
    R = mk.from_units(model, structure, keep, M)
    mk.MaskEnforcer(model, R).apply()
    return keep


@pytest.mark.parametrize("name", _names())
def test_prune_then_export_matches_the_masked_model(name: str) -> None:
    case = _case(name)
    torch.manual_seed(0)
    model = create_model(
        name, num_classes=10, in_chans=case.in_chans, img_size=case.img_size
    ).eval()
    _randomise_norms(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, case.in_chans, case.img_size, case.img_size, generator=gen)
    dense_params = count_params(model)

    # the prunable units: heads and neurons of every block, or the filters of the convs
    structure = find_structure(model, target="both", example_input=x)
    assert structure.groups, f"{name} has no prunable units"
    if structure.by_kind(HEAD.name):
        assert structure.kinds == [HEAD.name, NEURON.name]
        assert len(structure.by_kind(HEAD.name)) == len(structure.by_kind(NEURON.name))
    else:
        assert structure.kinds == [FILTER.name]
        assert any(g.removable for g in structure.groups), "no filter an export can remove"

    # one prune step: the units left out are zero in every slice they own
    keep = _prune_once(model, structure, x)
    for g in structure.groups:
        assert torch.equal(zero_units(model, g), ~keep[g.name]), g.name
        assert int(keep[g.name].sum()) < g.num_units or g.num_units == 1, g.name

    # the export removes them and computes the same outputs (it also checks, atol 1e-4)
    result = export_model(model, structure, "cpu", example=x)
    with torch.no_grad():
        masked, exported = model(x), result.model(x)
    assert exported.shape == masked.shape == (4, 10)
    assert torch.allclose(exported, masked, atol=1e-4, rtol=1e-4)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert count_params(result.model) < dense_params
    for layer in result.layers:  # removable layers lose exactly the masked units
        group = next(g for g in structure.groups if g.name == layer.name)
        kept = int(keep[group.name].sum())
        assert layer.kept == (kept if layer.zero_kept_coupled == 0 else group.num_units)
    for g in structure.by_kind(HEAD.name):
        assert result.num_heads[g.name] == int(keep[g.name].sum())
