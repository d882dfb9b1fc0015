"""A config's MACs before training, and a model's prunable layers without data.

Because explicit budgets (`rsst_tune.unit_budget`) do not depend on the trained weights, the
units a config keeps at any state, and so its params and MACs (`rsst_tune.pruning.cost`),
are known before training: `planned_macs_frac(cfg)` is the MAC fraction the last state will
reach. `MacsBudget` turns that into an Optuna constraint value (`macs_frac − budget`,
feasible when ≤ 0).

`layer_counts` and `conv_layers` describe a model's layers without data, for spaces that
search one ratio per layer (`search_spaces/vit_layerwise.py`, `resnet_layerwise.py`).

This module builds models (the trial's own `trial_setup.build_model`) and loads a dataset's
spec, so it sits above `trial_setup`; `rsst_tune.pruning` only sees the built modules.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.pruning.structure import Structure, find_structure
from rsst_tune.unit_budget import planned_alive
from rsst_tune.units import FILTER

if TYPE_CHECKING:
    from rsst_tune.pruning.cost import CostModel

# ---------------------------------------------------------------------- analytic MACs
_ANALYTIC: dict[tuple[Any, ...], tuple[Structure, Structure, CostModel]] = {}


def _analytic_key(cfg: TrialConfig) -> tuple[Any, ...]:
    return (cfg.model, cfg.dataset, cfg.data_dir, cfg.img_size, cfg.prune_stem, cfg.target)


def analytic_model(cfg: TrialConfig) -> tuple[Structure, Structure, CostModel]:
    """(every unit group, the pruned groups, the cost model) of the config's model at its
    input, built once per model/dataset/size on the CPU from random weights (costs do not
    depend on weights). The dataset is loaded for its spec only (classes, channels, size)."""
    key = _analytic_key(cfg)
    if key not in _ANALYTIC:
        # imported here: `import rsst_tune.macs_plan` (a search space's) stays light
        import torch

        from rsst_tune.data import load_dataset
        from rsst_tune.models import default_img_size
        from rsst_tune.pruning.cost import CostModel
        from rsst_tune.pruning.structure import find_structure
        from rsst_tune.trial_setup import build_model

        asked = cfg.img_size or default_img_size(cfg.model)
        bundle = load_dataset(
            cfg.dataset,
            data_dir=cfg.data_dir,
            val_size=cfg.val_size,
            download=cfg.download,
            img_size=asked,
        )
        size = asked or bundle.spec.img_size
        plain = cfg.replace(pretrained=False, pretrained_file=None)
        with torch.random.fork_rng(devices=[]):
            model, spec = build_model(plain, bundle.spec, size)
        example = torch.zeros(2, spec.in_chans, size, size)
        every = find_structure(
            model, target="both", prune_stem=cfg.prune_stem, example_input=example
        )
        pruned = find_structure(
            model, target=cfg.target, prune_stem=cfg.prune_stem, example_input=example
        )
        _ANALYTIC[key] = (every, pruned, CostModel(model, every, example))
    return _ANALYTIC[key]


def planned_macs_frac(cfg: TrialConfig, state: int | None = None) -> float | None:
    """The MAC fraction (of the dense model) the config reaches at `state` (default: its last
    state), computed before any training; None when a pruned kind is density-matched or the
    method is unstructured (the units kept then depend on the trained weights).

    Exact with `sorting` layer; with `sorting` global the kind's total is the same and only
    its spread over layers differs, which is exact for ViTs (every block costs the same)."""
    if not cfg.method_info.structured:
        return None
    every, pruned, cost = analytic_model(cfg)
    s = cfg.pruning_times - 1 if state is None else state
    alive = planned_alive(cfg, every, pruned, s)
    if alive is None:
        return None
    return cost.fractions(alive)[2]


class MacsBudget:
    """An Optuna constraint for a space's proposals: `macs_frac − budget` at the last state
    (feasible when ≤ 0), for the searched fields of a proposal on top of `base`.

    Picklable (Ray saves the searcher): the analytic models are rebuilt after unpickling.
    Searchers pickled before it moved here name `rsst_tune.pruning.budget.MacsBudget`, which
    still resolves to this class."""

    def __init__(self, base: Mapping[str, Any], budget: float) -> None:
        self.base = dict(base)
        self.budget = float(budget)

    def macs_frac(self, params: Mapping[str, Any]) -> float:
        cfg = TrialConfig.from_dict({**self.base, **params})
        frac = planned_macs_frac(cfg)
        if frac is None:
            raise ConfigError(
                "--macs-budget needs every pruned kind to have explicit ratios (head_ratio(s), "
                "mlp_ratio(s), filter_ratio(s)) and a structured method; the space proposed "
                f"{dict(params)}"
            )
        return frac

    def __call__(self, params: Mapping[str, Any]) -> float:
        return self.macs_frac(params) - self.budget


class LatencyBudget:
    """An Optuna constraint like `MacsBudget`: (upper ms − budget) / budget at the last
    state, for a proposal's searched fields on top of `base`, where upper is the latency
    table's prediction raised by its calibration margin (`LatencyTable.upper_ms`: the ticket
    must measure within the budget, not only be predicted within it); with `macs_budget`, the
    larger of the two (both must hold)."""

    def __init__(
        self,
        base: Mapping[str, Any],
        budget_ms: float,
        table_path: str,
        macs_budget: float | None = None,
    ) -> None:
        from rsst_tune.latency_model import LatencyTable

        self.base = dict(base)
        self.budget_ms = float(budget_ms)
        self.table_path = table_path
        self.macs = None if macs_budget is None else MacsBudget(base, macs_budget)
        # read now and pickled with the searcher: a resumed (or moved) sweep needs no file
        self._table = LatencyTable.load(table_path)

    def latency_ms(self, params: Mapping[str, Any]) -> float:
        """The proposal's predicted latency at its last state."""
        return float(self._table.predict_ms(self._alive(params)))

    def upper_ms(self, params: Mapping[str, Any]) -> float:
        """The predicted latency raised by the table's margin: what the budget holds."""
        return float(self._table.upper_ms(self._alive(params)))

    def _alive(self, params: Mapping[str, Any]) -> dict[str, int]:
        cfg = TrialConfig.from_dict({**self.base, **params})
        alive = None
        if cfg.method_info.structured:
            every, pruned, _ = analytic_model(cfg)
            alive = planned_alive(cfg, every, pruned, cfg.pruning_times - 1)
        if alive is None:
            raise ConfigError(
                "--latency-budget needs every pruned kind to have explicit ratios (head_ratio(s), "
                "mlp_ratio(s), filter_ratio(s)) and a structured method; the space proposed "
                f"{dict(params)}"
            )
        return alive

    def __call__(self, params: Mapping[str, Any]) -> float:
        value = (self.upper_ms(params) - self.budget_ms) / self.budget_ms
        return value if self.macs is None else max(value, self.macs(params))


