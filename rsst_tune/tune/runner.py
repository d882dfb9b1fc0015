"""Build the Ray Tuner for a plan (or restore it), run it, and finish the sweep.

`execute` returns the finished sweep as an `Experiment` (None with URI storage) and raises
`SweepInterrupted` when it stopped before its trials finished. Ray is imported here only, so
that resolving, validating and `--dry-run` (`plan.py`) never import it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rsst_tune import fileio
from rsst_tune.errors import ConfigError, SweepInterrupted
from rsst_tune.tune.plan import PLAN_FILE, SweepPlan
from rsst_tune.tune.ray_setup import init_ray, prepare_ray_env
from rsst_tune.tune.records import Experiment

log = logging.getLogger(__name__)

FINISHED = ("TERMINATED", "ERROR")


def trial_name(trial: Any) -> str:
    return str(trial.trial_id)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def execute(
    plan: SweepPlan, *, resume: bool, address: str | None, verbose: bool, show: bool
) -> Experiment | None:
    """Run the plan in its experiment directory; see `rsst_tune.tune.sweep.run_sweep`."""
    prepare_ray_env(address)
    from rsst_tune.tune.console import sweep_logging

    local = Path(plan.local_dir)
    local.mkdir(parents=True, exist_ok=True)
    with sweep_logging(local, verbose=verbose):
        started = init_ray(address)  # a cluster that cannot be joined leaves no sweep behind
        if not resume:
            fileio.write_text(local / PLAN_FILE, plan.to_json() + "\n")
        log.info("sweep %s: %s", "resumed" if resume else "started", plan.to_json())
        try:
            return _fit(plan, resume=resume, show=show)
        except KeyboardInterrupt:
            log.info("sweep interrupted (KeyboardInterrupt)")
            raise SweepInterrupted(plan.local_dir) from None
        finally:
            if started:
                import ray

                ray.shutdown()


def _fit(plan: SweepPlan, *, resume: bool, show: bool) -> Experiment | None:
    from ray import tune

    from rsst_tune.tune.searcher import JOURNAL_FILE

    local = Path(plan.local_dir)
    trainable = _trainable(plan)
    with _wandb_env(plan.wandb):
        if resume:
            if not tune.Tuner.can_restore(plan.experiment_dir):
                raise ConfigError(
                    f"{plan.experiment_dir} holds no Ray Tune experiment state to resume"
                )
            tuner = tune.Tuner.restore(
                plan.experiment_dir,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        else:
            tuner = _new_tuner(plan, trainable, show=show)
        _say(
            show,
            f"sweep {plan.name}: space {plan.space}, {plan.num_samples} trials x "
            f"{plan.states} states, objectives "
            f"{', '.join(f'{o.key} ({o.mode})' for o in plan.objectives)}",
        )
        _say(
            show,
            f"experiment {plan.experiment_dir}  (logs: {local / 'sweep.log'}; "
            f"dashboard: optuna-dashboard {local / JOURNAL_FILE})",
        )
        _warn_idle_gpus(plan, show)
        t0 = time.monotonic()
        tuner.fit()
        elapsed = time.monotonic() - t0
    return _finish(plan, elapsed, show=show)


def _warn_idle_gpus(plan: SweepPlan, show: bool) -> None:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus and not plan.gpus_per_trial:
        _say(
            show,
            f"note: the cluster has {gpus:g} GPUs but --gpus-per-trial is 0, so trials "
            "run on CPU; pass e.g. --gpus-per-trial 0.5",
        )


def _trainable(plan: SweepPlan) -> Any:
    from ray import tune

    from rsst_tune.tune.trainable import train_trial

    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    return tune.with_resources(
        tune.with_parameters(
            train_trial, objectives=plan.objectives, dense_cache_dir=plan.dense_cache_dir
        ),
        resources,
    )


def _new_tuner(plan: SweepPlan, trainable: Any, *, show: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from rsst_tune.tune.console import EVENTS_FILE, SweepConsole
    from rsst_tune.tune.searcher import (
        JOURNAL_FILE,
        PruningAwareOptunaSearch,
        journal_storage,
        make_sampler,
    )
    from search_spaces import get_space

    space = get_space(plan.space)
    local = Path(plan.local_dir)
    keys = [o.key for o in plan.objectives]
    modes = [o.mode for o in plan.objectives]
    searcher = PruningAwareOptunaSearch(
        functools.partial(space.sample, fixed=plan.fixed),
        metric=keys if len(keys) > 1 else keys[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=make_sampler(plan.sampler, plan.seed, plan.num_samples, plan.max_concurrent),
        study_name=plan.study_name or plan.name,
        storage=journal_storage(local / JOURNAL_FILE),
        points_to_evaluate=[
            {k: v for k, v in p.items() if k not in plan.fixed}
            for p in space.starting_points[: plan.num_samples]
        ],
    )
    search_alg: Any = searcher
    if plan.max_concurrent:
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
    first = plan.objectives[0]
    if plan.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="training_iteration",
            metric=first.key,
            mode=first.mode,
            max_t=plan.states,
            grace_period=plan.asha["grace_period"],
            reduction_factor=plan.asha["reduction_factor"],
        )
    else:
        scheduler = FIFOScheduler()
    callbacks: list[Any] = [
        SweepConsole(
            str(local / EVENTS_FILE),
            plan.objectives,
            plan.base_config,
            experiment_dir=plan.experiment_dir,
            show=show,
        )
    ]
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
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            verbose=0,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _wandb_callbacks(plan: SweepPlan) -> list[Any]:
    if plan.wandb == "off":
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    return [
        WandbLoggerCallback(
            project=os.environ.get("WANDB_PROJECT", "rsst-tune"),
            group=plan.name,
            mode=plan.wandb,
            dir=plan.local_dir,  # offline runs stay in the experiment directory (wandb/)
            upload_timeout=20 if plan.wandb == "offline" else 120,
            excludes=["heads_per_layer", "neurons_per_layer", "filters_per_layer"],
        )
    ]


@contextlib.contextmanager
def _wandb_env(mode: str) -> Iterator[None]:
    """Offline W&B must not look for an API key (Ray checks WANDB_MODE in the driver)."""
    if mode != "offline":
        yield
        return
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _finish(plan: SweepPlan, elapsed: float, *, show: bool) -> Experiment | None:
    """Classify how the sweep ended, settle the study, export and time each budget's best
    ticket once (into best_exports/; tickets already recorded are skipped), write the report.

    Returns the experiment (None with URI storage); raises SweepInterrupted when trials are
    unfinished.
    """
    from ray.tune import ExperimentAnalysis

    from rsst_tune.tune.experiment import open_study
    from rsst_tune.tune.searcher import mark_stopped

    analysis = ExperimentAnalysis(plan.experiment_dir)
    statuses = {t.trial_id: t.status for t in analysis.trials}
    unfinished = [t for t, s in statuses.items() if s not in FINISHED]
    budget_hit = plan.time_budget_s is not None and elapsed >= 0.98 * plan.time_budget_s
    if unfinished or (len(statuses) < plan.num_samples and not budget_hit):
        reason = f"interrupted after {elapsed:.0f}s with {len(unfinished)} unfinished trials"
        log.info("sweep %s", reason)
        raise SweepInterrupted(plan.local_dir, reason)
    study = open_study(Path(plan.local_dir), plan.study_name or plan.name)
    if study is not None:
        terminated = {t for t, s in statuses.items() if s == "TERMINATED"}
        stopped = mark_stopped(study, terminated, "time_budget")
        if stopped:
            log.info("%d trials stopped by the time budget were told to Optuna as PRUNED", stopped)
    counts: dict[str, int] = {}
    experiment = None
    if not plan.is_uri:
        from rsst_tune.tune.experiment import load_experiment

        experiment = load_experiment(plan.experiment_dir)
        for t in experiment.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    _say(show, f"finished in {elapsed:.0f}s: {summary or f'{len(statuses)} trials'}")
    if experiment is not None:
        report = write_report_if_available(experiment, Path(plan.experiment_dir), export="missing")
        if report is not None:
            _say(show, f"report {report}")
    else:
        _upload_side_files(plan)
    return experiment


def write_report_if_available(
    experiment: Any, out_dir: Path, *, export: str = "recorded"
) -> Path | None:
    """`rsst_tune.report.write_report`, when that module is installed; never fails the sweep.

    `export`: "recorded" renders the best tickets' recorded exports and measures nothing;
    "missing" first exports and times those not recorded yet; "all" does it for every one.
    """
    try:
        from rsst_tune.report import EXPORT_MODES, write_report
    except ImportError as exc:
        log.warning("no best-config report: rsst_tune.report is not available (%s)", exc)
        return None
    if export not in EXPORT_MODES:
        raise ValueError(f"export must be one of {EXPORT_MODES}, got {export!r}")
    try:
        return Path(write_report(experiment, out_dir, export=export))  # type: ignore[arg-type]
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
