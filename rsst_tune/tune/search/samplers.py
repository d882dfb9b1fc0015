"""Optuna samplers by name: a registry like the models', criteria's and datasets'.

    SAMPLERS.get("tpe")(seed=0, num_samples=24, max_concurrent=2)   # an optuna sampler

A user's sampler is one registered factory (`register_sampler`); `--sampler NAME` and
`rsst_tune.sweep(..., sampler=NAME)` then accept it. Importing this module does not import
Optuna (the command line lists the names); a factory imports it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from rsst_tune.registry import Registry


class SamplerFactory(Protocol):
    def __call__(self, *, seed: int, num_samples: int, max_concurrent: int | None) -> Any:
        """An `optuna.samplers.BaseSampler` for a sweep of `num_samples` trials with at most
        `max_concurrent` at once (None: unlimited)."""
        ...


SAMPLERS: Registry[SamplerFactory] = Registry("sampler")
DEFAULT_SAMPLER = "tpe"


def register_sampler(name: str, *aliases: str, override: bool = False) -> Callable[[Any], Any]:
    """Decorator: make a sampler factory available as `--sampler NAME`."""
    return SAMPLERS.register(name, *aliases, override=override)


def sampler_names() -> tuple[str, ...]:
    """The registered samplers, the default first."""
    names = SAMPLERS.names()
    return (DEFAULT_SAMPLER, *(n for n in names if n != DEFAULT_SAMPLER))


def tpe_startup(num_samples: int) -> int:
    """TPE's random start-up trials for a sweep of `num_samples` trials: a fifth, at least 2
    and at most 10 (Optuna's default). It was a third, which left little of a sweep to TPE's
    model, and least of a MO-ASHA sweep, which is given more (cheaper) trials for the same
    compute: the benchmark's MO-ASHA sweep (32 trials) spent nearly half its budget on its 10
    random trials, and as TPE's start-up draws from the seed's random stream, they were the
    very configurations random search tried (`benchmarks/bench_search.py`). Under
    `--epoch-budget`, `num_samples` is at most the full-length trials the budget buys
    (`epoch_budget.full_trials`), so MO-ASHA's extra, shorter trials are not random ones."""
    return min(10, max(2, int(num_samples) // 5))


@register_sampler("tpe")
def tpe(*, seed: int, num_samples: int, max_concurrent: int | None) -> Any:
    """TPE (the default; multivariate, grouped for conditional spaces). It proposes at random
    until `tpe_startup(num_samples)` trials have finished (a space's enqueued starting points
    count), then from its model; with parallel trials it counts the running ones as bad
    (`constant_liar`), so parallel workers are steered apart."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=tpe_startup(num_samples),
        multivariate=True,
        group=True,
        constant_liar=bool(max_concurrent is None or max_concurrent > 1),
    )


@register_sampler("nsga2")
def nsga2(*, seed: int, num_samples: int, max_concurrent: int | None) -> Any:
    """NSGA-II with a population of a quarter of the trials (4 to 50)."""
    import optuna

    population = min(50, max(4, num_samples // 4))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


@register_sampler("random")
def random(*, seed: int, num_samples: int, max_concurrent: int | None) -> Any:
    """Independent random proposals (the baseline)."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def make_sampler(name: str, seed: int, num_samples: int, max_concurrent: int | None) -> Any:
    """The registered sampler `name` for a sweep; an unknown name is a one-line ConfigError
    naming the choices."""
    return SAMPLERS.get(name)(seed=seed, num_samples=num_samples, max_concurrent=max_concurrent)
