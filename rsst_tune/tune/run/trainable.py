"""The Ray Tune function trainable: one trial = one PruneLoop, one report per pruning state.

Every state is reported with `ray.tune.report(metrics, checkpoint=...)`; the checkpoint holds
`theta0.pt`, that state's `state_XX.pt`, `config.json`, `results.json` and the trial's log so
far (`trial.log`); the first two are all `PruneLoop.resume` needs. When Ray restarts a trial
(`--resume`, a lost node, a moved trial) `ray.tune.get_checkpoint()` returns the last one and
the loop continues at the next state, so finished states are never run again.

Tune's `config` dict becomes a `TrialConfig` exactly once, here. All state is local to the
call: a Ray worker runs many trials in one process (`reuse_actors=True`).

A trial whose training diverges raises `TrialDiverged` ("diverged in state s, epoch e (loss
nan)") out of the loop before its state is evaluated or reported: Ray ends the trial as an
error with that message, the sweep goes on, and no report ever sees the diverged state.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rsst_tune.config import TrialConfig
from rsst_tune.errors import TrialDiverged
from rsst_tune.experiment.layout import trial_dirname
from rsst_tune.experiment.objectives import objective_metrics
from rsst_tune.experiment.records import Objective
from rsst_tune.logfile import log_to_file
from rsst_tune.results import StateResult
from rsst_tune.tune.plan import DRIVER_CPUS, SweepPlan

log = logging.getLogger(__name__)

TRIAL_LOG = "trial.log"
# Keys the trainable adds to every state's `StateResult.to_dict()` (besides the budgeted
# objective values): how many states the trial runs, where this run of it started, setup time.
EXTRA_KEYS = ("pruning_times", "resumed_from", "setup_s")


def train_trial(
    config: dict[str, Any],
    objectives: Sequence[Objective] = (),
    dense_cache_dir: str | None = None,
    latency_table: str | None = None,
    workers_per_trial: int = 1,
    cpus_per_worker: float | None = None,
    use_gpu: bool = False,
    workers_dir: str | None = None,
) -> None:
    """Ray Tune entry point (wrapped with `tune.with_parameters(..., objectives=...)`); with
    `latency_table`, every state's `latency_ms` is predicted from it.

    `workers_per_trial` > 1: the trial runs on that many Ray Train workers
    (`rsst_tune.workers`: DDP, `cpus_per_worker` CPUs and, with `use_gpu`, one GPU each) in
    this trial's scratch directory, and rank 0's states are reported here as they finish,
    each with its checkpoint; a fresh trial shares state 0 through the dense cache as one
    on a single worker does. With `workers_dir` (a directory every node sees) the scratch
    directory is the trial's folder there and the workers may span nodes; without, they
    stay on one node."""

    from ray import tune

    from rsst_tune.latency_model import LatencyTable

    t_start = time.perf_counter()
    cfg = TrialConfig.from_dict(config)  # the boundary: nothing below sees the dict
    table = LatencyTable.load(latency_table) if latency_table else None
    shared = workers_dir if workers_per_trial > 1 else None
    with _scratch_dir(shared) as scratch, _trial_log(scratch / TRIAL_LOG):
        reporter = _Reporter(cfg, scratch, objectives, table, t_start)
        if workers_per_trial > 1:
            _on_workers(
                reporter, tune.get_checkpoint(), workers_per_trial,
                cpus_per_worker=cpus_per_worker, use_gpu=use_gpu, dense_cache_dir=dense_cache_dir,
                span_nodes=shared is not None,
            )  # fmt: skip
            return
        loop = _start_loop(cfg, scratch, tune.get_checkpoint(), dense_cache_dir)
        reporter.resumed_from = loop.next_state
        reporter.setup_s = time.perf_counter() - t_start
        log.info(
            "trial %s: %s %s on %s/%s, states %d..%d",
            tune.get_context().get_trial_id(),
            cfg.method,
            cfg.target,
            cfg.model,
            cfg.dataset,
            reporter.resumed_from,
            cfg.pruning_times - 1,
        )
        for result in loop.states():
            reporter.report(result, loop.results)


class _Reporter:
    """Reports a trial's states to Tune, each with its checkpoint, and keeps what every
    report needs: where this run of the trial started, its setup time, the states so far."""

    def __init__(
        self,
        cfg: TrialConfig,
        scratch: Path,
        objectives: Sequence[Objective],
        table: Any,
        t_start: float,
    ) -> None:
        self.cfg, self.scratch, self.objectives, self.table = cfg, scratch, objectives, table
        self.t_start = t_start
        self.resumed_from = 0
        self.setup_s: float | None = None  # None: until the first report (several workers)
        self.states: list[StateResult] = []

    def report(self, result: StateResult, results: Sequence[StateResult]) -> None:
        """One finished state (`results`: the run's states so far, this one included), with
        its latency predicted when the sweep has a table."""
        import dataclasses

        from ray import tune

        if self.setup_s is None:
            self.setup_s = time.perf_counter() - self.t_start  # setup and the first state
        if self.table is not None:
            result = dataclasses.replace(result, latency_ms=self.table.predict_result_ms(result))
        self.states = [*(r for r in self.states if r.state < result.state), result]
        cfg = self.cfg
        extras = dict(
            zip(EXTRA_KEYS, (cfg.pruning_times, self.resumed_from, self.setup_s), strict=True)
        )
        metrics = {
            **result.to_dict(),
            **extras,
            **objective_metrics(self.objectives, _with_latency(results, self.states)),
        }
        log.info(
            "trial %s: state %d val_acc %.4f macs_frac %.3f (%.1fs)",
            tune.get_context().get_trial_id(),
            result.state,
            result.val_acc,
            result.macs_frac,
            result.wall_time_s,
        )
        with _state_checkpoint(self.scratch, result.state, cfg, results) as ckpt_dir:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        _drop_states_before(self.scratch, result.state)

    def report_rank0(self, result: StateResult) -> None:
        """One state rank 0 of the workers finished (it wrote `results.json` and the state's
        checkpoint before recording the state)."""
        rows = json.loads((self.scratch / "results.json").read_text())
        self.report(result, [StateResult.from_dict(r) for r in rows if r["state"] <= result.state])


def _on_workers(
    run: _Reporter,
    checkpoint: Any,
    workers: int,
    *,
    cpus_per_worker: float | None,
    use_gpu: bool,
    dense_cache_dir: str | None,
    span_nodes: bool,
) -> None:
    """The trial on `workers` Ray Train workers in its scratch directory (from `checkpoint`'s
    state when Ray restarted the trial, else sharing state 0 through `dense_cache_dir`);
    each state rank 0 finishes is reported. `span_nodes`: the workers may run on several
    nodes (the scratch directory is on storage they all see)."""
    from rsst_tune.checkpoint import state_of
    from rsst_tune.run import worker_entry
    from rsst_tune.workers import check_divisible, launch_workers

    cfg, scratch = run.cfg, run.scratch
    check_divisible(cfg.batch_size, workers)
    if checkpoint is not None:
        state = _restore_scratch(checkpoint, scratch)
        run.resumed_from = (state_of(state) or 0) + 1
    log.info(
        "trial on %d workers: %s %s on %s/%s, states %d..%d", workers, cfg.method, cfg.target,
        cfg.model, cfg.dataset, run.resumed_from, cfg.pruning_times - 1,
    )  # fmt: skip
    launch_workers(
        worker_entry,
        cfg,
        scratch,
        workers,
        resume=checkpoint is not None,
        use_gpu=use_gpu,
        on_state=run.report_rank0,
        log_path=scratch / TRIAL_LOG,
        cpus_per_worker=cpus_per_worker,
        dense_cache_dir=dense_cache_dir if checkpoint is None else None,
        span_nodes=span_nodes,
    )


def _drop_states_before(scratch: Path, state: int) -> None:
    """The state checkpoints older than `state` (a later one stays: rank 0 of several workers
    may have written it already)."""
    from rsst_tune.checkpoint import state_files, state_of

    for path in state_files(scratch):
        index = state_of(path)
        if index is not None and index < state:
            path.unlink(missing_ok=True)


def _restore_scratch(checkpoint: Any, scratch: Path) -> Path:
    """Ray's trial checkpoint copied into `scratch` (θ0, the last state checkpoint, the
    trial's log so far, to which this run appends); returns the state file."""
    from rsst_tune.checkpoint import THETA0_FILE, latest_state_file

    with checkpoint.as_directory() as src:
        src_path = Path(src)
        state = latest_state_file(src_path)
        if state is None or not (src_path / THETA0_FILE).exists():
            raise RuntimeError(f"trial checkpoint {src} holds no state_XX.pt / {THETA0_FILE}")
        shutil.copy2(src_path / THETA0_FILE, scratch / THETA0_FILE)
        shutil.copy2(state, scratch / state.name)
        if (src_path / TRIAL_LOG).exists():  # keep one log across restarts
            with (scratch / TRIAL_LOG).open("a") as out:
                out.write((src_path / TRIAL_LOG).read_text())
    return state


def _start_loop(
    cfg: TrialConfig, scratch: Path, checkpoint: Any, dense_cache_dir: str | None
) -> Any:
    from rsst_tune.dense_cache import DenseCache
    from rsst_tune.loop import PruneLoop
    from rsst_tune.numerics import NumericsCache

    if checkpoint is None:
        cache = DenseCache(dense_cache_dir) if dense_cache_dir else None
        return PruneLoop(cfg, scratch, dense_cache=cache)
    state = _restore_scratch(checkpoint, scratch)
    # amp/compile auto reads the sweep's probed choice instead of probing again
    numerics_cache = NumericsCache(dense_cache_dir) if dense_cache_dir else None
    loop = PruneLoop.resume(scratch, cfg, numerics_cache=numerics_cache)
    log.info("resumed from %s at state %d", state.name, loop.next_state)
    return loop


@contextlib.contextmanager
def _state_checkpoint(
    scratch: Path, state: int, cfg: TrialConfig, results: Sequence[StateResult]
) -> Iterator[Path]:
    """A directory with what resuming from `state` needs; Ray copies it into storage."""
    from rsst_tune.checkpoint import THETA0_FILE, state_file

    with tempfile.TemporaryDirectory(prefix="rsst_ckpt_") as tmp:
        out = Path(tmp)
        for name in (THETA0_FILE, state_file(state)):
            _link_or_copy(scratch / name, out / name)
        if (scratch / TRIAL_LOG).exists():
            shutil.copy2(scratch / TRIAL_LOG, out / TRIAL_LOG)
        (out / "config.json").write_text(cfg.to_json() + "\n")
        (out / "results.json").write_text(
            json.dumps([r.to_dict() for r in results], indent=2) + "\n"
        )
        yield out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _scratch_dir(shared: str | None = None) -> Iterator[Path]:
    """The trial's working directory, removed at its end: a local temporary one, or with
    `shared` a new folder of this run of the trial there (`<trial>-<random>`; the folders of
    its earlier runs, which a lost node may have left, are removed first, as far as they
    can be)."""
    if shared is None:
        path = Path(tempfile.mkdtemp(prefix="rsst_trial_"))
    else:
        from ray import tune

        name = trial_dirname(str(tune.get_context().get_trial_id()))
        root = Path(shared)
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _trial_log(path: Path) -> Iterator[None]:
    """The trial's log lines (rsst_tune loggers); a copy goes into every state checkpoint."""
    logger = logging.getLogger("rsst_tune")
    with log_to_file(path):
        try:
            yield
        except TrialDiverged as exc:  # not a bug: one line, no traceback
            logger.error("trial failed: %s", exc)
            raise
        except Exception:
            logger.exception("trial failed")
            raise


def ray_trial_name(trial: Any) -> str:
    """Ray's name of a trial: its id."""
    return str(trial.trial_id)


def ray_trial_dirname(trial: Any) -> str:
    """Ray's directory of a trial (`rsst_tune.experiment.layout.trial_dirname`)."""
    return trial_dirname(str(trial.trial_id))


def trainable_for(plan: SweepPlan, entry: Any = None) -> Any:
    """The sweep's Ray trainable: `entry` (default `train_trial`) with the plan's objectives,
    dense cache and per-trial resources (the seed-confirmation stage passes its own entry)."""
    from ray import tune

    fn = entry or train_trial
    if plan.worker_imports:
        fn = _importing(fn, plan.worker_imports)
    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    extra: dict[str, Any] = (
        {"latency_table": plan.latency_table_path} if plan.latency_table_path else {}
    )
    if plan.workers_per_trial > 1:  # the workers hold the resources; the trial, its driver
        resources = {"cpu": DRIVER_CPUS, "gpu": 0.0}
        extra.update(
            workers_per_trial=plan.workers_per_trial,
            cpus_per_worker=plan.cpus_per_trial,
            use_gpu=plan.gpus_per_trial > 0,
            workers_dir=plan.workers_dir,
        )
    return tune.with_resources(
        tune.with_parameters(
            fn, objectives=plan.objectives, dense_cache_dir=plan.dense_cache_dir, **extra
        ),
        resources,
    )


def _with_latency(
    results: Sequence[StateResult], predicted: Sequence[StateResult]
) -> list[StateResult]:
    """The loop's results, with this run's predicted latency where it was predicted."""
    by_state = {r.state: r for r in predicted}
    return [by_state.get(r.state, r) for r in results]


def _importing(entry: Any, imports: tuple[str, ...]) -> Any:
    """`entry`, after importing the user's modules (`--import`, a space's file) in this Ray
    worker: their criteria, models and datasets are registered before the trial's config is
    read. A worker imports each once; later trials find them in `sys.modules`."""

    @functools.wraps(entry)
    def run(config: dict[str, Any], **kwargs: Any) -> Any:
        from rsst_tune.plugins import load_imports

        load_imports(imports)
        return entry(config, **kwargs)

    return run
