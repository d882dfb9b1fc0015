"""Build the Ray Tuner for a plan (or restore it), run it, and finish the sweep.

`execute` returns the finished sweep as an `Experiment` (None with URI storage) and raises
`SweepInterrupted` when it stopped before its trials finished (Ctrl+C, SIGTERM, a storage
error); the report is written either way. Ray is imported here only, so that resolving,
validating and `--dry-run` (`plan.py`) never import it.

Reliability (docs/reliability.md): a trial whose worker or node dies is restarted from its
last state checkpoint up to `plan.max_failures` times (`FailureConfig`); SIGTERM stops the
sweep like Ctrl+C; when the sweep stops, the dense-cache locks of its stopped trials are
released; `--resume` first settles what a killed driver left behind (`_recover`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from rsst_tune import fileio
from rsst_tune.best_exports import EXPORT_MODES, export_best
from rsst_tune.errors import ConfigError, ReportFailed, SweepInterrupted
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.layout import JOURNAL_FILE, PLAN_FILE, SWEEP_FILE
from rsst_tune.experiment.reader import (
    last_row,
    load_experiment,
    open_study,
    snapshot_trials,
    trial_error,
)
from rsst_tune.tune.confirm import run_confirmation
from rsst_tune.tune.gpu_share import resolve_share
from rsst_tune.tune.plan import SweepPlan
from rsst_tune.tune.run.context import ContextHolder, SweepContext, running
from rsst_tune.tune.run.legacy import alias_moved_modules
from rsst_tune.tune.run.ray_setup import (
    Reaper,
    init_ray,
    prepare_ray_env,
    restore_ray_env,
    start_reaper,
)
from rsst_tune.tune.run.storage import describe_storage_error, storage_error
from rsst_tune.tune.run.trainable import ray_trial_dirname, ray_trial_name, trainable_for
from rsst_tune.tune.search.samplers import make_sampler
from rsst_tune.tune.search.schedulers import SCHEDULERS

log = logging.getLogger(__name__)

FINISHED = ("TERMINATED", "ERROR")
LOST_DIR = "lost_trials"  # trial directories Ray never recorded (a killed driver), on resume


def execute(
    plan: SweepPlan, *, resume: bool, address: str | None, verbose: bool, show: bool
) -> Experiment | None:
    """Run the plan in its experiment directory; see `rsst_tune.tune.sweep.run_sweep`."""
    context = SweepContext()  # this sweep's: its callbacks, searcher and stopper share it
    prepare_ray_env(address, context.ray_env)
    try:
        return _execute(plan, context, resume=resume, address=address, verbose=verbose, show=show)
    finally:  # also when it fails before Ray starts (init_ray gives it back otherwise)
        restore_ray_env(context.ray_env)


def _execute(
    plan: SweepPlan,
    context: SweepContext,
    *,
    resume: bool,
    address: str | None,
    verbose: bool,
    show: bool,
) -> Experiment | None:
    from rsst_tune.tune.console import sweep_logging

    local = Path(plan.local_dir)
    local.mkdir(parents=True, exist_ok=True)
    reaper: Reaper | None = None
    with sweep_logging(local, verbose=verbose, context=context), _wandb_env(plan.wandb, address):
        # a cluster that cannot be joined leaves no sweep behind
        started = init_ray(address, context.ray_env)
        try:
            if started and address is None:
                reaper = start_reaper()
            with _sigterm_as_sigint():
                try:
                    if not resume:
                        plan, said = resolve_share(plan)  # --gpus-per-trial auto
                        plan, said_too = workers_concurrency(plan)
                        for line in (said, said_too):
                            if line:
                                _say(show, line)
                                log.info("%s", line)
                        fileio.write_text(local / PLAN_FILE, plan.to_json() + "\n")
                        if plan.sweep_file:
                            fileio.write_text(local / SWEEP_FILE, plan.sweep_file)
                    log.info("sweep %s: %s", "resumed" if resume else "started", plan.to_json())
                    return _fit(plan, context, resume=resume, show=show)
                except KeyboardInterrupt:
                    log.info("sweep interrupted (KeyboardInterrupt)")
                    raise SweepInterrupted(plan.local_dir) from None
                except SweepInterrupted:
                    raise
                except Exception as exc:
                    failure = storage_error(exc) or context.storage_failure
                    if failure is None:
                        raise
                    context.note_storage_failure(failure)
                    log.info("the sweep stopped on a storage error", exc_info=True)
                    raise SweepInterrupted(plan.local_dir, _storage_reason(plan, failure)) from None
        finally:
            if started:
                import ray

                ray.shutdown()
            if reaper is not None:
                reaper.close()
            _release_dense_locks(plan, wait_s=0.0 if started else 10.0)
            _sign(plan)  # Ray has stopped writing: what it wrote may be resumed


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM stops the sweep as Ctrl+C does (Ray's handler saves the experiment state and
    ends the trials; outside `fit` a KeyboardInterrupt), so the locks and the report are
    settled and the resume command printed, instead of the process just dying."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _release_dense_locks(plan: SweepPlan, *, wait_s: float) -> None:
    """Remove the dense-cache locks left by trials this sweep stopped (their processes are
    gone; with a joined cluster, wait a little for them to exit)."""
    if plan.dense_cache_dir is None:
        return
    from rsst_tune.dense_cache import LOCK_SUFFIX, release_dead_locks

    root = Path(plan.dense_cache_dir)
    if not root.is_dir() or not any(root.glob(f"*{LOCK_SUFFIX}")):
        return
    try:
        release_dead_locks(root, wait_s=wait_s)
    except OSError as exc:
        log.warning("could not release the dense-cache locks in %s: %s", root, exc)


def _fit(plan: SweepPlan, context: SweepContext, *, resume: bool, show: bool) -> Experiment | None:
    from ray import tune

    local = Path(plan.local_dir)
    ensure_latency_table(plan, show)
    trainable = trainable_for(plan)
    if resume:
        if not tune.Tuner.can_restore(plan.experiment_dir):
            raise ConfigError(f"{plan.experiment_dir} holds no Ray Tune experiment state to resume")
        _recover(plan)
        alias_moved_modules()  # a sweep started before tune/ was split into rooms
        tuner = tune.Tuner.restore(
            plan.experiment_dir,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        _bind_restored(tuner, context)
        if plan.wandb != "off":
            _keyless_wandb(tuner)
    else:
        tuner = _new_tuner(plan, trainable, context, show=show)
    _say(
        show,
        f"sweep {plan.name}: space {plan.space}, {plan.num_samples} trials x "
        f"{plan.states} states"
        + ("" if plan.epoch_budget is None else f" (at most {plan.epoch_budget} trial-epochs)")
        + ", objectives "
        f"{', '.join(f'{o.key} ({o.mode})' for o in plan.objectives)}",
    )
    _say(
        show,
        f"experiment {plan.experiment_dir}  (logs: {local / 'sweep.log'}; "
        f"dashboard: optuna-dashboard {local / JOURNAL_FILE})",
    )
    _warn_idle_gpus(plan, show)
    _sign(plan)  # tuner.pkl, written by Ray as the Tuner was made
    t0 = time.monotonic()
    with running(context):  # Ray's own stopper on --resume reads it (context.running)
        tuner.fit()  # Ctrl+C (or SIGTERM): Ray stops the trials, saves its state and returns
    elapsed = time.monotonic() - t0
    return _finish(plan, context, elapsed, show=show)


def _recover(plan: SweepPlan) -> None:
    """Before `--resume` restores Ray: settle what a driver killed mid-sweep left behind.

    Ray restores the trials of its last experiment-state snapshot (saved every second,
    `ray_setup.SNAPSHOT_PERIOD_S`); unfinished ones restart from their last registered
    state checkpoint. A trial started after that snapshot is unknown to Ray and cannot be
    resumed: its directory moves to `lost_trials/` and its Optuna trial is told FAIL with the
    reason in user attr `fail_reason`, so that no Optuna trial stays RUNNING and no trial
    directory outside Ray's record is read as a trial; Ray's search state stops counting it
    (`searcher.recount_search_state`), so the resumed sweep still runs `--num-samples`
    trials. Locks of dead trials are released.
    """
    if plan.is_uri:
        return
    from rsst_tune.tune.run.ray_state import repair_ray_state
    from rsst_tune.tune.search.searcher import fail_lost, recount_search_state

    exp_dir = Path(plan.experiment_dir)
    repaired = repair_ray_state(exp_dir)
    if repaired:
        log.warning("%s", repaired)
    _release_dense_locks(plan, wait_s=0.0)
    known = snapshot_trials(exp_dir)
    if known is None:
        return
    lost = sorted(
        p for p in exp_dir.glob("trial_*") if p.is_dir() and p.name[len("trial_") :] not in known
    )
    for path in lost:
        target = exp_dir / LOST_DIR / path.name
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        path.rename(target)
        log.warning(
            "trial %s started after Ray's last record of the sweep (the driver was killed): "
            "it cannot be resumed; its files are in %s",
            path.name,
            target,
        )

    def reason(ray_id: str | None) -> str:
        if ray_id is None:
            return "lost: the driver stopped before the trial was handed to Ray"
        return (
            f"lost: the driver was killed before Ray recorded trial {ray_id}; it was not "
            f"resumed (files in {LOST_DIR}/trial_{ray_id} if any)"
        )

    study = open_study(exp_dir, plan.study_name or plan.name)
    if study is not None:
        failed = fail_lost(study, known, reason)
        if failed:
            log.warning("%d Optuna trials Ray never recorded were told FAIL", failed)
    recounted = recount_search_state(exp_dir, known)  # the lost trials are generated again
    if recounted:
        log.warning("%s", recounted)


def workers_concurrency(plan: SweepPlan) -> tuple[SweepPlan, str]:
    """With `--workers-per-trial N`: at most as many trials at once as the cluster holds
    trials' workers, at least 1, whatever `--max-concurrent` or the preset asked for. More
    would start trials whose Ray Train runs wait for resources that other waiting runs hold
    (two such runs on 2 CPUs waited for each other for good). With shared storage a trial's
    workers may span nodes: the cluster's GPUs (CPUs, for CPU workers) over a trial's. With
    URI storage they run on the node of the trial's driver (`_fits_per_node`). Returns the
    plan and a line saying what was chosen ("" with one worker per trial)."""
    if plan.workers_per_trial <= 1:
        return plan, ""
    import ray

    from rsst_tune.tune.plan import DRIVER_CPUS

    n = plan.workers_per_trial
    if plan.workers_dir is None:
        fits = _fits_per_node(plan)
        basis = f"trials whose {n} workers fit on one node, summed over the nodes: {fits}"
    else:
        have = ray.cluster_resources()
        if plan.gpus_per_trial > 0:
            what, total, per = "GPUs", float(have.get("GPU", 0.0)), n * plan.gpus_per_trial
        else:  # each trial's driver holds a little CPU beside its workers
            what, total = "CPUs", float(have.get("CPU", 0.0))
            per = n * plan.cpus_per_trial + DRIVER_CPUS
        fits = max(1, int(total // per))
        basis = f"the cluster's {total:g} {what} / {per:g} per trial"
    k = min(fits, plan.max_concurrent or fits)
    lowered = k < (plan.max_concurrent or 0)
    said = (
        f"workers: {n} per trial; at most {k} trial(s) at once ({basis}"
        + (f"; lowered from --max-concurrent {plan.max_concurrent}" if lowered else "")
        + ")"
    )
    return dataclasses.replace(plan, max_concurrent=k), said


def _fits_per_node(plan: SweepPlan) -> int:
    """With URI storage a trial's workers run on the node of its driver (they share its
    local run directory), and Tune may start a driver on any node: every node must hold a
    driver and its workers, else a ConfigError naming what the smallest lacks (Ray would
    wait for such a placement for ever). Returns the trials the nodes hold at once."""
    import ray

    from rsst_tune.tune.plan import DRIVER_CPUS

    n = plan.workers_per_trial
    need = {"CPU": n * plan.cpus_per_trial + DRIVER_CPUS}
    if plan.gpus_per_trial > 0:
        need["GPU"] = n * plan.gpus_per_trial
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    total = 0
    for res in nodes:
        fits = min(int(float(res.get(k, 0.0)) // v) for k, v in need.items())
        for kind, amount in need.items():
            have = float(res.get(kind, 0.0))
            if have < amount:
                each = plan.gpus_per_trial if kind == "GPU" else plan.cpus_per_trial
                raise ConfigError(
                    f"--workers-per-trial {n} with storage {plan.storage}: a trial's workers "
                    f"must fit on one node ({n} x {each:g} {kind}s, on the node of its "
                    f"driver), and a node has {have:g}; use a shared folder as --storage to "
                    "let them span nodes (docs/multi_gpu.md)"
                )
        total += fits
    return max(1, total)


def _sign(plan: SweepPlan) -> None:
    """Sign the pickles Ray wrote in the experiment directory (`trust.sign_all`), so that
    `--resume` unpickles them; with URI storage they are not checked."""
    if plan.is_uri or not Path(plan.experiment_dir).is_dir():
        return
    from rsst_tune.tune.safety.trust import sign_all

    sign_all(plan.experiment_dir)


def _warn_idle_gpus(plan: SweepPlan, show: bool) -> None:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus and not plan.gpus_per_trial:
        _say(
            show,
            f"note: the cluster has {gpus:g} GPUs but --gpus-per-trial is 0, so trials "
            "run on CPU; pass e.g. --gpus-per-trial 0.5",
        )


def ensure_latency_table(plan: SweepPlan, show: bool) -> None:
    """Build the sweep's latency table (`rsst_tune.latency_model`) in this process before any
    trial, on the device its trials use, unless it exists (given, or built before a resume)."""
    path = plan.latency_table_path
    if path is None or Path(path).is_file():
        return
    if plan.latency.get("table"):
        raise ConfigError(f"--latency-table {path}: the file is gone (it was there at the start)")
    import torch

    from rsst_tune.config import TrialConfig
    from rsst_tune.latency_model import table_for_config

    cfg = TrialConfig.from_dict(plan.base_config)
    wants = str(plan.base_config.get("device", "auto"))
    on_gpu = wants.startswith("cuda") or (wants == "auto" and plan.gpus_per_trial > 0)
    if on_gpu and not torch.cuda.is_available():
        raise ConfigError(
            "the latency table must be timed on the trials' GPU, and this machine has no CUDA "
            "device: on a GPU node run `rsst-tune latency-table --model "
            f"{cfg.model} --device cuda --batch {plan.latency['batch']} --out FILE` and pass "
            "--latency-table FILE"
        )
    device = "cuda" if on_gpu else ("mps" if wants == "mps" else "cpu")
    _say(show, f"latency table: timing {cfg.model} at batch {plan.latency['batch']} on {device}")
    table = table_for_config(cfg, batch=int(plan.latency["batch"]), device=device)
    table.save(path)
    _say(show, f"latency table: {table.describe()} ({table.built_s:.0f}s)")


def _new_tuner(plan: SweepPlan, trainable: Any, context: SweepContext, *, show: bool) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from rsst_tune.tune.console import EVENTS_FILE, StorageGuard, SweepConsole
    from rsst_tune.tune.run.retention import CheckpointRetention, ray_num_to_keep
    from rsst_tune.tune.safety.retries import RetryPolicy
    from rsst_tune.tune.safety.trust import StateSigner
    from rsst_tune.tune.search.searcher import PruningAwareOptunaSearch, journal_storage
    from search_spaces import get_space

    space = get_space(plan.space)
    local = Path(plan.local_dir)
    keys = [o.key for o in plan.objectives]
    modes = [o.mode for o in plan.objectives]
    budget: Any = None
    if plan.macs_budget is not None:  # proposals over it never reach Ray (searcher._feasible)
        from rsst_tune.pruning.budget import MacsBudget

        budget = MacsBudget(plan.base_config, plan.macs_budget)
    if plan.latency.get("budget_ms") is not None:  # both budgets: the larger excess decides
        from rsst_tune.macs_plan import LatencyBudget

        budget = LatencyBudget(
            plan.base_config, plan.latency["budget_ms"], str(plan.latency_table_path),
            plan.macs_budget,
        )  # fmt: skip
    planned = plan.num_samples  # TPE's random start-up is a fifth of the trials planned
    if plan.epoch_budget is not None:  # ... or of the full-length trials the budget buys
        from rsst_tune.tune.search.epoch_budget import full_trials

        planned = min(
            planned, full_trials(plan.epoch_budget, plan.base_config, plan.workers_per_trial)
        )
    searcher = PruningAwareOptunaSearch(
        functools.partial(space.sample, fixed=plan.fixed, base=plan.base_config),
        metric=keys if len(keys) > 1 else keys[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=make_sampler(plan.sampler, plan.seed, planned, plan.max_concurrent),
        constraint=budget,
        study_name=plan.study_name or plan.name,
        storage=journal_storage(local / JOURNAL_FILE),
        points_to_evaluate=[
            {k: v for k, v in p.items() if k not in plan.fixed}
            for p in space.starting_points[: plan.num_samples]
        ],
        context=context,
    )
    search_alg: Any = searcher
    if plan.max_concurrent:
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
    if plan.epoch_budget is not None:  # outermost: asked first whether a trial may start
        from rsst_tune.tune.search.epoch_budget import EpochBudget

        search_alg = EpochBudget(
            search_alg, plan.epoch_budget, plan.base_config, plan.experiment_dir,
            workers=plan.workers_per_trial,
        )  # fmt: skip
    scheduler = SCHEDULERS.get(plan.scheduler)(plan.scheduler_spec())
    callbacks: list[Any] = [
        RetryPolicy(context),  # only infrastructure failures are retried
        StateSigner(),  # Ray's state signed as it is saved: `--resume` loads it
        SweepConsole(
            str(local / EVENTS_FILE),
            plan.objectives,
            plan.base_config,
            context=context,
            experiment_dir=plan.experiment_dir,
            show=show,
        ),
    ]
    if plan.keep_checkpoints == "best":
        callbacks.append(
            CheckpointRetention(
                plan.keep_checkpoints, plan.confirm, None if plan.is_uri else str(local)
            )
        )
    callbacks += _wandb_callbacks(plan)
    return tune.Tuner(
        trainable,
        param_space=dict(plan.base_config),
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=plan.num_samples,
            time_budget_s=plan.time_budget_s,
            reuse_actors=True,
            trial_name_creator=ray_trial_name,
            trial_dirname_creator=ray_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            verbose=0,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=ray_num_to_keep(plan.keep_checkpoints)
            ),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            stop=StorageGuard(context),
        ),
    )


def _wandb_callbacks(plan: SweepPlan) -> list[Any]:
    if plan.wandb == "off":
        return []
    from rsst_tune.tune.run.wandb_callback import KeylessWandbCallback

    return [
        KeylessWandbCallback(
            project=plan.wandb_project or os.environ.get("WANDB_PROJECT", "rsst-tune"),
            entity=plan.wandb_entity or os.environ.get("WANDB_ENTITY") or None,
            tags=list(plan.wandb_tags) or None,
            group=plan.name,
            mode=plan.wandb,
            dir=plan.local_dir,  # offline runs stay in the experiment directory (wandb/)
            upload_timeout=120,  # wait for every run's wandb.finish (history, exit record)
            excludes=["heads_per_layer", "neurons_per_layer", "filters_per_layer"],
        )
    ]


def _bind_restored(tuner: Any, context: SweepContext) -> None:
    """The pieces of a restored Tuner come from `tuner.pkl`, without a context: bind this
    sweep's `context` to its callbacks, stopper and searcher (Ray's own copy of the stopper,
    which replaces this one inside `fit`, reads `context.running`). A sweep started by an older
    rsst-tune has no `RetryPolicy` (nor `StateSigner`) in `tuner.pkl`: add them."""
    from rsst_tune.tune.safety.retries import RetryPolicy
    from rsst_tune.tune.safety.trust import StateSigner

    local = getattr(tuner, "_local_tuner", None)
    run_config = getattr(local, "_run_config", None)
    if run_config is None:
        return
    callbacks = list(getattr(run_config, "callbacks", None) or ())
    if not any(isinstance(c, StateSigner) for c in callbacks):
        callbacks.insert(0, StateSigner())
    if not any(isinstance(c, RetryPolicy) for c in callbacks):
        callbacks.insert(0, RetryPolicy(context))
    run_config.callbacks = callbacks
    pieces = [*callbacks, getattr(run_config, "stop", None)]
    search_alg = getattr(getattr(local, "_tune_config", None), "search_alg", None)
    while search_alg is not None:  # EpochBudget, ConcurrencyLimiter, the searcher
        pieces.append(search_alg)
        search_alg = getattr(search_alg, "searcher", None)
    for piece in pieces:
        if isinstance(piece, ContextHolder):
            piece.bind(context)


WANDB_KEY = "WANDB_API_KEY"


def _keyless_wandb(tuner: Any) -> None:
    """A sweep started by an older rsst-tune stored Ray's own W&B callback in `tuner.pkl`;
    make it the keyless one (a subclass without state of its own) before it starts actors."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    from rsst_tune.tune.run.wandb_callback import KeylessWandbCallback

    run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    for callback in getattr(run_config, "callbacks", None) or ():
        if type(callback) is WandbLoggerCallback:
            callback.__class__ = KeylessWandbCallback


