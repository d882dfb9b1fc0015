"""Run a resolved sweep (or resume one): the checks that need the machine, then Ray Tune.

    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke"))   # tune.plan
    experiment = run_sweep(plan)        # the finished sweep, as an `Experiment`
    # on Ctrl+C: SweepInterrupted; continue with run_sweep(load_plan(dir), resume=True)

The experiment directory (`<storage>/<name>/`) holds Ray Tune's files (`tuner.pkl`,
`experiment_state-*.json`, one `trial_<id>/` per trial with `result.json`, `params.json`,
`trial.log` and one `checkpoint_<n>/` per pruning state) and ours: `sweep.json` (the resolved
plan), `optuna.journal` (the Optuna study), `sweep.log` (full logs), `events.jsonl` (the
console's events) and the report. With a URI storage (`s3://...`) Ray writes the trial files
there and ours stay in `./experiments/<name>/`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.tune.plan import SweepPlan
from rsst_tune.tune.run.ray_setup import check_address
from rsst_tune.tune.run.runner import execute
from rsst_tune.tune.run.storage import check_storage, sweep_lock


def run_sweep(
    plan: SweepPlan,
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
    show: bool = True,
    trust_pickles: bool = False,
) -> Experiment | None:
    """Run (or resume) the sweep and return it, finished, as an `Experiment`.

    Returns None with URI storage (`s3://...`): the trials' results live at the URI and
    `load_experiment` reads local directories only. A sweep whose every trial failed is
    returned too (its trials have status "error"; the CLI exits 1 for it).

    Raises `ConfigError` for what makes the plan unrunnable here (storage not writable, an
    existing sweep of the same name, another sweep running in the directory, an `address`
    that does not answer, `--wandb online` without a key) before anything is written, and
    `SweepInterrupted` (carrying the directory to resume) when the sweep stopped before its
    trials finished (Ctrl+C, SIGTERM, a storage error such as a full disk).

    The directory's `sweep.lock` is held from before Ray starts until the sweep ends, so one
    sweep (or resume) at a time runs in it; the lock of a killed sweep is taken over.

    `address` joins a running Ray cluster (default: a local one, started and shut down here,
    unless `ray.init` was already called); `show` prints the console view; `verbose` puts
    debug logs in `sweep.log`.

    A resume first checks that every pickle Ray would load from the directory was signed by
    this user's rsst-tune (`rsst_tune.tune.safety.trust.check_resume`; ConfigError otherwise);
    `trust_pickles` (`--trust-pickles`) skips that check.
    """

    check_storage(plan, resume=resume)
    if plan.wandb == "online" and not os.environ.get("WANDB_API_KEY"):
        raise ConfigError("--wandb online needs WANDB_API_KEY in the environment")
    if address is not None:
        check_address(address)
    if (
        resume
        and not plan.is_uri
        and not any(Path(plan.experiment_dir).glob("experiment_state-*.json"))
    ):
        raise ConfigError(f"{plan.experiment_dir} holds no Ray Tune experiment state to resume")
    with sweep_lock(plan):
        if resume and not plan.is_uri:
            from rsst_tune.tune.safety.trust import check_resume

            for note in check_resume(plan.experiment_dir, trust=trust_pickles):
                print(f"rsst-tune: {note}", file=sys.stderr)
        return execute(plan, resume=resume, address=address, verbose=verbose, show=show)
