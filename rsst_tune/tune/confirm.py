"""The seed-confirmation stage (`--confirm K`): re-run the top K tickets of each budget with
more seeds, through the sweep's Ray cluster and its shared dense cache.

    confirmation = run_confirmation(plan, experiment, k=2)   # Ray must be initialised
    experiment = load_experiment(plan.experiment_dir)        # now carries .confirmation

Each confirmed ticket (`report.seeds.confirm_candidates`) runs its reproducing config
(`report.select.reproduce_config`: the trial's config, stopped at the ticket's state) once per
extra seed; the runs share one dense state 0 per seed through the dense cache. The runs are
Ray trials under `<experiment>/confirm/round_<n>/`, and every finished run is recorded at once
in `<experiment>/confirm.json`, so an interrupted stage loses at most the runs in flight and a
later stage (`--resume`, or `rsst-tune report --confirm K`) runs only what is missing.
The report then chooses among the confirmed tickets by the mean over seeds
(`rsst_tune.experiment.seeds.choose_confirmed`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsst_tune import fileio
from rsst_tune.errors import ConfigError, SweepInterrupted
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.layout import CONFIRM_DIR, CONFIRM_FILE
from rsst_tune.experiment.reader import error_summary, load_experiment, read_confirmation
from rsst_tune.experiment.records import Confirmation, Objective, SeedRun
from rsst_tune.experiment.seeds import EXTRA_SEEDS, confirm_candidates
from rsst_tune.experiment.select import jsonable, reproduce_config
from rsst_tune.results import StateResult
from rsst_tune.tune.plan import SweepPlan, check_confirm, load_plan
from rsst_tune.tune.run.context import SweepContext
from rsst_tune.tune.run.ray_setup import init_ray, prepare_ray_env, restore_ray_env
from rsst_tune.tune.run.storage import sweep_lock
from rsst_tune.tune.run.trainable import (
    ray_trial_dirname,
    ray_trial_name,
    train_trial,
    trainable_for,
)

log = logging.getLogger(__name__)

CONFIRM_VERSION = 1
RUN_KEY = "run"  # a confirmation trial's config: {"run": the full TrialConfig dict}


@dataclass(frozen=True)
class RunSpec:
    """One seed run to do: the ticket's config with another seed."""

    ticket: str
    seed: int
    config: dict[str, Any]

    @property
    def key(self) -> str:
        """Runs with the same config (two tickets of identical trials) are run once."""
        return json.dumps(self.config, sort_keys=True)


def plan_runs(experiment: Experiment, k: int, extra: int | None = None) -> list[RunSpec]:
    """The seed runs that confirm the top `k` tickets of each budget."""

    extra = EXTRA_SEEDS if extra is None else extra
    specs: list[RunSpec] = []
    for ticket in confirm_candidates(experiment.tickets(), k):
        config = reproduce_config(ticket)
        seed = int(config.get("seed", 0))
        for i in range(1, extra + 1):
            specs.append(RunSpec(ticket.label, seed + i, {**config, "seed": seed + i}))
    return specs


# ---------------------------------------------------------------------- the record
def write_confirmation(exp_dir: str | Path, confirmation: Confirmation) -> None:

    data = {
        "version": CONFIRM_VERSION,
        "k": confirmation.k,
        "seeds": list(confirmation.seeds),
        "tickets": list(confirmation.tickets),
        "runs": [
            {
                "ticket": r.ticket,
                "seed": r.seed,
                "status": r.status,
                "result": None if r.result is None else r.result.to_dict(),
                "error": r.error,
            }
            for r in confirmation.runs
        ],
    }
    text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    fileio.write_text(Path(exp_dir) / CONFIRM_FILE, text)