@contextlib.contextmanager
def _wandb_env(mode: str, address: str | None) -> Iterator[None]:
    """The environment W&B needs, set before Ray starts (a local raylet inherits it).

    Offline W&B must not look for an API key (Ray checks WANDB_MODE in the driver) and gets
    none: `WANDB_API_KEY` leaves the environment for the sweep, so that no Ray process, log
    or W&B file of it can hold the key. Online, the key stays in the driver's environment,
    which the local raylet and so the logging actors inherit; it never goes into Ray's
    runtime_env (`wandb_callback.KeylessWandbCallback`).
    """
    if mode == "off":
        yield
        return
    names = ("WANDB_MODE", "WANDB_SILENT", WANDB_KEY) if mode == "offline" else ()
    saved = {k: os.environ.get(k) for k in names}
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_SILENT"] = "true"
        os.environ.pop(WANDB_KEY, None)
    elif address is not None and os.environ.get(WANDB_KEY):
        log.info(
            "--wandb online with --address: the logging actors take WANDB_API_KEY from the "
            "environment of the cluster's raylet on this node (rsst-tune never passes it "
            "through Ray)"
        )
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _finish(
    plan: SweepPlan, context: SweepContext, elapsed: float, *, show: bool
) -> Experiment | None:
    """Classify how the sweep ended, settle the study, write the report, and (when every
    trial finished) export and time each budget's best ticket once (into best_exports/;
    tickets already recorded are skipped).

    Returns the experiment (None with URI storage); raises SweepInterrupted when trials are
    unfinished (after writing the report of what finished, errored trials included).
    """
    from ray.tune import ExperimentAnalysis

    from rsst_tune.tune.console import print_stop_summary

    failure = context.storage_failure
    if failure is not None:  # Ray's files may be cut off: read nothing, write nothing
        log.info("sweep %s", _storage_reason(plan, failure))
        raise SweepInterrupted(plan.local_dir, _storage_reason(plan, failure))
    analysis = ExperimentAnalysis(plan.experiment_dir)
    statuses = {str(t.trial_id): str(t.status) for t in analysis.trials}
    unfinished = [t for t, s in statuses.items() if s not in FINISHED]
    budget_hit = plan.time_budget_s is not None and elapsed >= 0.98 * plan.time_budget_s
    spent = _epochs_spent(analysis) if plan.epoch_budget is not None else 0
    epochs_hit = plan.epoch_budget is not None and spent >= plan.epoch_budget
    stopped = bool(unfinished) or (
        len(statuses) < plan.num_samples and not budget_hit and not epochs_hit
    )
    _settle_study(plan, statuses, "time_budget" if budget_hit else "stopped")
    counts: dict[str, int] = {}
    experiment = None
    if not plan.is_uri:
        from rsst_tune.experiment.reader import load_experiment

        experiment = load_experiment(plan.experiment_dir)
        for t in experiment.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if stopped:
        reason = f"interrupted after {elapsed:.0f}s with {len(unfinished)} unfinished trials"
        log.info("sweep %s", reason)
        if experiment is not None:
            report = write_report_if_available(
                experiment, Path(plan.experiment_dir), export="recorded"
            )
            if report is not None:
                _say(show, f"report so far {report}  ({summary})")
        raise SweepInterrupted(plan.local_dir, reason)
    _say(show, f"finished in {elapsed:.0f}s: {summary or f'{len(statuses)} trials'}")
    if plan.epoch_budget is not None:
        _say(show, f"trial-epochs spent: {spent} (--epoch-budget {plan.epoch_budget})")
    if experiment is not None:  # what MO-ASHA/ASHA stopped: the report's line too
        print_stop_summary(experiment, show=show)
    if experiment is not None and plan.confirm:
        experiment = _confirm(plan, experiment, show=show)
    if experiment is not None:
        report = write_report_if_available(
            experiment, Path(plan.experiment_dir), export="missing", onnx=plan.onnx
        )
        if report is None:  # the sweep ran; a missing report is still a failed command
            raise ReportFailed(plan.experiment_dir)
        _say(show, f"report {report}")
    else:
        _upload_side_files(plan)
    return experiment


