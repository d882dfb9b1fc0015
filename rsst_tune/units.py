"""The unit kinds a model is pruned by, declared once (docs/methods.md §1).

A unit kind has several names, one per place that speaks of it:

    kind      config ratio   per-layer ratios  results    target  one layer
    head      head_ratio     head_ratios       heads      head    block
    neuron    mlp_ratio      mlp_ratios        neurons    mlp     block
    filter    filter_ratio   filter_ratios     filters    -       conv

`kind` is what the structure calls it (`pruning.structure.UnitGroup.kind`); `ratio` and
`ratios` are the `TrialConfig` fields of its explicit budgets; `report` is its field in a
state's results (`StateResult.heads`, `.heads_per_layer`, ...) and the word the report uses;
`target` is the `TrialConfig.target` word that prunes it on a ViT (`both` prunes every ViT
kind; a CNN's filters are pruned whatever the target).

Plain data, no imports: the pruning package, the config and the results all read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitKind:
    """One kind of prunable unit, under each of its names."""

    name: str  # the structure's word: UnitGroup.kind
    ratio: str  # TrialConfig field: the kind's ratio for every layer
    ratios: str  # TrialConfig field: one ratio per layer
    report: str  # StateResult field (units alive), also `{report}_per_layer`
    target: str | None  # TrialConfig.target word that prunes it (None: always pruned)
    layer: str  # what one layer of it is, in messages ("block", "conv")
    layers: str  # the same, plural and spelled out ("transformer blocks", "convs")

    @property
    def per_layer(self) -> str:
        """The StateResult field of the units alive per layer."""
        return f"{self.report}_per_layer"

    @property
    def effective(self) -> str:
        """The PruneStats/StateResult field of the fraction of alive units a prune removed."""
        return f"{self.ratio}_effective"


HEAD = UnitKind("head", "head_ratio", "head_ratios", "heads", "head", "block", "transformer blocks")
NEURON = UnitKind(
    "neuron", "mlp_ratio", "mlp_ratios", "neurons", "mlp", "block", "transformer blocks"
)
FILTER = UnitKind("filter", "filter_ratio", "filter_ratios", "filters", None, "conv", "convs")

UNIT_KINDS = (HEAD, NEURON, FILTER)  # in model order: a ViT's heads before its neurons
KINDS = tuple(k.name for k in UNIT_KINDS)  # ("head", "neuron", "filter")
REPORT_NAMES = tuple(k.report for k in UNIT_KINDS)  # ("heads", "neurons", "filters")
BOTH = "both"  # the target that prunes every ViT kind
TARGETS = (*(k.target for k in UNIT_KINDS if k.target is not None), BOTH)  # head, mlp, both

_BY_NAME = {k.name: k for k in UNIT_KINDS}


def unit_kind(name: str) -> UnitKind:
    """The kind named `name` (the structure's word: `head`, `neuron`, `filter`)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown unit kind {name!r}; kinds: {', '.join(KINDS)}") from None


def prunes(target: str, kind: UnitKind) -> bool:
    """Whether `TrialConfig.target` `target` prunes a ViT's units of `kind`."""
    return target in (kind.target, BOTH)
