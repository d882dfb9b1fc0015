"""Trial schedulers by name: a registry like the samplers'.

    SCHEDULERS.get("moasha")(SchedulerSpec(...))   # a Ray Tune TrialScheduler

`moasha` (the default of most spaces) stops trials outside the top 1/η of a rung state by
Pareto rank of the objectives (`rsst_tune.tune.search.moasha`); `asha` is Ray's ASHA on the
first objective; `fifo` runs every trial to its last state. A user's scheduler is one
registered factory taking a `SchedulerSpec` (`register_scheduler`); `--scheduler NAME` then
accepts it (`--grace`/`--reduction-factor` apply to moasha and asha only). Importing this
module does not import Ray; a factory imports it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rsst_tune.registry import Registry
from rsst_tune.tune.search.moasha import make_scheduler


@dataclass(frozen=True)
class SchedulerSpec:
    """What a scheduler of a sweep is built from."""

    metrics: tuple[str, ...]  # the objectives' keys, the first is the primary one
    modes: tuple[str, ...]  # "max" | "min", one per metric
    states: int  # pruning states of a trial (Ray iteration s + 1 is state s)
    grace: int  # the first rung, a pruning state (halving schedulers)
    reduction_factor: int  # η (halving schedulers)


class SchedulerFactory(Protocol):
    def __call__(self, spec: SchedulerSpec) -> Any:
        """A Ray Tune `TrialScheduler` for the sweep."""
        ...


SCHEDULERS: Registry[SchedulerFactory] = Registry("scheduler")
# the schedulers that stop trials at rungs: --grace and --reduction-factor apply to them
HALVING = ("moasha", "asha")


def register_scheduler(name: str, *aliases: str, override: bool = False) -> Callable[[Any], Any]:
    """Decorator: make a scheduler factory available as `--scheduler NAME`."""
    return SCHEDULERS.register(name, *aliases, override=override)


def scheduler_names() -> tuple[str, ...]:
    """The registered schedulers, the built-in ones first."""
    builtin = ("moasha", "asha", "fifo")
    return (*builtin, *(n for n in SCHEDULERS.names() if n not in builtin))


@register_scheduler("moasha")
def moasha(spec: SchedulerSpec) -> Any:

    return make_scheduler(
        list(spec.metrics),
        list(spec.modes),
        grace=spec.grace,
        reduction_factor=spec.reduction_factor,
        default_last_state=spec.states - 1,
    )


@register_scheduler("asha")
def asha(spec: SchedulerSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # state s is iteration s + 1
        metric=spec.metrics[0],
        mode=spec.modes[0],
        max_t=spec.states,
        grace_period=min(spec.grace + 1, spec.states),
        reduction_factor=spec.reduction_factor,
    )


@register_scheduler("fifo")
def fifo(spec: SchedulerSpec) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()
