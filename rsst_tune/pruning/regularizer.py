"""The RSST regularizer (docs/methods.md §4): pure λ schedules and the fused gradient pull.

λ(u) is a pure function of progress u ∈ [0, 1] through the state; the only state worth
checkpointing is the step. The pull `grad += λ·w` on the target set T is one fused
`_foreach_addcmul_` per optimizer step over precomputed masks: no Python loop over modules, no
host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from rsst_tune.registry import Registry

Schedule = Callable[[float, float, float], float]  # (u, g, k) -> λ
_E1 = math.e - 1.0

SCHEDULES: Registry[Schedule] = Registry("RST_schedule")


def register_schedule(
    name: str, *aliases: str, override: bool = False
) -> Callable[[Schedule], Schedule]:
    """Decorator: register λ(u, g, k), a pure function with λ(1) = g (docs/methods.md §4)."""
    return SCHEDULES.register(name, *aliases, override=override)


@register_schedule("constant")
def constant(u: float, g: float, k: float) -> float:
    return g


@register_schedule("x")
def linear(u: float, g: float, k: float) -> float:
    return g * u


@register_schedule("x^2")
def quadratic(u: float, g: float, k: float) -> float:
    return g * u**2


@register_schedule("x^3")
def cubic(u: float, g: float, k: float) -> float:
    return g * u**3


@register_schedule("exp")
def exponential(u: float, g: float, k: float) -> float:
    return g * (math.exp(u) - 1.0) / _E1


@register_schedule("exp_custom_exponents")
def exp_custom(u: float, g: float, k: float) -> float:
    return g * (math.exp(u**k) - 1.0) / _E1


def lam(schedule: str, u: float, g: float, k: float = 1.0) -> float:
    """λ at progress u (clamped to [0, 1]) for ceiling g and exponent k."""
    return SCHEDULES.get(schedule)(min(max(u, 0.0), 1.0), g, k)


class TargetPull:
    """grad(w) += λ · w for w in T, as one fused op over the parameters T touches."""

    def __init__(self, model: nn.Module, targets: Mapping[str, Tensor]) -> None:
        params = dict(model.named_parameters())
        names = [n for n, t in targets.items() if bool(t.any())]
        self._params = [params[n] for n in names]
        self._masks = [targets[n].to(dtype=params[n].dtype) for n in names]

    def __bool__(self) -> bool:
        return bool(self._params)

    @torch.no_grad()
    def apply(self, lam_value: float) -> None:
        if not self._params or lam_value == 0.0:
            return
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):  # a parameter the loss did not reach
            for p in self._params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in self._params]
        torch._foreach_addcmul_(grads, self._params, self._masks, value=lam_value)  # type: ignore[arg-type]

    @torch.no_grad()
    def norm(self) -> float:
        """‖T‖: the L2 norm of the weights in the target set."""
        if not self._params:
            return 0.0
        sq = torch.stack(
            [(p * m).pow(2).sum() for p, m in zip(self._params, self._masks, strict=True)]
        )
        return float(sq.sum().sqrt())
