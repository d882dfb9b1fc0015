"""A sweep's plan: the options a user gives, resolved and checked against the search space.

    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke"))
    print(describe_plan(plan))          # what --dry-run prints
    plan.to_json()                      # stored as <experiment>/sweep.json; load_plan reads it

Resolving never imports torch or Ray and writes nothing: every bad input is a one-line
`ConfigError` before anything runs. Running a plan is `rsst_tune.tune.sweep.run_sweep`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsst_tune.config import EXECUTION, NUMERICS, TrialConfig
from rsst_tune.errors import ConfigError, unknown_choice
from rsst_tune.experiment import objectives as objs
from rsst_tune.experiment.layout import LATENCY_TABLE_FILE, PLAN_FILE
from rsst_tune.experiment.records import Objective
from rsst_tune.limits import (
    MAX_CONFIRM,
    MAX_FAILURES,
    MAX_REDUCTION_FACTOR,
    MAX_RESOURCES,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_TRIAL_WORKERS,
)
from rsst_tune.plugins import MODULE_AT, is_object_spec, load_imports, resolve_imports
from rsst_tune.tune.gpu_share import AUTO as AUTO_SHARE
from rsst_tune.tune.search.moasha import rung_states
from rsst_tune.tune.search.samplers import SAMPLERS, sampler_names
from rsst_tune.tune.search.schedulers import SCHEDULERS, SchedulerSpec, scheduler_names
from rsst_tune.tune.space import (
    FIELD_FLAGS,
    SMOKE_SWEEP,
    SearchSpace,
    summarize,
    varying_sparsity_fields,
)

log = logging.getLogger(__name__)

PLAN_VERSION = 1
# First rung (a pruning state; 0 = dense) when --grace is not given, per scheduler.
DEFAULT_GRACE = {"moasha": 1, "asha": 0}
DEFAULT_REDUCTION_FACTOR = 2
WANDB_MODES = ("off", "offline", "online")
DEFAULT_STORAGE = "experiments"
# With --workers-per-trial N > 1 a trial's own process only starts its workers and reports
# their states: it holds this much CPU, and the workers hold the per-trial resources each.
DRIVER_CPUS = 0.1
# --keep-checkpoints: which state checkpoints of a trial stay on disk (`tune.run.retention`)
KEEP_CHECKPOINTS = ("best", "last", "all")


@dataclass(frozen=True)
class SweepOptions:
    """What the user asked for (the CLI's flags, or a caller's keyword arguments)."""

    space: str
    objective: str | None = None
    sampler: str = "tpe"
    scheduler: str | None = None  # None: the space's default
    grace: int | None = None  # first rung state of asha/moasha (--grace)
    reduction_factor: int | None = None  # η of asha/moasha (--reduction-factor)
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | str = 0.0  # or "auto": a probe sizes it (`tune.gpu_share`)
    # --workers-per-trial N: each trial on N data-parallel workers (`rsst_tune.workers`);
    # --cpus-per-trial and --gpus-per-trial are then per worker
    workers_per_trial: int = 1
    time_budget: float | None = None  # seconds
    epoch_budget: int | None = None  # --epoch-budget B: no trial starts once B trial-epochs
    storage: str = DEFAULT_STORAGE
    name: str | None = None
    wandb: str = "off"
    dataset: str | None = None
    model: str | None = None
    states: int | None = None
    epochs: int | None = None
    preset: str | None = None
    seed: int = 0
    device: str | None = None
    command: str = ""
    share_dense: bool = True
    fixed: tuple[tuple[str, Any], ...] = ()  # searched parameters pinned with --fix NAME=VALUE
    # trial config fields for every trial (--set NAME=VALUE): any the space does not search
    settings: tuple[tuple[str, Any], ...] = ()
    max_failures: int = 2  # restarts of a trial whose worker or node died (--max-failures)
    confirm: int | None = None  # --confirm K: top K tickets per budget re-run with 2 more seeds
    onnx: bool = True  # the best tickets' exports also write model.onnx (--no-onnx: not)
    macs_budget: float | None = None  # --macs-budget B: proposals over B MACs never run
    # inputs of every trial (TrialConfig fields, applied to the base config as given)
    img_size: int | None = None
    data_dir: str | None = None  # made absolute: trials run in Ray's own directories
    data_placement: str | None = None
    train_subset: float | None = None
    data_workers: int | None = None
    pretrained_file: str | None = None  # made absolute
    pretrained: bool | None = None  # timm:NAME models start from timm's weights (--pretrained)
    # the user's modules (criteria, models, ...) imported in the driver and every Ray worker
    imports: tuple[str, ...] = ()
    keep_checkpoints: str = "best"  # --keep-checkpoints best|last|all
    wandb_project: str | None = None  # default: $WANDB_PROJECT, else "rsst-tune"
    wandb_entity: str | None = None  # default: $WANDB_ENTITY, else the key's default entity
    wandb_tags: tuple[str, ...] = ()
    # predicted latency (`rsst_tune.latency_model`): objective `latency_ms`, a budget in ms,
    # the batch it is predicted at, and a table built beforehand (default: built at the start)
    latency_budget: float | None = None
    latency_batch: int = 1
    latency_table: str | None = None

    @classmethod
    def from_keywords(cls, space: str, options: Mapping[str, Any]) -> SweepOptions:
        """Options from a caller's keyword arguments (`rsst_tune.sweep`): `fixed` and
        `settings` may be dicts; an unknown name is a ConfigError that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)} - {"space"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(
                f"unknown sweep option {', '.join(unknown)}; choose from: "
                f"{', '.join(sorted(names))}"
            )
        data = dict(options)
        for key in ("imports", "wandb_tags"):
            if isinstance(data.get(key), str):
                data[key] = (data[key],)
            elif data.get(key) is not None:
                data[key] = tuple(data[key])
        for key in ("fixed", "settings"):
            pairs = data.get(key)
            if isinstance(pairs, Mapping):
                data[key] = tuple(pairs.items())
            elif pairs is not None:
                data[key] = tuple((str(k), v) for k, v in pairs)
        return cls(space=space, **data)


@dataclass(frozen=True)
class SweepPlan:
    """A resolved sweep: everything needed to run it again; stored as `sweep.json`."""

    space: str
    name: str
    storage: str  # an absolute directory, or a URI Ray accepts
    experiment_dir: str  # <storage>/<name>
    local_dir: str  # where our files live (the experiment dir itself for local storage)
    base_config: dict[str, Any]
    objectives: tuple[Objective, ...]
    scheduler: str
    sampler: str
    seed: int
    num_samples: int
    max_concurrent: int | None
    cpus_per_trial: float
    gpus_per_trial: float  # 0 until the start resolves `--gpus-per-trial auto`
    time_budget_s: float | None
    wandb: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    study_name: str = ""
    # asha/moasha: first rung state (`grace`, 0 = dense) and η; plans written before MO-ASHA
    # stored `grace_period` in Ray iterations (state + 1): `halving_settings` reads both
    asha: dict[str, int] = field(default_factory=lambda: {"grace": 0, "reduction_factor": 2})
    share_dense: bool = True  # trials with identical state 0 train it once (local storage)
    fixed: dict[str, Any] = field(default_factory=dict)  # searched parameters pinned by --fix
    max_failures: int = 2  # restarts of a trial from its last state checkpoint (--max-failures)
    confirm: int = 0  # seed confirmation of the top K tickets per budget (0: none)
    onnx: bool = True  # the best tickets' exports also write model.onnx
    # --gpus-per-trial auto: {"auto": True} until the sweep's start sizes it, then also the
    # probe's numbers (`tune.gpu_share.ShareProbe.to_dict`) or why there was none; {}: given
    gpu_share: dict[str, Any] = field(default_factory=dict)
    # data-parallel workers per trial (1: the trial's own process); with more, the CPUs and
    # GPUs per trial are each worker's and the trial itself holds only `DRIVER_CPUS`
    workers_per_trial: int = 1
    # --macs-budget: a proposal whose last state exceeds this fraction of the dense MACs
    # (analytic, before training) is told to Optuna as infeasible and never runs
    macs_budget: float | None = None
    # --epoch-budget: no trial starts once this many trial-epochs are spent or committed
    # (`rsst_tune.tune.search.epoch_budget`)
    epoch_budget: int | None = None
    # --import: the user's modules as every process imports them (`rsst_tune.plugins`)
    imports: tuple[str, ...] = ()
    keep_checkpoints: str = "all"  # plans written before --keep-checkpoints kept every state
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_tags: tuple[str, ...] = ()
    sweep_file: str = ""  # the options as a sweep file (YAML; `--config` runs it again)
    # predicted latency: {"batch": B, "budget_ms": x | None, "table": a given file | None};
    # empty when the sweep neither optimises, budgets nor reports it
    latency: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_table_path(self) -> str | None:
        """The table trials predict `latency_ms` from: the given one, or the one the sweep
        times at its start in its own directory (a moved directory takes it along)."""
        if not self.latency:
            return None
        return self.latency.get("table") or str(Path(self.local_dir) / LATENCY_TABLE_FILE)

    @property
    def worker_imports(self) -> tuple[str, ...]:
        """What each Ray worker imports before its trial: `--import`s and a space's module."""
        space = (self.space.rpartition(":")[0] or self.space) if is_object_spec(self.space) else ""
        return tuple(self.imports) + ((space,) if space and space not in self.imports else ())

    @property
    def dense_cache_dir(self) -> str | None:
        """Where shared dense states live: the experiment directory (not with URI storage)."""
        return (
            None
            if self.is_uri or not self.share_dense
            else str(Path(self.local_dir) / "dense_cache")
        )

    @property
    def workers_dir(self) -> str | None:
        """Where a trial on several workers (`--workers-per-trial`) runs: the experiment
        directory, which every node of a cluster sees (docs/cluster.md), so that its workers
        may span nodes; None with URI storage (each trial's workers then stay on one node,
        in the trial's local scratch directory)."""
        if self.workers_per_trial <= 1 or self.is_uri:
            return None
        return str(Path(self.local_dir) / WORKER_RUNS_DIR)

    @property
    def states(self) -> int:
        return int(self.base_config["pruning_times"])

    @property
    def is_uri(self) -> bool:
        return is_uri(self.storage)

    def scheduler_spec(self) -> SchedulerSpec:
        """What the plan's scheduler is built from (`SCHEDULERS.get(plan.scheduler)(spec)`)."""
        grace, factor = halving_settings(self)
        return SchedulerSpec(
            metrics=tuple(o.key for o in self.objectives),
            modes=tuple(o.mode for o in self.objectives),
            states=self.states,
            grace=grace,
            reduction_factor=factor,
        )

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        del data["sweep_file"]  # written once as sweep.yaml; not part of what resumes
        data["objectives"] = objs.objectives_to_json(self.objectives)
        data["version"] = PLAN_VERSION
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepPlan:
        data = json.loads(text)
        data.pop("version", None)
        data["objectives"] = objs.objectives_from_json(data["objectives"])
        names = {f.name for f in dataclasses.fields(cls)}
        for key in ("imports", "wandb_tags"):  # JSON lists: the plan stays hashable-free frozen
            if key in data:
                data[key] = tuple(data[key])
        return cls(**{k: v for k, v in data.items() if k in names})


# The smoke preset pins the digits training recipe, so all its trials share one dense state 0
# (shared dense training) and the search spends its budget on the pruning parameters.
SMOKE_FIXED: dict[str, Any] = {"lr": 3e-3}
WORKER_RUNS_DIR = "worker_runs"
"""In the experiment directory: the runs of trials on several workers, while they run."""
SMOKE_CONFIRM = 2  # the smoke preset confirms the top 2 tickets of each budget


# ---------------------------------------------------------------------- resolution
def resolve_plan(opts: SweepOptions) -> SweepPlan:
    """Validate the options against the space; every bad input is a one-line ConfigError."""
    from search_spaces import get_space

    _check_option_types(opts)
    imports = resolve_imports(opts.imports)  # registrations first: the base config names them
    space = get_space(opts.space)  # FILE.py / module:NAME: registered by its full path
    overrides = {
        "dataset": opts.dataset,
        "model": opts.model,
        "pruning_times": opts.states,
        "epochs": opts.epochs,
    }
    base = space.resolve_base(
        overrides,
        preset=opts.preset,
        extra={
            "seed": opts.seed,
            "device": opts.device,
            **_inputs(opts),
            **_check_settings(opts.settings),
        },
    )
    # Ray runs each trial in a working directory of its own: a relative data folder (the
    # default `data` too) means the folder the sweep was launched from.
    base["data_dir"] = _data_dir(base, given=opts.data_dir is not None)
    _check_set_not_searched(space, base, dict(opts.settings or ()))
    fixed = {**(SMOKE_FIXED if opts.preset == "smoke" else {}), **dict(opts.fixed)}
    _check_fixed(space, base, fixed)
    objectives = objs.parse_objectives(opts.objective) if opts.objective else space.objectives
    if not isinstance(opts.sampler, str) or opts.sampler not in SAMPLERS:
        raise unknown_choice("sampler", opts.sampler, sampler_names())
    scheduler = opts.scheduler or space.scheduler
    if not isinstance(scheduler, str) or scheduler not in SCHEDULERS:
        raise unknown_choice("scheduler", scheduler, scheduler_names())
    if scheduler == "asha":
        _check_asha(space, base)
    halving = _check_halving(scheduler, opts.grace, opts.reduction_factor)
    if opts.wandb not in WANDB_MODES:
        raise unknown_choice("--wandb mode", opts.wandb, WANDB_MODES)
    if opts.wandb != "off" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"--wandb {opts.wandb} needs the wandb package, which is not installed here: "
            "pip install 'rsst-tune[wandb]'"
        )
    if opts.keep_checkpoints not in KEEP_CHECKPOINTS:
        raise unknown_choice("--keep-checkpoints", opts.keep_checkpoints, KEEP_CHECKPOINTS)
    wandb_tags = _check_tags(opts.wandb_tags)
    preset = SMOKE_SWEEP if opts.preset == "smoke" else {}
    num_samples = opts.num_samples or int(preset.get("num_samples", space.num_samples))
    max_concurrent = opts.max_concurrent or preset.get("max_concurrent")
    cpus = (
        opts.cpus_per_trial
        if opts.cpus_per_trial is not None
        else preset.get("cpus_per_trial", 1.0)
    )
    _check_positive(num_samples=num_samples, cpus_per_trial=cpus)
    _check_at_most(MAX_RESOURCES, cpus_per_trial=cpus)
    # One torch thread per CPU a trial holds; recorded so best configs repeat bit for bit.
    base = TrialConfig.from_dict({**base, "threads": max(1, int(cpus))}).to_dict()
    if max_concurrent is not None:
        _check_positive(max_concurrent=max_concurrent)
    auto_gpus = opts.gpus_per_trial == AUTO_SHARE
    if not auto_gpus and not (
        isinstance(opts.gpus_per_trial, (int, float))
        and 0 <= opts.gpus_per_trial <= MAX_RESOURCES  # NaN fails too
    ):
        raise ConfigError(
            f"--gpus-per-trial must be a finite number in [0, {MAX_RESOURCES:g}] or auto, "
            f"got {opts.gpus_per_trial!r}"
        )
    workers = _check_workers_per_trial(opts, base)
    if opts.time_budget is not None:
        _check_positive(time_budget=opts.time_budget)
    epoch_budget = _check_epoch_budget(opts.epoch_budget)
    latency = _check_latency(opts, space, objectives, base)
    name = opts.name or _default_name(space.name, opts.preset)
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain directory name, got {name!r}")
    storage = opts.storage
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    if is_uri(storage):
        experiment_dir = storage.rstrip("/") + "/" + name
        local_dir = str((Path(DEFAULT_STORAGE) / name).resolve())
    else:
        experiment_dir = str(Path(storage) / name)
        local_dir = experiment_dir
    return SweepPlan(
        space=space.name,
        name=name,
        storage=storage,
        experiment_dir=experiment_dir,
        local_dir=local_dir,
        base_config=base,
        objectives=tuple(objectives),
        scheduler=scheduler,
        sampler=opts.sampler,
        seed=opts.seed,
        num_samples=int(num_samples),
        max_concurrent=None if max_concurrent is None else int(max_concurrent),
        cpus_per_trial=float(cpus),
        gpus_per_trial=0.0 if auto_gpus else float(opts.gpus_per_trial),
        workers_per_trial=workers,
        gpu_share={"auto": True} if auto_gpus else {},
        time_budget_s=opts.time_budget,
        epoch_budget=epoch_budget,
        wandb=opts.wandb,
        wandb_project=opts.wandb_project,
        wandb_entity=opts.wandb_entity,
        wandb_tags=wandb_tags,
        share_dense=opts.share_dense,
        imports=imports,
        keep_checkpoints=opts.keep_checkpoints,
        preset=opts.preset,
        fixed=fixed,
        max_failures=_check_max_failures(opts.max_failures),
        onnx=_check_bool("onnx", opts.onnx),
        macs_budget=_check_macs_budget(space, opts.macs_budget),
        asha=halving,
        confirm=check_confirm(
            opts.confirm
            if opts.confirm is not None
            else (SMOKE_CONFIRM if opts.preset == "smoke" else 0)
        ),
        overrides={k: v for k, v in overrides.items() if v is not None},
        command=opts.command,
        study_name=name,
        sweep_file=sweep_file_text(
            dataclasses.replace(
                opts,  # every path absolute: the stored file runs from any directory
                space=space.name,
                imports=imports,
                storage=storage,
                data_dir=None if opts.data_dir is None else base["data_dir"],
                pretrained_file=base.get("pretrained_file") if opts.pretrained_file else None,
                latency_table=latency.get("table"),
            )
        ),
        latency=latency,
    )


