"""A config's unit budgets: each layer's explicit ratio, and the units it keeps at a state.

docs/methods.md §3.2: an explicit ratio r keeps round(C · (1 − r)^p) of a layer's C units after
p prunes, clamped to [min_units, alive] (`rsst_tune.pruning.select.planned_keep`). The ratio
is the kind's global one (`head_ratio`, `mlp_ratio`, `filter_ratio`) or the layer's own
(`head_ratios`, `mlp_ratios`, `filter_ratios`: one per block or prunable conv, in model
order), compounding the same way.

This module reads a `TrialConfig` and a model's `Structure`; it builds nothing.
`trial_setup` checks a config's ratios against its model here; `rsst_tune.macs_plan` turns
the units kept into MACs before training.
"""

from __future__ import annotations

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.pruning.select import planned_keep, round_to_for
from rsst_tune.pruning.structure import Structure
from rsst_tune.units import UNIT_KINDS, unit_kind


def layer_ratios(cfg: TrialConfig, structure: Structure) -> dict[str, float | None]:
    """Each unit group's explicit ratio (None: density-matched to U), by group name.

    Per-layer ratios must give one ratio per layer of their kind in `structure` (which holds
    every kind the model has): a one-line ConfigError names the expected length.
    """
    out: dict[str, float | None] = {}
    for kind in structure.kinds:
        groups = structure.by_kind(kind)
        many = cfg.ratios_for(kind)
        if many is not None and len(many) != len(groups):
            unit = unit_kind(kind)
            raise ConfigError(
                f"{unit.ratios} must have {len(groups)} ratios for {cfg.model} (one per "
                f"prunable {unit.layer}: {len(groups)} {unit.layers}), got {len(many)}"
            )
        for i, g in enumerate(groups):
            out[g.name] = many[i] if many is not None else cfg.ratio_for(kind)
    return out


def check_layer_ratios(cfg: TrialConfig, structure: Structure) -> None:
    """Per-layer ratios given for a kind the model does not have are an error too."""
    for unit in UNIT_KINDS:
        if cfg.ratios_for(unit.name) is not None and not structure.by_kind(unit.name):
            there = [unit_kind(k) for k in structure.kinds]
            raise ConfigError(
                f"{unit.ratios} is for {unit.layers}, and {cfg.model} has none; "
                f"use {', '.join(k.ratios for k in there)} "
                f"or {', '.join(k.ratio for k in there)}"
            )
    layer_ratios(cfg, structure)


def planned_alive(
    cfg: TrialConfig, structure: Structure, pruned: Structure, prunes: int
) -> dict[str, int] | None:
    """Units each group of `structure` keeps after `prunes` prunes, when every group that
    `pruned` prunes has an explicit ratio (None otherwise: density-matched budgets depend on
    U, known only after training). Groups that are not pruned keep all their units. The
    per-state clamp to [min_units, alive] is applied state by state, as the loop does."""
    ratios = layer_ratios(cfg, structure)
    pruned_names = {g.name for g in pruned.groups}
    alive = {g.name: g.num_units for g in structure.groups}
    for g in structure.groups:
        if g.name not in pruned_names:
            continue
        ratio = ratios[g.name]
        if ratio is None:
            return None
        snap = round_to_for(g.kind, cfg.round_to)
        alive[g.name] = planned_keep(g.num_units, ratio, prunes, cfg.min_units, snap)
    return alive
