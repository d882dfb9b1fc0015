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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError
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
    preset: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    epochs: int | None = None,
    states: int | None = None,
    dataset: str | None = None,
    model: str | None = None,
    objective: str | None = None,
    sampler: str | None = None,
    scheduler: str | None = None,
    grace: int | None = None,
    reduction_factor: int | None = None,
    seed: int | None = None,
    fix: Mapping[str, Any] | None = None,
    set: Mapping[str, Any] | None = None,
    imports: Sequence[str] | None = None,
    macs_budget: float | None = None,
    latency_budget: float | None = None,
    latency_batch: int | None = None,
    latency_table: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | str | None = None,
    workers_per_trial: int | None = None,
    time_budget: float | None = None,
    epoch_budget: int | None = None,
    max_failures: int | None = None,
    confirm: int | None = None,
    onnx: bool | None = None,
    storage: str | None = None,
    name: str | None = None,
    device: str | None = None,
    img_size: int | None = None,
    data_dir: str | None = None,
    data_placement: str | None = None,
    train_subset: float | None = None,
    data_workers: int | None = None,
    pretrained_file: str | None = None,
    pretrained: bool | None = None,
    share_dense: bool | None = None,
    keep_checkpoints: str | None = None,
    wandb: str | None = None,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    wandb_tags: Sequence[str] | None = None,
    address: str | None = None,
    show: bool = True,
    verbose: bool = False,
    fixed: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Experiment | None:
    """Run a Ray Tune + Optuna sweep of `space` and return it, finished, as an `Experiment`.

    The keyword arguments are the `rsst-tune tune` flags with underscores (`num_samples` is
    `--num-samples`; `fix={"lr": 3e-3}` is `--fix lr=3e-3`, `set={"batch_size": 256}` is
    `--set batch_size=256`, `imports=["my_criteria"]` is `--import my_criteria`); None (the
    default) means the flag's default. `share_dense=False` is `--no-share-dense`,
    `onnx=False` is `--no-onnx`. `fixed` and `settings` are older names of `fix` and `set`.

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
    given = {k: v for k, v in locals().items() if k not in _NOT_OPTIONS and v is not None}
    given["command"] = _call_text(space, given)  # as the caller wrote it
    for new, old in (("fix", "fixed"), ("set", "settings")):
        if new in given and old in given:
            raise ConfigError(f"give {new}= or {old}= (an older name of it), not both")
        if new in given:
            given[old] = given.pop(new)
    return _sweep(space, given, address=address, show=show, verbose=verbose)


_NOT_OPTIONS = frozenset({"space", "address", "show", "verbose"})


def _sweep(
    space: str, options: dict[str, Any], *, address: str | None, show: bool, verbose: bool
) -> Experiment | None:
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