# ---------------------------------------------------------------------- sweep file
# SweepOptions fields whose flag has another name (`--fix` fills `fixed`); `onnx` and
# `share_dense` are written as the flags that turn them off.
OPTION_FLAGS = {"fixed": "fix", "settings": "set", "imports": "import"}
NOT_IN_FILE = ("command", "space")


def sweep_file_text(opts: SweepOptions) -> str:
    """`opts` as a sweep file: YAML keyed by the long flags, `fix:`/`set:` as maps, only what
    differs from the defaults; `tune_main.py --config FILE` runs the same sweep."""
    import yaml

    data: dict[str, Any] = {"space": opts.space}
    for f in dataclasses.fields(SweepOptions):
        value = getattr(opts, f.name)
        if f.name in NOT_IN_FILE or value == f.default or value == ():
            continue
        if f.name == "onnx":
            data["no-onnx"] = True
        elif f.name == "share_dense":
            data["no-share-dense"] = True
        elif f.name in ("fixed", "settings"):
            data[OPTION_FLAGS[f.name]] = {k: _plain(v) for k, v in value}
        elif f.name in ("imports", "wandb_tags"):
            data[OPTION_FLAGS.get(f.name, f.name.replace("_", "-"))] = list(value)
        else:
            data[f.name.replace("_", "-")] = _plain(value)
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _plain(value: Any) -> Any:
    """A value YAML writes as data (tuples as lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# Sweep options that set a TrialConfig field: `--set` names them for that field.
OWN_FLAG = {
    "device": "--device",
    "data_placement": "--data-placement",
    "data_dir": "--data-dir",
    "pretrained": "--pretrained",
    "pretrained_file": "--pretrained-file",
    "data_workers": "--data-workers",
    "threads": "--cpus-per-trial (one torch thread per CPU a trial holds)",
    "seed": "--seed",
}
# Fields `--set NAME=VALUE` may give every trial: how a trial executes, not what it computes
# (TrialConfig's NUMERICS and EXECUTION groups), less those with a flag of their own.
SETTABLE = tuple(
    name
    for group in (NUMERICS, EXECUTION)
    for name in TrialConfig.fields_in(group)
    if name not in OWN_FLAG
)


def _check_settings(settings: Any) -> dict[str, Any]:
    """`--set` pairs as a dict: any TrialConfig field, for every trial. A field with a flag of
    its own is a ConfigError naming that flag (and an unknown name one listing the fields);
    one the space searches is refused later (`_check_set_not_searched`). The values are
    checked with the whole base config (`TrialConfig`)."""
    out: dict[str, Any] = {}
    fields = TrialConfig.field_names()
    for pair in settings or ():
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ConfigError(f"settings must be NAME=VALUE pairs, got {pair!r}")
        name, value = pair
        if name in OWN_FLAG:
            raise ConfigError(f"--set {name}: use {OWN_FLAG[name]}")
        if name in FIELD_FLAGS:
            raise ConfigError(f"--set {name}: use --{FIELD_FLAGS[name]}")
        if name not in fields:
            raise unknown_choice(
                "--set field", name, sorted(set(fields) - {*OWN_FLAG, *FIELD_FLAGS})
            )
        out[name] = value
    return out


def _check_set_not_searched(space: SearchSpace, base: Mapping[str, Any], names: Any) -> None:
    """A `--set` field the space searches would be replaced in every trial: pin it with --fix."""
    computed = [n for n in names if n not in SETTABLE]
    if not computed:
        return
    params, _ = summarize(space, base, samples=32)
    searched = sorted({p.name for p in params} & set(computed))
    if searched:
        name = searched[0]
        raise ConfigError(
            f"--set {name}: space {space.name} searches {name}; pin it with --fix {name}=VALUE"
        )


def _inputs(opts: SweepOptions) -> dict[str, Any]:
    """The trial inputs given as sweep options, the weights file made absolute and checked to
    exist (a missing file is found here, not in every trial); the data folder or shard
    pattern, which depends on the dataset, is checked by `_data_dir` once the base config
    names the dataset."""
    out: dict[str, Any] = {
        "img_size": opts.img_size,
        "data_placement": opts.data_placement,
        "train_subset": opts.train_subset,
        "data_workers": opts.data_workers,
        "pretrained": opts.pretrained,
    }
    for name in ("data_dir", "pretrained_file"):
        value = getattr(opts, name)
        if value is None:
            continue
        if not isinstance(value, str | os.PathLike):
            raise ConfigError(f"{name} must be a path, got {value!r}")
        out[name] = os.fspath(value)
    if opts.pretrained_file is not None:
        path = Path(out["pretrained_file"]).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                f"pretrained_file {opts.pretrained_file} is not a file (resolved: {path})"
            )
        out["pretrained_file"] = str(path)
    return out


# a data_dir with these is a shard pattern (brace ranges, globs, `::` lists): dataset wds
_SHARD_PATTERN = re.compile(r"[{*?\[]|::")


def _data_dir(base: Mapping[str, Any], *, given: bool) -> str:
    """The base config's `data_dir` made absolute (the folder the sweep was launched from
    for a relative one) and, when the user `given` it, checked before anything runs: for the
    `wds` dataset a shard pattern (brace ranges, globs, `::`-joined patterns, or a folder of
    shards), made absolute item by item with its braces kept and checked to match its shards
    (`rsst_tune.data.shards`: `absolute_pattern`, `find_shards`); for any other dataset a
    folder. Every failure is one ConfigError naming what was given."""
    value = str(base["data_dir"])
    if _reads_shards(str(base["dataset"])):
        from rsst_tune.data.shards import absolute_pattern, find_shards

        pattern = value
        try:
            pattern = absolute_pattern(value)
            if given:
                find_shards(pattern)
        except ConfigError as exc:
            named = f"data_dir {value}" if pattern != value else "data_dir"
            raise ConfigError(f"{named}: {exc}") from None
        return pattern
    path = Path(value).expanduser().resolve()
    if given and not path.is_dir():
        hint = "; a shard pattern needs --dataset wds" if _SHARD_PATTERN.search(value) else ""
        raise ConfigError(f"data_dir {value} is not a folder (resolved: {path}){hint}")
    return str(path)


def _reads_shards(dataset: str) -> bool:
    """Whether `dataset` is the `wds` loader (WebDataset shards: data_dir is a pattern)."""
    from rsst_tune.data.registry import DATASETS
    from rsst_tune.data.shards import wds

    return dataset in DATASETS and DATASETS.get(dataset) is wds


def _check_macs_budget(space: SearchSpace, budget: Any) -> float | None:
    """`--macs-budget B`: a number in (0, 1], for spaces that declare `macs_budget` (their
    proposals' MACs are analytic before training)."""
    if budget is None:
        return None
    ok = isinstance(budget, int | float) and not isinstance(budget, bool)
    if not ok or not math.isfinite(budget) or not 0 < budget <= 1:
        raise ConfigError(
            f"--macs-budget must be a fraction of the dense MACs in (0, 1], got {budget!r}"
        )
    if not space.macs_budget:
        from search_spaces import SPACES

        able = [n for n in SPACES.names() if SPACES.get(n).macs_budget]
        raise ConfigError(
            f"space {space.name} does not take --macs-budget (its MACs are known only after "
            f"training); spaces that do: {', '.join(able) or 'none'}"
        )
    return float(budget)


def _check_latency(
    opts: SweepOptions, space: SearchSpace, objectives: Any, base: Mapping[str, Any]
) -> dict[str, Any]:
    """`--latency-budget MS`, `--latency-batch B`, `--latency-table FILE` and the objective
    `latency_ms`: what the sweep needs of a latency table (empty: nothing)."""
    wanted = any(o.metric == "latency_ms" for o in objectives)
    budget = opts.latency_budget
    if budget is not None:
        ok = isinstance(budget, int | float) and not isinstance(budget, bool)
        if not ok or not math.isfinite(budget) or budget <= 0:
            raise ConfigError(f"--latency-budget must be a number of ms > 0, got {budget!r}")
        if not space.macs_budget:
            from search_spaces import SPACES

            able = [n for n in SPACES.names() if SPACES.get(n).macs_budget]
            raise ConfigError(
                f"space {space.name} does not take --latency-budget (the units it keeps are "
                f"known only after training); spaces that do: {', '.join(able) or 'none'}"
            )
    batch = opts.latency_batch
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 65536:
        raise ConfigError(f"--latency-batch must be an integer in [1, 65536], got {batch!r}")
    if not (wanted or budget is not None or opts.latency_table):
        return {}
    table = opts.latency_table
    if table is not None:
        path = Path(table).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--latency-table {table}: no such file")
        _check_table_fits(path, base, batch)
        table = str(path)
    return {
        "batch": int(batch),
        "table": table,
        "budget_ms": None if budget is None else float(budget),
    }


def _check_table_fits(path: Path, base: Mapping[str, Any], batch: int) -> None:
    """A given latency table must be of the sweep's model, batch and (when the sweep names
    one) image size: predictions from another would be silently wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        facts = {k: data[k] for k in ("model", "batch", "img_size", "device")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"--latency-table {path} is not a readable latency table: {exc}"
        ) from None
    wrong = []
    if facts["model"] != base.get("model"):
        wrong.append(f"model {facts['model']} (the sweep's: {base.get('model')})")
    if int(facts["batch"]) != batch:
        wrong.append(f"batch {facts['batch']} (--latency-batch {batch})")
    size = base.get("img_size")
    if size is not None and int(facts["img_size"]) != int(size):
        wrong.append(f"image size {facts['img_size']} (the sweep's: {size})")
    if wrong:
        raise ConfigError(
            f"--latency-table {path} was timed for another setting: {'; '.join(wrong)}"
        )


def _check_asha(space: SearchSpace, base: Mapping[str, Any]) -> None:
    varying = varying_sparsity_fields(space, base)
    if varying:
        raise ConfigError(
            f"--scheduler asha compares trials at the same pruning state, which is only the same "
            f"sparsity when the space does not search it; space {space.name} searches "
            f"{', '.join(varying)}: use --scheduler moasha (it ranks MACs too) or --scheduler fifo"
        )


def _check_halving(scheduler: str, grace: int | None, factor: int | None) -> dict[str, int]:
    """--grace and --reduction-factor: only for asha and moasha; moasha's first rung is a
    pruned state (>= 1), asha's may be the dense state 0; η an integer >= 2."""
    if scheduler not in DEFAULT_GRACE:
        if grace is not None or factor is not None:
            raise ConfigError(
                f"--grace and --reduction-factor apply to --scheduler moasha or asha, "
                f"not {scheduler}"
            )
        return {"grace": 0, "reduction_factor": DEFAULT_REDUCTION_FACTOR}
    low = 1 if scheduler == "moasha" else 0
    grace = DEFAULT_GRACE[scheduler] if grace is None else grace
    if grace < low:
        why = " (state 0 is the dense model, the same sparsity in every trial)" if low else ""
        raise ConfigError(
            f"--grace must be a pruning state >= {low} for {scheduler}{why}, got {grace}"
        )
    factor = DEFAULT_REDUCTION_FACTOR if factor is None else factor
    if not 2 <= factor <= MAX_REDUCTION_FACTOR:
        raise ConfigError(
            f"--reduction-factor must be an integer in [2, {MAX_REDUCTION_FACTOR}], got {factor}"
        )
    return {"grace": int(grace), "reduction_factor": int(factor)}


def halving_settings(plan: SweepPlan) -> tuple[int, int]:
    """(first rung state, reduction factor) of the plan's asha/moasha scheduler."""
    settings = plan.asha
    if "grace" in settings:
        grace = int(settings["grace"])
    else:  # an older plan: ASHA's grace period in iterations, state + 1
        grace = int(settings.get("grace_period", 1)) - 1
    return grace, int(settings.get("reduction_factor", DEFAULT_REDUCTION_FACTOR))


def moasha_rungs(plan: SweepPlan) -> list[int]:
    """The rung states MO-ASHA would use for the plan's trials (may be empty)."""

    grace, factor = halving_settings(plan)
    return rung_states(max(1, grace), factor, plan.states - 1)


def _check_fixed(space: Any, base: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    """Every --fix name must be a parameter the space searches, and every value one that
    `TrialConfig` accepts in the configs the space builds with it."""
    if not fixed:
        return
    params, _ = summarize(space, base, samples=32)
    searched = {p.name for p in params}
    unknown = sorted(set(fixed) - searched)
    if unknown:
        raise ConfigError(
            f"space {space.name} does not search {', '.join(unknown)} (--fix); it searches: "
            f"{', '.join(sorted(searched))}; set a field it does not search with --set NAME=VALUE"
        )
    pinned = " ".join(f"{k}={v!r}" for k, v in fixed.items())
    for name, value in fixed.items():
        if name in TrialConfig.field_names():
            try:
                TrialConfig.from_dict({**base, name: value})
            except ConfigError as exc:
                raise ConfigError(f"--fix {name}={value!r}: {exc}") from None
    try:
        summarize(space, base, samples=8, fixed=fixed)
    except ConfigError as exc:
        raise ConfigError(f"--fix {pinned}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a value of the wrong type for the space's code
        raise ConfigError(f"--fix {pinned}: not usable by space {space.name} ({exc})") from None


def _check_option_types(opts: SweepOptions) -> None:
    """Types and ranges of the options a caller may pass as Python values (the CLI's argparse
    types check the same): integers that are ints, numbers that are finite, names that are
    strings; every message names the option, the value and the valid range."""
    for name, low, high in (
        ("num_samples", 1, MAX_SAMPLES),
        ("max_concurrent", 1, MAX_SAMPLES),
        ("states", 1, None),
        ("epochs", 1, None),
        ("seed", 0, MAX_SEED),
        ("grace", 0, None),
        ("reduction_factor", 2, MAX_REDUCTION_FACTOR),
    ):
        value = getattr(opts, name)
        if value is None and name != "seed":
            continue
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value
        if not ok or (high is not None and value > high):
            shown = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(
                f"--{name.replace('_', '-')} must be an integer {shown}, got {value!r}"
            )
    for name in ("cpus_per_trial", "gpus_per_trial", "time_budget"):
        value = getattr(opts, name)
        if value is None or (name == "gpus_per_trial" and value == AUTO_SHARE):
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            auto = " or auto" if name == "gpus_per_trial" else ""
            raise ConfigError(
                f"--{name.replace('_', '-')} must be a finite number{auto}, got {value!r}"
            )
    for name in ("space", "sampler", "storage", "wandb", "command"):
        if not isinstance(getattr(opts, name), str):
            raise ConfigError(f"{name} must be a string, got {getattr(opts, name)!r}")
    for name in (
        "objective", "scheduler", "name", "dataset", "model", "preset", "device",
        "wandb_project", "wandb_entity",
    ):  # fmt: skip
        value = getattr(opts, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    if not isinstance(opts.share_dense, bool):
        raise ConfigError(f"share_dense must be true or false, got {opts.share_dense!r}")


def _check_workers_per_trial(opts: SweepOptions, base: Mapping[str, Any]) -> int:
    """`--workers-per-trial N`: an integer in [1, MAX_TRIAL_WORKERS]; with N > 1 each worker
    takes a whole GPU or none (`--gpus-per-trial` 1 or 0, not auto), the base batch size is
    divisible by N."""
    n = opts.workers_per_trial
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TRIAL_WORKERS:
        raise ConfigError(
            f"--workers-per-trial must be an integer in [1, {MAX_TRIAL_WORKERS}], got {n!r}"
        )
    if n == 1:
        return 1
    if opts.gpus_per_trial not in (0, 1):
        raise ConfigError(
            f"--workers-per-trial {n} takes --gpus-per-trial per worker: 1 (one GPU each, "
            f"nccl) or 0 (CPU, gloo), got {opts.gpus_per_trial!r}"
        )
    from rsst_tune.workers import check_divisible

    check_divisible(int(base["batch_size"]), n)
    return n


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is None or not value > 0 or not math.isfinite(value):  # NaN fails too
            raise ConfigError(
                f"--{name.replace('_', '-')} must be a finite number > 0, got {value}"
            )


def _check_epoch_budget(budget: Any) -> int | None:
    """`--epoch-budget B`: a whole number of trial-epochs >= 1 (None: no budget)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget != int(budget):
        raise ConfigError(f"--epoch-budget must be a whole number of trial-epochs, got {budget!r}")
    if budget < 1:
        raise ConfigError(f"--epoch-budget must be at least 1 trial-epoch, got {budget}")
    return int(budget)


def _check_at_most(high: float, **values: float) -> None:
    for name, value in values.items():
        if value > high:
            raise ConfigError(f"--{name.replace('_', '-')} must be at most {high:g}, got {value}")


def _default_name(space: str, preset: str | None) -> str:
    if is_object_spec(space):  # /path/my_space.py[:NAME] or package.module:NAME
        where, _, attr = space.partition(":") if not space.endswith(".py") else (space, "", "")
        where = where.partition(MODULE_AT)[0]
        stem = Path(where).stem if where.endswith(".py") else where.rpartition(".")[2]
        space = stem if attr in ("", "SPACE") else f"{stem}-{attr}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{space}-{preset}-{stamp}" if preset else f"{space}-{stamp}"


def is_uri(path: str) -> bool:
    """Whether a storage location is a URI (`s3://...`) rather than a local directory."""
    return "://" in path


def load_plan(experiment_dir: str | Path) -> SweepPlan:
    """The plan of an existing sweep, for `--resume`; a directory without one is an error."""
    path = Path(experiment_dir).expanduser()
    plan_file = path / PLAN_FILE
    if not plan_file.is_file():
        raise ConfigError(f"{path} holds no sweep to resume (no {PLAN_FILE})")
    try:
        plan = SweepPlan.from_json(plan_file.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{plan_file} is not a readable sweep plan: {exc}") from None
    # the user's registrations and the space's module, before Ray unpickles the searcher
    load_imports(plan.worker_imports)
    if not plan.is_uri:  # a moved or copied directory resumes in place, never at the original
        here = str(path.resolve())
        if here != plan.experiment_dir:
            log.info("%s was written at %s; resuming it in place", here, plan.experiment_dir)
        plan = dataclasses.replace(
            plan,
            experiment_dir=here,
            local_dir=here,
            storage=str(Path(here).parent),
            study_name=plan.study_name or plan.name,
        )
    return plan


# ---------------------------------------------------------------------- dry run
def describe_plan(plan: SweepPlan) -> str:
    """The resolved space and budget, as `--dry-run` prints it."""
    from search_spaces import get_space

    space = get_space(plan.space)
    params, _ = summarize(space, plan.base_config, seed=plan.seed, fixed=plan.fixed)
    samples = 64
    lines = [
        f"space       {space.name}: {space.description}",
        f"experiment  {plan.experiment_dir}",
        "base config (every trial; searched fields replace these):",
    ]
    for key, value in sorted(plan.base_config.items()):
        lines.append(f"  {key:<22} {value!r}")
    lines.append("searched parameters (Optuna define-by-run):")
    for p in params:
        when = "" if p.seen == samples else f"   conditional: in {p.seen}/{samples} samples"
        lines.append(f"  {p.name:<22} {p.distribution}{when}")
    for key, value in sorted(plan.fixed.items()):
        lines.append(f"  {key:<22} fixed at {value!r} (--fix)")
    if space.starting_points:
        lines.append(f"starting points enqueued first: {len(space.starting_points)}")
    lines.append(f"objectives  {objs.describe(plan.objectives)}")
    sampler = f"{plan.sampler} (seed {plan.seed})"
    sched = plan.scheduler
    grace, factor = halving_settings(plan)
    if sched == "asha":
        sched += (
            f" over pruning states (first rung state {grace}, reduction factor {factor}; "
            f"ranks {plan.objectives[0].key})"
        )
    elif sched == "moasha":
        rungs = moasha_rungs(plan)
        where = (
            f"rungs at states {', '.join(map(str, rungs))}"
            if rungs
            else f"no rung below the last state {plan.states - 1}, so no trial is stopped"
        )
        sched += (
            f" over pruning states ({where}; reduction factor {factor}; a trial continues "
            f"in the top 1/{factor} of its rung by non-dominated sort of "
            f"{', '.join(f'{o.key} ({o.mode})' for o in plan.objectives)}, "
            "crowding distance within a front)"
        )
    lines.append(f"sampler     {sampler}; scheduler {sched}")
    if plan.macs_budget is not None:
        lines.append(
            f"macs budget {plan.macs_budget:g} of the dense MACs at the last state (state "
            f"{plan.states - 1}): each proposal's MACs are computed before training, and one "
            "over the budget is told to Optuna as infeasible (user attr constraint) and "
            "proposed again, costing no trial"
        )
    if plan.latency:
        where = "given" if plan.latency.get("table") else "timed on the trials' device first"
        lines.append(
            f"latency     predicted at batch {plan.latency['batch']} from a table "
            f"({where}: {plan.latency_table_path})"
            + (
                f"; budget {plan.latency['budget_ms']:g} ms at the last state (proposals over "
                "it never run)"
                if plan.latency.get("budget_ms") is not None
                else ""
            )
        )
    if plan.confirm:
        lines.append(
            f"confirm     the top {plan.confirm} tickets of each budget re-run with 2 more "
            "seeds; chosen by the mean over seeds"
        )
    concurrent: int | str = plan.max_concurrent or "as resources allow"
    if plan.workers_per_trial > 1:  # `runner.workers_concurrency` sets it at the start
        concurrent = (
            f"{concurrent} (fewer if the cluster's GPUs, or CPUs, hold fewer trials' workers)"
            if plan.max_concurrent
            else "the cluster's GPUs (or CPUs) / a trial's workers'"
        )
    gpus = (
        "a GPU share sized at the start (--gpus-per-trial auto: one short probe of the trial "
        "on a GPU; none in the cluster: 0)"
        if plan.gpu_share.get("auto") and "share" not in plan.gpu_share
        else f"{plan.gpus_per_trial:g} GPU"
    )
    per = (
        f"{plan.workers_per_trial} workers x ({plan.cpus_per_trial:g} CPU, {gpus}) + a "
        f"{DRIVER_CPUS:g} CPU driver per trial (DDP)"
        if plan.workers_per_trial > 1
        else f"{plan.cpus_per_trial:g} CPU, {gpus} per trial"
    )
    lines.append(
        f"resources   {per}; "
        f"at most {concurrent} at once"
        + (f"; time budget {plan.time_budget_s:g}s" if plan.time_budget_s else "")
        + (
            f"; epoch budget {plan.epoch_budget} trial-epochs (no trial starts once they are "
            "spent or committed to running trials)"
            if plan.epoch_budget is not None
            else ""
        )
    )
    trial_states = plan.num_samples * plan.states
    epochs = trial_states * int(plan.base_config["epochs"])
    bound = "at most " if plan.scheduler in ("asha", "moasha") else ""
    lines.append(
        f"would run   {plan.num_samples} trials x {plan.states} states = {bound}{trial_states} "
        f"trial-states ({bound}{epochs} epochs of {plan.base_config['model']} on "
        f"{plan.base_config['dataset']})"
    )
    return "\n".join(lines)


def _check_tags(tags: Any) -> tuple[str, ...]:
    """`--wandb-tags a,b`: non-empty names of at most 64 characters (W&B's limit)."""
    out = []
    for tag in tags or ():
        if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > 64:
            raise ConfigError(f"--wandb-tags: each tag is 1 to 64 characters, got {tag!r}")
        out.append(tag.strip())
    return tuple(out)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_confirm(value: Any) -> int:
    """`--confirm K`: tickets per budget to confirm with more seeds, an integer in
    [0, MAX_CONFIRM] (0: no confirmation)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONFIRM:
        raise ConfigError(f"--confirm must be an integer in [0, {MAX_CONFIRM}], got {value!r}")
    return value


def _check_max_failures(value: Any) -> int:
    """`--max-failures`: restarts per trial, an integer in [0, MAX_FAILURES]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FAILURES:
        raise ConfigError(
            f"--max-failures must be an integer in [0, {MAX_FAILURES}], got {value!r}"
        )
    return value