# ---------------------------------------------------------------------- running
def run_confirmation(
    plan: SweepPlan, experiment: Experiment, k: int, *, show: bool = True
) -> Confirmation:
    """Run the missing seed runs of the top `k` tickets of each budget as Ray trials (Ray must
    be initialised) and return the full record, also written to `confirm.json`.

    Completed runs already in `confirm.json` are kept and not run again. Raises
    `SweepInterrupted` when Ctrl+C (or SIGTERM) stopped the stage before its runs finished
    (the finished ones are recorded).
    """

    k = check_confirm(k)
    local = Path(plan.local_dir)
    specs = plan_runs(experiment, k)
    tickets = tuple(dict.fromkeys(s.ticket for s in specs))
    seeds = tuple(sorted({s.seed for s in specs}))
    old = read_confirmation(local)
    done = {
        (r.ticket, r.seed): r
        for r in (old.runs if old is not None else ())
        if r.status == "complete" and r.ticket in tickets
    }
    record = Confirmation(k, seeds, tickets, tuple(done.values()))
    todo = [s for s in specs if (s.ticket, s.seed) not in done]
    write_confirmation(local, record)
    if not todo:
        return record
    distinct = list({s.key: s for s in todo}.values())
    _say(
        show,
        f"confirming {len(tickets)} tickets (top {k} per budget) with {EXTRA_SEEDS} more "
        f"seeds: {len(distinct)} runs",
    )
    recorder = _Recorder(local, record, todo, show=show)
    tuner = _confirm_tuner(plan, [s.config for s in distinct], recorder, _round_name(local))
    t0 = time.monotonic()
    tuner.fit()
    record = recorder.record
    missing = [
        s for s in todo if (s.ticket, s.seed) not in {(r.ticket, r.seed) for r in record.runs}
    ]
    if missing:
        raise SweepInterrupted(
            plan.local_dir,
            f"seed confirmation interrupted with {len(missing)} of {len(todo)} runs missing",
        )
    _say(show, f"seed confirmation finished in {time.monotonic() - t0:.0f}s")
    return record


def confirm_sweep(
    path: str | Path,
    k: int,
    *,
    address: str | None = None,
    show: bool = True,
    verbose: bool = False,
) -> Experiment:
    """Seed confirmation of a finished sweep (`rsst-tune report DIR --confirm K`): holds the
    directory's sweep lock, starts (or joins, `address`) Ray, runs what `confirm.json` is
    missing, and returns the experiment with its confirmation record.

    A sweep with unfinished trials is refused (finish it with `--resume` first), so the
    tickets confirmed are the ones the finished sweep offers."""
    import dataclasses

    plan = dataclasses.replace(load_plan(path), confirm=check_confirm(k))
    experiment = load_experiment(plan.experiment_dir)
    running = [t.trial_id for t in experiment.trials if t.status == "running"]
    if running or not experiment.trials:
        what = f"{len(running)} unfinished trials" if running else "no trials"
        raise ConfigError(
            f"{plan.experiment_dir} has {what}: finish the sweep first "
            f"(tune_main.py --resume {plan.local_dir})"
        )
    context = SweepContext()  # this stage's own (its Tuner is not the sweep's)
    prepare_ray_env(address, context.ray_env)
    try:
        _confirm_in_ray(plan, experiment, k, context, address=address, verbose=verbose, show=show)
    finally:  # also when the lock is held (init_ray gives it back otherwise)
        restore_ray_env(context.ray_env)
    return load_experiment(plan.experiment_dir)


def _confirm_in_ray(
    plan: SweepPlan,
    experiment: Experiment,
    k: int,
    context: SweepContext,
    *,
    address: str | None,
    verbose: bool,
    show: bool,
) -> None:
    """Hold the sweep lock, start or join Ray, and run the confirmation."""
    from rsst_tune.tune.console import sweep_logging

    with sweep_lock(plan), sweep_logging(Path(plan.local_dir), verbose=verbose, context=context):
        started = init_ray(address, context.ray_env)
        try:
            run_confirmation(plan, experiment, k, show=show)
        except KeyboardInterrupt:
            raise SweepInterrupted(plan.local_dir, "seed confirmation interrupted") from None
        finally:
            if started:
                import ray

                ray.shutdown()


