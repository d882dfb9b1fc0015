"""Mask sets: boolean tensors keyed by parameter name (docs/methods.md §1).

A `Masks` value is a plain `dict[str, Tensor]` of bool tensors. Every operation here returns
new tensors (masks are never aliased with weights or with each other); only `MaskEnforcer`
writes, and it writes the model's parameters, in one fused op per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from rsst_tune.pruning.structure import Structure

Masks = dict[str, Tensor]


def full_masks(model: nn.Module, names: Iterable[str]) -> Masks:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def clone(masks: Mapping[str, Tensor]) -> Masks:
    return {n: m.clone() for n, m in masks.items()}


def union(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Masks:
    return {n: a[n] | b[n] for n in a}


def minus(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Masks:
    """a ∧ ¬b, dropping names whose result is empty."""
    out = {n: a[n] & ~b[n] for n in a}
    return {n: m for n, m in out.items() if bool(m.any())}


def count(masks: Mapping[str, Tensor], names: Iterable[str]) -> tuple[int, int]:
    """(kept, total) over the given names."""
    kept = total = 0
    for n in names:
        kept += int(masks[n].sum())
        total += masks[n].numel()
    return kept, total


def density(masks: Mapping[str, Tensor], names: Iterable[str]) -> float:
    kept, total = count(masks, names)
    return kept / total if total else 1.0


def from_units(
    model: nn.Module, structure: Structure, units: Mapping[str, Tensor], base: Mapping[str, Tensor]
) -> Masks:
    """The structured mask R: every member of a kept unit 1, of a removed unit 0.

    Maskable parameters of groups absent from `units` keep `base`.
    """
    params = dict(model.named_parameters())
    out = clone(base)
    for group in structure.groups:
        if group.name not in units:
            continue
        keep = units[group.name]
        for member in group.members:
            shape = params[member.param].shape
            out[member.param] = member.expand(keep, shape).clone()
    return out


def to_cpu(masks: Mapping[str, Tensor]) -> Masks:
    """A CPU copy of any name → tensor dict (masks, state dicts), never aliasing the input."""
    return {n: m.detach().to("cpu", copy=True) for n, m in masks.items()}


def to_device(masks: Mapping[str, Tensor], device: torch.device) -> Masks:
    return {n: m.to(device, copy=True) for n, m in masks.items()}


class MaskEnforcer:
    """Applies a mask set to the model in place: one fused multiply over all masked params."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        params = dict(model.named_parameters())
        names = [n for n, m in masks.items() if not bool(m.all())]
        self._params = [params[n] for n in names]
        self._masks = [masks[n].to(dtype=params[n].dtype) for n in names]

    @torch.no_grad()
    def apply(self) -> None:
        if self._params:
            torch._foreach_mul_(self._params, self._masks)  # type: ignore[arg-type]