def _epochs_spent(analysis: Any) -> int:
    """Trial-epochs the sweep spent: `epochs_trained` of every state of every trial (a state
    a resumed trial reported twice counts once)."""
    total = 0
    for frame in analysis.trial_dataframes.values():
        if "epochs_trained" in frame and "state" in frame:
            total += int(frame.drop_duplicates("state", keep="last")["epochs_trained"].sum())
    return total


def _confirm(plan: SweepPlan, experiment: Experiment, *, show: bool) -> Experiment:
    """The seed-confirmation stage (`--confirm K`), then the experiment with its record. An
    interrupted stage still leaves a report of the sweep (its finished runs are recorded and
    `--resume` runs only the rest)."""

    try:
        run_confirmation(plan, experiment, plan.confirm, show=show)
    except SweepInterrupted:
        write_report_if_available(
            load_experiment(plan.experiment_dir), Path(plan.experiment_dir), export="recorded"
        )
        raise
    return load_experiment(plan.experiment_dir)


def _storage_reason(plan: SweepPlan, failure: OSError) -> str:
    return (
        f"stopped: {describe_storage_error(failure)} in {plan.storage} "
        "(make room or fix its permissions first)"
    )


def _settle_study(plan: SweepPlan, statuses: dict[str, str], stopped_reason: str) -> None:
    """Tell Optuna how finished Ray trials ended where it still has them RUNNING (trials
    the time budget ended; tells a killed driver or a full disk prevented)."""
    if plan.is_uri:
        return
    from rsst_tune.tune.search.searcher import settle_finished

    study = open_study(Path(plan.local_dir), plan.study_name or plan.name)
    if study is None:
        return
    finished = {
        t: (
            s,
            last_row(plan.experiment_dir, t),
            trial_error(plan.experiment_dir, t) if s == "ERROR" else None,
        )
        for t, s in statuses.items()
        if s in FINISHED
    }
    try:
        settled = settle_finished(study, finished, [o.key for o in plan.objectives], stopped_reason)
    except OSError as exc:
        log.warning("could not settle the Optuna study: %s", exc)
        return
    if settled:
        log.info("%d finished trials still RUNNING in Optuna were settled", settled)


