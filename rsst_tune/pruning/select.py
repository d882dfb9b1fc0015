"""Choosing what to keep: global magnitude pruning (U) and unit budgets (R).

docs/methods.md §2.4.1 (U) and §3.2–3.3 (how many units a layer keeps, layer or global
ranking, the structured mask). Pure functions of tensors and a seeded generator; nothing here
touches the model's weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rsst_tune.pruning.structure import UnitGroup


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def ranked(scores: Tensor, generator: torch.Generator) -> Tensor:
    """Indices by descending score; ties in a seeded random order, never index order."""
    perm = torch.randperm(scores.numel(), generator=generator, device="cpu").to(scores.device)
    order = torch.argsort(scores[perm], descending=True, stable=True)
    return perm[order]


def magnitude_prune(
    weights: Mapping[str, Tensor],
    M: Mapping[str, Tensor],
    rate: float,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """U: drop the fraction `rate` of the weights M keeps, globally, by |w| (§2.4.1)."""
    names = list(weights)
    kept_vals = [weights[n].detach().abs().float()[M[n]] for n in names]
    values = torch.cat(kept_vals) if kept_vals else torch.zeros(0)
    n_remove = round_half_up(rate * values.numel())
    drop = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if n_remove > 0:
        order = ranked(-values, generator)  # ascending |w|, ties shuffled
        drop[order[:n_remove]] = True
    out: dict[str, Tensor] = {}
    offset = 0
    for n, vals in zip(names, kept_vals, strict=True):
        mask = M[n].clone()
        mask[M[n]] = ~drop[offset : offset + vals.numel()]
        offset += vals.numel()
        out[n] = mask
    return out


@dataclass(frozen=True)
class Budget:
    """Units a group keeps this state, and why."""

    keep: int
    alive: int
    asked_ratio: float | None  # explicit ratio, None when density-matched


def explicit_keep(num_units: int, ratio: float, prunes: int) -> int:
    """k = round(C · (1 − ratio)^p): explicit ratios compound across states (§3.2)."""
    return round_half_up(num_units * (1.0 - ratio) ** prunes)


def density_matched_keep(kept_weights: int, weights_per_unit: int, alive: int, fill: float) -> int:
    """Refill's rule: k = round(|U|/W + (C − |U|/W) · fillback_rate) (§3.2)."""
    base = kept_weights / weights_per_unit
    return round_half_up(base + (alive - base) * fill)


def clamp_keep(k: int, alive: int, min_units: int, round_to: int = 1) -> int:
    """k clamped to [min_units, alive] (§3.2). With `round_to` r > 1 (neurons and filters:
    the caller passes 1 for heads) k first becomes the multiple of r nearest to it (half up),
    and the floor is max(min_units, r) when at least r units are alive."""
    low = min_units
    if round_to > 1:
        k = round_to * round_half_up(k / round_to)
        if alive >= round_to:
            low = max(min_units, round_to)
    return max(min(low, alive), min(k, alive))


def planned_keep(
    num_units: int, ratio: float, prunes: int, min_units: int, round_to: int = 1
) -> int:
    """Units a layer of `num_units` with an explicit `ratio` keeps after `prunes` prunes:
    `explicit_keep` of each prune, snapped and clamped (`clamp_keep`) state by state, as the
    loop does (§3.2); known before training, since it does not depend on the weights."""
    alive = num_units
    for p in range(1, prunes + 1):
        alive = clamp_keep(explicit_keep(num_units, ratio, p), alive, min_units, round_to)
    return alive


def round_to_for(kind: str, round_to: int) -> int:
    """The multiple a unit kind's counts snap to: `round_to` for neurons and filters, 1 for
    heads (a head is never split)."""
    return 1 if kind == "head" else round_to


def select_units(
    groups: Sequence[UnitGroup],
    scores: Sequence[Tensor],
    alive: Mapping[str, Tensor],
    budgets: Sequence[Budget],
    *,
    sorting: str,
    min_units: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """The kept units of every group: top-k by score among alive units (§3.2 sorting)."""
    keep: dict[str, Tensor] = {}
    if sorting == "layer":
        for g, s, b in zip(groups, scores, budgets, strict=True):
            keep[g.name] = _top_alive(s, alive[g.name], b.keep, generator)
        return keep
    # global: rank units of one kind together on scores normalised by the layer's mean score
    for kind in dict.fromkeys(g.kind for g in groups):
        idx = [i for i, g in enumerate(groups) if g.kind == kind]
        total = sum(budgets[i].keep for i in idx)
        floors: list[Tensor] = []
        normed: list[Tensor] = []
        for i in idx:
            g, a = groups[i], alive[groups[i].name]
            s = scores[i].float()
            mean = s[a].mean() if bool(a.any()) else s.new_tensor(1.0)
            n = s / mean.clamp_min(torch.finfo(s.dtype).tiny) if bool(mean > 0) else s.clone()
            floor_k = min(min_units, int(a.sum()))
            floors.append(_top_alive(n, a, floor_k, generator))
            normed.append(n)
        left = total - sum(int(f.sum()) for f in floors)
        cand = torch.cat(
            [
                torch.where(a & ~f, n, torch.full_like(n, -math.inf))
                for n, a, f in zip(
                    normed, (alive[groups[i].name] for i in idx), floors, strict=True
                )
            ]
        )
        chosen = torch.zeros_like(cand, dtype=torch.bool)
        if left > 0:
            order = ranked(cand, generator)
            order = order[torch.isfinite(cand[order])][:left]
            chosen[order] = True
        offset = 0
        for i, f in zip(idx, floors, strict=True):
            c = groups[i].num_units
            keep[groups[i].name] = f | chosen[offset : offset + c]
            offset += c
    return keep


def _top_alive(scores: Tensor, alive: Tensor, k: int, generator: torch.Generator) -> Tensor:
    masked = torch.where(
        alive, scores.float(), torch.full_like(scores, -math.inf, dtype=torch.float)
    )
    keep = torch.zeros_like(alive)
    if k > 0:
        order = ranked(masked, generator)[:k]
        keep[order] = True
    return keep & alive
