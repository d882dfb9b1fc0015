"""The unit kinds are declared once (`rsst_tune.units`) and every place agrees with them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from rsst_tune.config import TrialConfig
from rsst_tune.models import create_model
from rsst_tune.pruning import slicing
from rsst_tune.pruning.structure import find_structure, is_attention
from rsst_tune.results import UNIT_FIELDS, PruneStats, StateResult
from rsst_tune.units import (
    FILTER,
    HEAD,
    KINDS,
    NEURON,
    REPORT_NAMES,
    TARGETS,
    UNIT_KINDS,
    prunes,
    unit_kind,
)


def test_the_names_of_each_kind() -> None:
    assert KINDS == ("head", "neuron", "filter")
    assert REPORT_NAMES == UNIT_FIELDS == ("heads", "neurons", "filters")
    assert [(k.ratio, k.ratios, k.target) for k in UNIT_KINDS] == [
        ("head_ratio", "head_ratios", "head"),
        ("mlp_ratio", "mlp_ratios", "mlp"),
        ("filter_ratio", "filter_ratios", None),
    ]
    assert TARGETS == ("head", "mlp", "both")
    assert all(unit_kind(k.name) is k for k in UNIT_KINDS)
    with pytest.raises(KeyError, match="unknown unit kind 'mlp'"):
        unit_kind("mlp")  # the target word, not the kind


def test_every_named_field_exists() -> None:
    config = set(TrialConfig.field_names())
    results = set(StateResult.keys())
    stats = {f.name for f in dataclasses.fields(PruneStats)}
    for k in UNIT_KINDS:
        assert {k.ratio, k.ratios} <= config
        assert {k.report, k.per_layer, k.effective} <= results
        assert k.effective in stats
    target = next(f for f in dataclasses.fields(TrialConfig) if f.name == "target")
    assert target.metadata["choices"] == TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_the_structure_finds_the_kinds_a_target_prunes(target: str) -> None:
    vit = create_model("vit_digits", num_classes=10, in_chans=1, img_size=8)
    kinds = find_structure(vit, target=target).kinds
    assert kinds == [k.name for k in (HEAD, NEURON) if prunes(target, k)]
    cnn = create_model("resnet20", num_classes=10)
    assert find_structure(cnn, target=target).kinds == [FILTER.name]  # whatever the target


class _NoProjAttention(nn.Module):
    """qkv and num_heads, but no `proj` linear: its heads own no input columns."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Identity()
        self.num_heads = 2


def test_one_attention_test_for_the_structure_and_the_export() -> None:
    vit = create_model("vit_digits", num_classes=10, in_chans=1, img_size=8)
    attn = vit.get_submodule("blocks.0.attn")
    assert is_attention(attn)
    assert not is_attention(_NoProjAttention()) and not is_attention(nn.Linear(2, 2))
    assert slicing.is_attention is is_attention
    # the export lists the heads of exactly the attention blocks the structure prunes
    structure = find_structure(vit, target="both")
    result = slicing.export_model(vit, structure, "cpu", example=torch.zeros(2, 1, 8, 8))
    assert set(result.num_heads) == {g.name for g in structure.groups if g.kind == HEAD.name}
