"""The Python API of sweeps: start one, resume one, read one back.

    import rsst_tune

    experiment = rsst_tune.sweep("vit_head_mlp", preset="smoke", num_samples=4, epochs=2)
    best = experiment.best(macs=0.5)           # the best ticket at <= 50 % MACs, or None
    print(best.config if best else "no ticket within the budget")
    rsst_tune.write_report(experiment)         # report.md & co. in the experiment directory

    rsst_tune.resume_sweep("experiments/vit_head_mlp-smoke-20250101-120000")
    rsst_tune.load_experiment("experiments/vit_head_mlp-smoke-20250101-120000")

These are the `rsst-tune tune` command's steps (`rsst_tune.tune.plan.resolve_plan`, then
`rsst_tune.tune.sweep.run_sweep`) with Python values in and out: bad input raises
`ConfigError`, an interrupted sweep `SweepInterrupted` (its `experiment_dir` resumes it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.reader import load_experiment as _load_experiment
from rsst_tune.report import write_report as render
from rsst_tune.tune.plan import SweepOptions, load_plan, resolve_plan
from rsst_tune.tune.preflight import check_data
from rsst_tune.tune.sweep import run_sweep

__all__ = ["load_experiment", "resume_sweep", "sweep", "write_report"]


def sweep(
    space: str,
    *,
    address: str | None = None,
    show: bool = True,
    verbose: bool = False,
    **options: Any,
) -> Experiment | None:
    """Run a Ray Tune + Optuna sweep of `space` and return it, finished, as an `Experiment`.

    `options` are the fields of `rsst_tune.tune.plan.SweepOptions`, named as the `rsst-tune
    tune` flags are: `preset="smoke"`, `num_samples`, `max_concurrent`, `epochs` and `states`
    (per trial), `dataset`, `model`, `objective`, `sampler`, `scheduler`, `seed`,
    `cpus_per_trial`, `gpus_per_trial`, `time_budget` (seconds), `epoch_budget`
    (trial-epochs: no trial starts once they are spent or committed), `storage` (default
    "experiments"), `name` (default SPACE[-PRESET]-TIMESTAMP), `wandb`, `share_dense`,
    `device`, `fixed={"lr": 3e-3}` to pin searched parameters, and `settings={"amp": False}`
    for how every trial executes (`--set`: amp, compile, compile_mode, eval_batch_size,
    download).

    `address` joins a running Ray cluster (default: a local one, started and shut down here,
    unless `ray.init` was already called); `show` prints the live view, `verbose` puts debug
    logs in `sweep.log`.

    Returns None with URI storage (`s3://...`), whose trial results this process does not
    read back. Raises `ConfigError` on bad input (before anything is written) and
    `SweepInterrupted` when the sweep stopped before its trials finished (Ctrl+C): continue
    it with `resume_sweep(stop.experiment_dir)`.

        >>> experiment = rsst_tune.sweep("vit_head_mlp", preset="smoke", num_samples=2,
        ...                              epochs=2, states=2, storage="/tmp/sweeps", name="try")
        >>> [(t.trial_id, t.status) for t in experiment.trials]
    """
    options.setdefault("command", _call_text(space, options))
    plan = resolve_plan(SweepOptions.from_keywords(space, options))
    data_line = check_data(plan, address=address)  # a missing dataset: ConfigError here
    if show and data_line.startswith("warning:"):
        print(data_line, file=sys.stderr)
    return run_sweep(plan, address=address, verbose=verbose, show=show)


def resume_sweep(
    experiment_dir: str | Path,
    *,
    address: str | None = None,
    show: bool = True,
    verbose: bool = False,
) -> Experiment | None:
    """Continue an interrupted sweep in `experiment_dir` (the directory holding `sweep.json`)
    with the plan it started with; finished pruning states are not run again. Returns and
    raises as `sweep` does.

        >>> try:
        ...     experiment = rsst_tune.sweep("vit_head_mlp", preset="smoke")
        ... except rsst_tune.SweepInterrupted as stop:
        ...     experiment = rsst_tune.resume_sweep(stop.experiment_dir)
    """
    plan = load_plan(experiment_dir)
    return run_sweep(plan, resume=True, address=address, verbose=verbose, show=show)


def load_experiment(experiment_dir: str | Path) -> Experiment:
    """A sweep's directory (finished, interrupted or still running) read back as records:
    its trials, each with its per-state `StateResult`s, and the Optuna study.

        >>> experiment = rsst_tune.load_experiment("experiments/vit_head_mlp-smoke-...")
        >>> len(experiment.tickets()), experiment.best(macs=None)
    """
    return _load_experiment(experiment_dir)


def write_report(experiment: Experiment, out_dir: str | Path | None = None) -> Path:
    """Render the report of `experiment` (`report.md`, `report.html`, plots,
    `best_config.json`) into `out_dir` (default: the experiment directory) and return the
    path of `report.md`. It renders what the sweep recorded (the best tickets' exports
    included) and measures nothing.

        >>> rsst_tune.write_report(experiment, "/tmp/report")
        PosixPath('/tmp/report/report.md')
    """

    return Path(render(experiment, experiment.path if out_dir is None else out_dir))


def _call_text(space: str, options: dict[str, Any]) -> str:
    """The call as Python source, recorded in `sweep.json` and shown by the report."""
    args = [repr(space), *(f"{k}={v!r}" for k, v in options.items())]
    return f"rsst_tune.sweep({', '.join(args)})"
