"""Unit scores (docs/methods.md §3.1). A criterion only scores; it never edits masks.

Contract: `criterion(model, groups, inputs) -> list[Tensor]`, one float vector of length
`group.num_units` per group, higher = more important. Add one with `@register_criterion`.
Activation criteria hook each unit's own output: a head's slice of the input of `proj`, a
neuron's output after the MLP activation (the input of `fc2`), a filter's conv output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst_tune.pruning.structure import UnitGroup
from rsst_tune.registry import Registry


@dataclass(frozen=True)
class ScoreInputs:
    """What a criterion may read: the masks and a few training batches."""

    U: Mapping[str, Tensor]
    M: Mapping[str, Tensor]
    batches: Sequence[tuple[Tensor, Tensor]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]


Criterion = Callable[[nn.Module, Sequence[UnitGroup], ScoreInputs], list[Tensor]]
CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(
    name: str, *aliases: str, override: bool = False
) -> Callable[[Criterion], Criterion]:
    """Decorator: register a criterion (`criterion(model, groups, inputs) -> list[Tensor]`)."""
    return CRITERIA.register(name, *aliases, override=override)


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)


def list_criteria() -> list[str]:
    return CRITERIA.names()


# --------------------------------------------------------------------------- weight criteria
@register_criterion("remain")
def remain(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """Number of the unit's weights that U keeps."""
    return [
        sum(m.per_unit(inputs.U[m.param].float()) for m in g.weight_members)  # type: ignore[misc]
        for g in groups
    ]


@register_criterion("magnitude")
@torch.no_grad()
def magnitude(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """Σ|w| over the unit's weights (not its biases), masked by M."""
    params = dict(model.named_parameters())
    return [
        sum(  # type: ignore[misc]
            m.per_unit(params[m.param].detach().abs().float() * inputs.M[m.param])
            for m in g.weight_members
        )
        for g in groups
    ]


# --------------------------------------------------------------------------- activation criteria
def _activation_scores(
    model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs, stat: str
) -> list[Tensor]:
    modules = dict(model.named_modules())
    captured: dict[str, Tensor] = {}
    handles = []

    def make_hook(group: UnitGroup) -> Callable[..., None]:
        def keep(act: Tensor) -> None:
            if stat == "saliency":
                act.retain_grad()
            captured[group.name] = act

        if group.act_is_input:
            return lambda _m, args: keep(args[0])
        return lambda _m, _args, out: keep(out)

    for g in groups:
        mod = modules[g.act_module]
        hook = make_hook(g)
        if g.act_is_input:
            handles.append(mod.register_forward_pre_hook(hook))
        else:
            handles.append(mod.register_forward_hook(hook))

    device = next(model.parameters()).device
    sums = [torch.zeros(g.num_units, device=device, dtype=torch.float64) for g in groups]
    rows = [0 for _ in groups]
    was_training = model.training
    model.eval()
    try:
        for x, y in inputs.batches:
            if stat == "saliency":
                with torch.enable_grad():
                    model.zero_grad(set_to_none=True)
                    loss = inputs.loss_fn(model(x), y)
                    loss.backward()
            else:
                with torch.no_grad():
                    model(x)
            for i, g in enumerate(groups):
                act = captured[g.name]
                a = g.activation_matrix(act.detach().float())
                if stat == "l1":
                    contrib = a.abs().sum(0)
                elif stat == "l2":
                    contrib = a.pow(2).sum(0)
                else:
                    grad = act.grad
                    assert grad is not None, f"no gradient reached {g.act_module}"
                    contrib = (a * g.activation_matrix(grad.float())).abs().sum(0)
                sums[i] += contrib.double()
                rows[i] += a.shape[0]
            captured.clear()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    means = [(s / max(r, 1)).float() for s, r in zip(sums, rows, strict=True)]
    return [m.sqrt() for m in means] if stat == "l2" else means


@register_criterion("l1")
def l1(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """Mean |a| of the unit's activation."""
    return _activation_scores(model, groups, inputs, "l1")


@register_criterion("l2")
def l2(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """Root mean square of the unit's activation."""
    return _activation_scores(model, groups, inputs, "l2")


@register_criterion("saliency")
def saliency(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """Mean |a · ∂L/∂a| (first-order Taylor), L the training loss."""
    return _activation_scores(model, groups, inputs, "saliency")