# ---------------------------------------------------------------------- layers, without data
@functools.lru_cache(maxsize=64)
def _default_structure(model: str, img_size: int | None, prune_stem: bool) -> Structure:
    """Every unit group of a model built at its registered defaults on the CPU (random
    weights), with the couplings a trace finds (which filters an export can remove)."""
    import torch
    from torch import nn

    from rsst_tune.models import create_model

    with torch.random.fork_rng(devices=[]):
        built = create_model(model, img_size=img_size)
    first = next((m for m in built.modules() if isinstance(m, nn.Conv2d)), None)
    chans = first.in_channels if first is not None else 3
    size = img_size or 32  # the trace reads no shapes; the input only has to be valid
    example = torch.zeros(1, chans, size, size)
    return find_structure(built, target="both", prune_stem=prune_stem, example_input=example)


def layer_counts(
    model: str, img_size: int | None = None, prune_stem: bool = False
) -> dict[str, int]:
    """How many layers of each unit kind a model has (ViT: blocks for `head` and `neuron`;
    CNN: prunable convs for `filter`), from the model built at its registered defaults on
    the CPU: what a space that searches one ratio per layer needs, without any data."""
    structure = _default_structure(model, img_size, prune_stem)
    return {kind: len(structure.by_kind(kind)) for kind in structure.kinds}


@dataclass(frozen=True)
class ConvLayer:
    """One prunable conv of a CNN, as a space that searches `filter_ratios` sees it."""

    name: str  # module path, e.g. "layer1.0.conv1"
    filters: int
    removable: bool  # an export can slice its filters out (no residual add keeps them)


def conv_layers(
    model: str, img_size: int | None = None, prune_stem: bool = False
) -> tuple[ConvLayer, ...]:
    """The prunable convs of a CNN in model order, the order of `filter_ratios` (empty for a
    ViT). Only removable convs change the params and MACs of a ticket (`cost.CostModel`):
    the filters of a conv whose channels reach a residual add are masked but kept whole."""
    structure = _default_structure(model, img_size, prune_stem)
    convs = structure.by_kind(FILTER.name)
    return tuple(ConvLayer(g.name, g.num_units, g.removable) for g in convs)
