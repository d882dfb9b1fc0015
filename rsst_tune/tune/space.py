"""A named search space, as data: what `search_spaces/<name>.py` declares.

A space module defines ``SPACE = SearchSpace(...)``; the registry (`search_spaces`) names it
after the module. Its parts:

* ``description``: one line for ``--list-spaces``;
* ``base``: TrialConfig fields every trial starts from;
* ``define``: an Optuna define-by-run function ``(trial) -> dict`` returning the *searched*
  TrialConfig fields (conditional parameters are only suggested when their condition holds);
* ``objectives``: the default objectives (several = multi-objective);
* ``scheduler``: the default scheduler: ``"moasha"`` (multi-objective early stopping, for
  spaces that search sparsity), ``"asha"`` (only where state s is the same sparsity in
  every trial) or ``"fifo"`` (every trial runs every state);
* ``overridable``: which base fields the CLI may override (``--dataset --model --states
  --epochs``), each with the glob patterns its value must match;
* ``smoke``: the base-config changes of ``--preset smoke`` (an offline digits profile);
* ``starting_points``: Optuna parameter dicts enqueued before the sampler proposes anything
  (a known-good recipe, so even a tiny sweep has one sensible trial);
* ``macs_budget``: whether the space accepts ``--macs-budget B`` (its proposals' MACs at the
  last state are analytic: every pruned kind has explicit ratios). A proposal over the budget
  is told to Optuna as infeasible before any training and costs no trial.

``define`` may take a second argument, the resolved base config (a dict), for spaces whose
parameters depend on the model (one ratio per block: ``search_spaces/vit_layerwise.py``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError, unknown_choice
from rsst_tune.experiment.records import Objective

# (optuna.Trial) or (optuna.Trial, base config) -> searched TrialConfig fields
DefineFn = Callable[..., dict[str, Any]]

# CLI override flag -> TrialConfig field.
OVERRIDE_FLAGS: dict[str, str] = {
    "dataset": "dataset",
    "model": "model",
    "states": "pruning_times",
    "epochs": "epochs",
}
FIELD_FLAGS = {v: k for k, v in OVERRIDE_FLAGS.items()}
ANY = ("*",)
# Fields that change how sparse state s is: trials that search them are not comparable state by
# state, so a scheduler that compares trials at the same state (ASHA) would compare sparsities.
SPARSITY_FIELDS = (
    "rate",
    "head_ratio",
    "mlp_ratio",
    "filter_ratio",
    "head_ratios",
    "mlp_ratios",
    "filter_ratios",
    "fillback_rate",
    "target",
    "min_units",
    "pruning_times",
)

# The offline digits profile of `--preset smoke` (spaces may replace it): no augmentation
# (digits reach ~95 % in 20-40 epochs without it), fine-tuning between states (`pt`) so that
# every state starts from trained weights, 3 states x 20 epochs (~25 s per trial on one core).
SMOKE_DIGITS: dict[str, Any] = {
    "model": "vit_digits",
    "dataset": "digits",
    "pruning_times": 3,
    "epochs": 20,
    "augment": False,
    "prune_type": "pt",
    "warmup_epochs": 1.0,
    "batch_size": 64,
    "optimizer": "adamw",
    "weight_decay": 0.05,
}
SMOKE_SWEEP: dict[str, Any] = {"num_samples": 8, "max_concurrent": 2, "cpus_per_trial": 1.0}


@dataclass(frozen=True)
class SearchSpace:
    description: str
    base: Mapping[str, Any]
    define: DefineFn
    objectives: tuple[Objective, ...]
    scheduler: str = "fifo"
    overridable: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: {f: ANY for f in OVERRIDE_FLAGS.values()}
    )
    smoke: Mapping[str, Any] = field(default_factory=lambda: dict(SMOKE_DIGITS))
    starting_points: tuple[Mapping[str, Any], ...] = ()
    num_samples: int = 32
    macs_budget: bool = False  # accepts --macs-budget (its MACs are analytic before training)
    name: str = ""  # filled in by the registry: the module name

    def __post_init__(self) -> None:
        if self.scheduler not in ("moasha", "asha", "fifo"):
            raise ConfigError(
                f"space scheduler must be moasha, asha or fifo, got {self.scheduler!r}"
            )
        if not self.objectives:
            raise ConfigError("a search space needs at least one objective")
        unknown = set(self.overridable) - set(OVERRIDE_FLAGS.values())
        if unknown:
            raise ConfigError(f"overridable fields must be among {sorted(FIELD_FLAGS)}: {unknown}")

    # ------------------------------------------------------------------ base config
    def resolve_base(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        preset: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The validated base config: base, then the preset, then CLI overrides, then `extra`.

        `overrides` are keyed by TrialConfig field (`pruning_times`, not `states`) and checked
        against `overridable`; `extra` (e.g. seed, device) is applied as is.
        """
        data = dict(self.base)
        if preset is not None:
            if preset != "smoke":
                raise ConfigError(f"unknown preset {preset!r}; choose one of: smoke")
            data.update(self.smoke)
        for name, value in (overrides or {}).items():
            if value is None:
                continue
            self._check_override(name, value)
            data[name] = value
            if name == "epochs":
                _fit_to_epochs(data, int(value))
        data.update({k: v for k, v in (extra or {}).items() if v is not None})
        _check_names(data)
        return TrialConfig.from_dict(data).to_dict()

    def _check_override(self, name: str, value: Any) -> None:
        flag = f"--{FIELD_FLAGS.get(name, name)}"
        if name not in self.overridable:
            allowed = ", ".join(f"--{FIELD_FLAGS[f]}" for f in self.overridable) or "none"
            raise ConfigError(
                f"space {self.name} does not allow {flag} (allowed overrides: {allowed})"
            )
        patterns = self.overridable[name]
        if isinstance(value, str) and not any(fnmatch.fnmatch(value, p) for p in patterns):
            raise ConfigError(
                f"space {self.name} does not allow {flag} {value}: it must match "
                f"{', '.join(patterns)}"
            )

    # ------------------------------------------------------------------ trial configs
    def sample(
        self,
        trial: Any,
        fixed: Mapping[str, Any] | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The searched fields for one Optuna trial (the define-by-run function, checked).

        `fixed` pins searched parameters (`--fix lr=3e-3`): define() gets their value without
        Optuna suggesting them. A define() of two arguments also gets the base config `base`
        (default: the space's own `base`).
        """
        ask = FixedTrial(trial, fixed) if fixed else trial
        if _takes_base(self.define):
            params = self.define(ask, dict(self.base if base is None else base))
        else:
            params = self.define(ask)
        if not isinstance(params, dict):
            raise TypeError(f"space {self.name}: define() must return a dict, got {type(params)}")
        known = set(TrialConfig.field_names())
        unknown = set(params) - known
        if unknown:
            raise ConfigError(f"space {self.name}: define() returned unknown fields {unknown}")
        return params

    def trial_config(
        self, base: Mapping[str, Any], trial: Any, fixed: Mapping[str, Any] | None = None
    ) -> TrialConfig:
        return TrialConfig.from_dict({**base, **self.sample(trial, fixed, base)})


def _takes_base(define: Callable[..., Any]) -> bool:
    """Whether a define() takes the base config as a second positional argument."""
    import inspect

    try:
        params = list(inspect.signature(define).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class FixedTrial:
    """An Optuna trial whose `suggest_*` return pinned values for some parameter names."""

    def __init__(self, trial: Any, fixed: Mapping[str, Any]) -> None:
        self._trial = trial
        self._fixed = dict(fixed)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(param: str, *args: Any, **kwargs: Any) -> Any:
            if param in self._fixed:
                return self._fixed[param]
            return attr(param, *args, **kwargs)

        return suggest


def _fit_to_epochs(data: dict[str, Any], epochs: int) -> None:
    """Keep warm-up and the rewind point inside a shortened state."""
    defaults = TrialConfig()
    warmup = float(data.get("warmup_epochs", defaults.warmup_epochs))
    if warmup > epochs * 0.1:
        data["warmup_epochs"] = round(min(warmup, epochs * 0.1), 3)
    rewind = int(data.get("rewind_epoch", defaults.rewind_epoch))
    if rewind > epochs:
        data["rewind_epoch"] = epochs


def _check_names(data: Mapping[str, Any]) -> None:
    from rsst_tune.data import list_datasets
    from rsst_tune.models import is_registered, list_models

    if "model" in data and not is_registered(str(data["model"])):
        raise unknown_choice("model", data["model"], list_models())
    if "dataset" in data and data["dataset"] not in list_datasets():
        raise unknown_choice("dataset", data["dataset"], list_datasets())


# ---------------------------------------------------------------------- introspection
@dataclass(frozen=True)
class ParamSummary:
    name: str
    distribution: str
    seen: int  # in how many of the sampled trials the parameter was suggested


def summarize(
    space: SearchSpace,
    base: Mapping[str, Any],
    samples: int = 64,
    seed: int = 0,
    fixed: Mapping[str, Any] | None = None,
) -> tuple[list[ParamSummary], dict[str, set[Any]]]:
    """Sample the define-by-run space with a seeded random sampler.

    Returns the parameters Optuna saw (with how often: fewer than `samples` = conditional) and,
    per TrialConfig field, the set of values the resolved configs took.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen: dict[str, int] = {}
    dists: dict[str, str] = {}
    values: dict[str, set[Any]] = {}
    for _ in range(samples):
        trial = study.ask()
        cfg = space.trial_config(base, trial, fixed)
        for name, dist in trial.distributions.items():
            seen[name] = seen.get(name, 0) + 1
            dists[name] = _describe_distribution(dist)
        for k, v in cfg.to_dict().items():
            values.setdefault(k, set()).add(_hashable(v))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    params = [ParamSummary(n, dists[n], seen[n]) for n in seen]
    return params, values


def varying_sparsity_fields(space: SearchSpace, base: Mapping[str, Any]) -> list[str]:
    """The sparsity-changing fields whose value differs between trials of the space."""
    _, values = summarize(space, base)
    return [f for f in SPARSITY_FIELDS if len(values.get(f, set())) > 1]


def _describe_distribution(dist: Any) -> str:
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        return "choice " + ", ".join(str(c) for c in dist.choices)
    if isinstance(dist, (od.FloatDistribution, od.IntDistribution)):
        kind = "int" if isinstance(dist, od.IntDistribution) else "float"
        scale = " log" if dist.log else ""
        step = f" step {dist.step}" if dist.step else ""
        return f"{kind}{scale} [{dist.low:g}, {dist.high:g}]{step}"
    return repr(dist)  # pragma: no cover - every Optuna distribution is covered above


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, dict):
        return tuple(sorted(v.items()))
    return v
