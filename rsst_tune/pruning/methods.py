"""The pruning methods as policies behind a registry (ALGORITHMS.md §2.4.3).

Contract: `policy(U, R) -> (next M, next T)`. `U` is the unstructured mask of this state, `R`
the structured one (None for unstructured methods); `T` is the RSST target set, the weights the
regularizer pulls to zero in the next state. A user adds a method with `@register_method`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from rsst_tune.errors import unknown_choice
from rsst_tune.pruning import masks as mk

MaskMap = Mapping[str, Tensor]
Policy = Callable[[MaskMap, MaskMap], tuple[mk.Masks, mk.Masks]]


@dataclass(frozen=True)
class Method:
    name: str
    structured: bool  # needs R (a criterion and unit budgets)
    regularized: bool  # trains with the RSST pull on T
    policy: Policy


_METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, structured: bool, regularized: bool = False
) -> Callable[[Policy], Policy]:
    def deco(fn: Policy) -> Policy:
        _METHODS[name] = Method(name, structured, regularized, fn)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise unknown_choice("method", name, _METHODS)
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)


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
