"""The pruning methods as policies behind a registry (docs/methods.md §2.4.3).

Contract: `policy(U, R) -> (next M, next T)`. `U` is the unstructured mask of this state, `R`
the structured one (None for unstructured methods); `T` is the RSST target set, the weights the
regularizer pulls to zero in the next state. A user adds a method with `@register_method`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from rsst_tune.pruning import masks as mk
from rsst_tune.registry import Registry

MaskMap = Mapping[str, Tensor]
Policy = Callable[[MaskMap, MaskMap], tuple[mk.Masks, mk.Masks]]


@dataclass(frozen=True)
class Method:
    """What the loop needs to know about a method, beside its mask policy."""

    name: str
    structured: bool  # needs R (a criterion and unit budgets)
    regularized: bool  # trains with the RSST pull on T
    policy: Policy
    # `rate` when the config gives none and not every pruned kind has an explicit ratio
    # (docs/methods.md §2.4.1; `imp` defaults to 0.2). None: the method needs `rate` given.
    default_rate: float | None = 0.2


METHODS: Registry[Method] = Registry("method", origin=lambda m: m.policy)


def register_method(
    name: str,
    *aliases: str,
    structured: bool,
    regularized: bool = False,
    default_rate: float | None = 0.2,
    override: bool = False,
) -> Callable[[Policy], Policy]:
    """Decorator: register a mask policy `policy(U, R) -> (next M, next T)` as a method."""

    def deco(fn: Policy) -> Policy:
        method = Method(name, structured, regularized, fn, default_rate)
        METHODS.add(name, method, *aliases, override=override)
        return fn

    return deco


def get_method(name: str) -> Method:
    return METHODS.get(name)


@register_method("imp", structured=False)
def imp(U: MaskMap, R: MaskMap) -> tuple[mk.Masks, mk.Masks]:
    """Unstructured lottery ticket: M ← U."""
    return mk.clone(U), {}


@register_method("refill", structured=True)
def refill(U: MaskMap, R: MaskMap) -> tuple[mk.Masks, mk.Masks]:
    """Refill: M ← R (kept units come back whole, removed units go at once)."""
    return mk.clone(R), {}


@register_method("rsst", structured=True, regularized=True)
def rsst(U: MaskMap, R: MaskMap) -> tuple[mk.Masks, mk.Masks]:
    """RSST: M ← U ∨ R, T = U ∧ ¬R (removed units' surviving weights, biases and norms)."""
    return mk.union(U, R), mk.minus(U, R)