def write_report_if_available(
    experiment: Any, out_dir: Path, *, export: str = "recorded", onnx: bool = True
) -> Path | None:
    """The export step (`rsst_tune.best_exports.export_best`) as `export` asks, then the
    renderer (`rsst_tune.report.write_report`), when that module is installed; never fails the
    sweep.

    `export`: "recorded" exports nothing (the report renders the best tickets' recorded
    exports and measures nothing); "missing" first exports and times those not recorded yet;
    "all" does it for every one; `onnx`: the exports also write and time model.onnx.
    """

    try:
        from rsst_tune.report import write_report
    except ImportError as exc:
        log.warning("no best-config report: rsst_tune.report is not available (%s)", exc)
        return None
    if export not in EXPORT_MODES:
        raise ValueError(f"export must be one of {EXPORT_MODES}, got {export!r}")
    try:
        if export != "recorded":
            export_best(experiment, out_dir, replace=export == "all", onnx=onnx)
        return Path(write_report(experiment, out_dir))
    except Exception:
        log.exception("writing the report failed; the sweep's results are intact in %s", out_dir)
        return None


def _upload_side_files(plan: SweepPlan) -> None:
    """With URI storage, copy sweep.json, the journal and the logs next to Ray's files."""
    import pyarrow.fs

    try:
        pyarrow.fs.copy_files(plan.local_dir, plan.experiment_dir)
    except Exception as exc:
        log.warning("could not upload %s to %s: %s", plan.local_dir, plan.experiment_dir, exc)


def _say(show: bool, text: str) -> None:
    """The console view's own lines (the only prints of the sweep)."""
    if show:
        print(text, flush=True)
