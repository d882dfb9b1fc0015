"""rsst-tune: hyperparameter search for structured pruning (IMP, Refill, RSST).

The Python API, imported on first use (`import rsst_tune` itself imports no torch or Ray):

    import rsst_tune

    results = rsst_tune.run_trial({"method": "rsst", "epochs": 5}, pruning_times=3)
    experiment = rsst_tune.sweep("vit_head_mlp", preset="smoke", num_samples=4)
    experiment = rsst_tune.resume_sweep("experiments/NAME")     # after SweepInterrupted
    experiment = rsst_tune.load_experiment("experiments/NAME")
    experiment.best(macs=0.5), experiment.pareto()
    rsst_tune.write_report(experiment)                          # report.md & co.

`run_trial` returns one `StateResult` per pruning state; `sweep` an `Experiment`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "sweep": "rsst_tune.api",
    "resume_sweep": "rsst_tune.api",
    "load_experiment": "rsst_tune.api",
    "write_report": "rsst_tune.api",
    "run_trial": "rsst_tune.run",
    "TrialConfig": "rsst_tune.config",
    "StateResult": "rsst_tune.results",
    "Experiment": "rsst_tune.experiment",
    "ConfigError": "rsst_tune.errors",
    "SweepInterrupted": "rsst_tune.errors",
}

__all__ = [
    "ConfigError",
    "Experiment",
    "StateResult",
    "SweepInterrupted",
    "TrialConfig",
    "__version__",
    "load_experiment",
    "resume_sweep",
    "run_trial",
    "sweep",
    "write_report",
]

if TYPE_CHECKING:
    from rsst_tune.api import load_experiment, resume_sweep, sweep, write_report
    from rsst_tune.config import TrialConfig
    from rsst_tune.errors import ConfigError, SweepInterrupted
    from rsst_tune.experiment.experiment import Experiment
    from rsst_tune.results import StateResult
    from rsst_tune.run import run_trial


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
