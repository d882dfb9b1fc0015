"""Params and MACs of the physically pruned model, counted analytically (docs/methods.md §6).

One hooked forward of the dense model at batch 1 records how many multiply-accumulates each
weight element costs (a Linear weight: once per token; a Conv2d weight: once per output
pixel). A pruned model's cost is then a sum over parameters of their surviving slices, plus
attention's QKᵀ and AV (2 · N² · head_dim per head), which no weight owns. torch-pruning's
counter overstates gains after head removal and torch's flop counter skips CPU SDPA, hence
this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst_tune.pruning.structure import Member, Structure
from rsst_tune.units import HEAD


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int


class CostModel:
    """Dense costs of one model, and the costs of any set of alive units."""

    def __init__(self, model: nn.Module, structure: Structure, example: Tensor) -> None:
        self.structure = structure
        self._numel = {n: p.numel() for n, p in model.named_parameters()}
        self._macs_per_el: dict[str, float] = {}
        self._tokens: dict[str, int] = {}
        modules = dict(model.named_modules())
        head_qkv = {f"{g.name}.qkv": g.name for g in structure.by_kind(HEAD.name)}
        handles = []

        def hook(name: str, mod: nn.Module) -> Callable[..., None]:
            def fn(_m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
                x = args[0]
                if isinstance(mod, nn.Linear):
                    per = x.numel() // x.shape[-1] // x.shape[0]
                    if name in head_qkv:
                        self._tokens[head_qkv[name]] = x.shape[-2] if x.dim() >= 3 else 1
                else:
                    per = out.shape[-1] * out.shape[-2]
                self._macs_per_el[f"{name}.weight"] = float(per)

            return fn

        for name, mod in modules.items():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                handles.append(mod.register_forward_hook(hook(name, mod)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example[:1])
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self.dense = self.cost({g.name: g.num_units for g in structure.groups})

    def cost(self, alive_counts: Mapping[str, int]) -> Cost:
        """Cost with `alive_counts[group]` units left in every removable group."""
        frac: dict[str, float] = {}
        for g in self.structure.groups:
            if not g.removable:
                continue
            keep = alive_counts.get(g.name, g.num_units) / g.num_units
            slices: tuple[Member, ...] = g.members + g.consumers
            for m in slices:
                frac[m.param] = frac.get(m.param, 1.0) * keep
        params = 0.0
        macs = 0.0
        for name, n in self._numel.items():
            f = frac.get(name, 1.0)
            params += n * f
            macs += n * f * self._macs_per_el.get(name, 0.0)
        for g in self.structure.by_kind(HEAD.name):
            tokens = self._tokens.get(g.name, 0)
            heads = alive_counts.get(g.name, g.num_units)
            macs += 2 * tokens * tokens * g.unit_dim * heads
        return Cost(round(params), round(macs))

    def fractions(self, alive_counts: Mapping[str, int]) -> tuple[Cost, float, float]:
        c = self.cost(alive_counts)
        return c, c.params / self.dense.params, c.macs / max(self.dense.macs, 1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_params(model: nn.Module) -> int:
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