def _round_name(local: Path) -> str:
    root = local / CONFIRM_DIR
    n = len(list(root.glob("round_*"))) if root.is_dir() else 0
    return f"round_{n}"


def _confirm_tuner(
    plan: SweepPlan, configs: list[dict[str, Any]], recorder: _Recorder, name: str
) -> Any:
    from ray import tune

    return tune.Tuner(
        trainable_for(plan, confirm_run),
        param_space={RUN_KEY: tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=plan.max_concurrent,
            reuse_actors=True,
            trial_name_creator=ray_trial_name,
            trial_dirname_creator=ray_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(plan.local_dir) / CONFIRM_DIR),
            verbose=0,
            callbacks=[_as_callback(recorder)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        ),
    )


def confirm_run(
    config: dict[str, Any],
    objectives: Sequence[Objective] = (),
    dense_cache_dir: str | None = None,
    latency_table: str | None = None,
    workers_per_trial: int = 1,
    cpus_per_worker: float | None = None,
    use_gpu: bool = False,
    workers_dir: str | None = None,
) -> None:
    """Ray Tune entry point of one seed run: the sweep's trainable on `config[RUN_KEY]` (the
    runs are a grid over whole configs, whose lists may differ in length), on the sweep's
    workers per trial."""

    train_trial(
        config[RUN_KEY],
        objectives=objectives,
        dense_cache_dir=dense_cache_dir,
        latency_table=latency_table,
        workers_per_trial=workers_per_trial,
        cpus_per_worker=cpus_per_worker,
        use_gpu=use_gpu,
        workers_dir=workers_dir,
    )


def _runs_for(config: dict[str, Any], todo: Iterable[RunSpec]) -> list[RunSpec]:
    key = json.dumps(config.get(RUN_KEY), sort_keys=True)
    return [s for s in todo if s.key == key]


class _Recorder:
    """Records each finished run in confirm.json at once and prints one line per run (fed by
    a Ray Tune callback on the driver, `_as_callback`)."""

    def __init__(self, local: Path, record: Confirmation, todo: Sequence[RunSpec], *, show: bool):
        self.local = local
        self.record = record
        self.todo = list(todo)
        self.show = show
        self.total = len({s.key for s in todo})
        self.finished = 0

    def completed(self, trial: Any) -> None:
        result = trial.last_result or {}
        try:
            state = StateResult.from_dict(result)
        except (ConfigError, TypeError, ValueError, KeyError):
            self._add(trial.config, "error", None, "the run reported no pruning state")
            return
        self._add(trial.config, "complete", state, None)

    def failed(self, trial: Any) -> None:

        text = ""
        path = Path(str(getattr(trial, "local_path", "") or "")) / "error.txt"
        if path.is_file():
            text = path.read_text(errors="replace")
        self._add(trial.config, "error", None, error_summary(text) or "the run failed")

    def _add(
        self, config: dict[str, Any], status: str, state: StateResult | None, error: str | None
    ) -> None:
        runs = _runs_for(config, self.todo)
        if not runs:
            log.warning("a confirmation run finished whose config matches no planned run")
            return
        new = [SeedRun(s.ticket, s.seed, status, state, error) for s in runs]
        self.record = Confirmation(
            self.record.k, self.record.seeds, self.record.tickets, (*self.record.runs, *new)
        )
        write_confirmation(self.local, self.record)
        self.finished += 1
        what = f"val {100 * state.val_acc:.2f} %" if state is not None else f"error: {error}"
        labels = ", ".join(s.ticket for s in runs)
        _say(
            self.show, f"confirm {self.finished}/{self.total}  {labels} seed {runs[0].seed}: {what}"
        )


def _as_callback(recorder: _Recorder) -> Any:
    """A Ray Tune callback that hands finished trials to `recorder` (Ray imported here only,
    so reading `confirm.json` never imports Ray)."""
    from ray.tune import Callback

    class RecorderCallback(Callback):
        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            recorder.completed(trial)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            recorder.failed(trial)

    return RecorderCallback()


def _say(show: bool, text: str) -> None:
    if show:
        print(text, flush=True)
