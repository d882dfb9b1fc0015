"""Samplers and schedulers are registries: a user's factory is accepted by name everywhere a
built-in one is (the plan, `--sampler`/`--scheduler`), and an unknown name is one line naming
every choice, registered ones included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from ray.tune.schedulers import FIFOScheduler

from rsst_tune.errors import ConfigError
from rsst_tune.tune.plan import SweepOptions, resolve_plan
from rsst_tune.tune.search.samplers import SAMPLERS, make_sampler, register_sampler
from rsst_tune.tune.search.schedulers import SCHEDULERS, SchedulerSpec, register_scheduler
from rsst_tune.tune.search.schedulers import fifo as builtin_fifo

SEEN: list[SchedulerSpec] = []


@pytest.fixture
def qmc_and_counting_fifo() -> Iterator[None]:
    @register_sampler("qmc")
    def qmc(*, seed: int, num_samples: int, max_concurrent: int | None) -> Any:
        return optuna.samplers.QMCSampler(seed=seed)

    @register_scheduler("counting_fifo")
    def counting_fifo(spec: SchedulerSpec) -> Any:
        SEEN.append(spec)
        return FIFOScheduler()

    try:
        yield
    finally:
        SAMPLERS.unregister("qmc")
        SCHEDULERS.unregister("counting_fifo")
        SEEN.clear()


def test_a_registered_sampler_and_scheduler_are_planned_and_built(
    qmc_and_counting_fifo: None,
) -> None:
    plan = resolve_plan(
        SweepOptions(space="vit_head_mlp", sampler="qmc", scheduler="counting_fifo", states=3)
    )
    assert (plan.sampler, plan.scheduler) == ("qmc", "counting_fifo")
    sampler = make_sampler(plan.sampler, plan.seed, plan.num_samples, plan.max_concurrent)
    assert isinstance(sampler, optuna.samplers.QMCSampler)
    scheduler = SCHEDULERS.get(plan.scheduler)(plan.scheduler_spec())
    assert isinstance(scheduler, FIFOScheduler)
    (spec,) = SEEN
    assert spec.metrics == tuple(o.key for o in plan.objectives)
    assert spec.modes == tuple(o.mode for o in plan.objectives) and spec.states == 3


def test_unknown_names_are_one_line_listing_the_registered_choices(
    qmc_and_counting_fifo: None,
) -> None:
    with pytest.raises(ConfigError, match=r"unknown sampler 'nope'; choose one of: .*qmc") as e:
        resolve_plan(SweepOptions(space="vit_head_mlp", sampler="nope"))
    assert "\n" not in str(e.value) and "tpe" in str(e.value)
    with pytest.raises(ConfigError, match=r"unknown scheduler 'x'; choose one of: .*counting"):
        resolve_plan(SweepOptions(space="vit_head_mlp", scheduler="x"))


def test_the_built_in_schedulers_build_from_a_plan() -> None:
    plan = resolve_plan(SweepOptions(space="vit_head_mlp", scheduler="moasha", states=4))
    spec = plan.scheduler_spec()
    assert (spec.grace, spec.reduction_factor, spec.states) == (1, 2, 4)
    moasha = SCHEDULERS.get("moasha")(spec)
    assert type(moasha).__name__ == "MoashaScheduler"
    assert isinstance(builtin_fifo(spec), FIFOScheduler)
