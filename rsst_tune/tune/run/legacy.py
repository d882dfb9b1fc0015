"""Resuming a sweep that an earlier layout of this package started.

Ray pickles the sweep's searcher, scheduler and callbacks into the experiment directory
(`tuner.pkl`, `searcher-state-*.pkl`) by their module paths. Those modules moved into rooms
(`rsst_tune/tune/run/`, `search/`, `safety/`), so before Ray unpickles them on `--resume`,
`alias_moved_modules` makes each old path name the module that now holds its classes. It only
adds names to `sys.modules` that were free; nothing else changes.
"""

from __future__ import annotations

import importlib
import sys

# old module path -> where it lives now
MOVED_MODULES = {
    "rsst_tune.tune.searcher": "rsst_tune.tune.search.searcher",
    "rsst_tune.tune.moasha": "rsst_tune.tune.search.moasha",
    "rsst_tune.tune.epoch_budget": "rsst_tune.tune.search.epoch_budget",
    "rsst_tune.tune.trainable": "rsst_tune.tune.run.trainable",
    "rsst_tune.tune.storage": "rsst_tune.tune.run.storage",
    "rsst_tune.tune.wandb_callback": "rsst_tune.tune.run.wandb_callback",
    "rsst_tune.tune.retries": "rsst_tune.tune.safety.retries",
    "rsst_tune.tune.trust": "rsst_tune.tune.safety.trust",
    "rsst_tune.tune.objectives": "rsst_tune.experiment.objectives",
}


def alias_moved_modules() -> list[str]:
    """Make every old module path importable as its new module; returns the paths added."""
    added = []
    for old, new in MOVED_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
            added.append(old)
    return added
