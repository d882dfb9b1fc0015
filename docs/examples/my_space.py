"""docs/examples/my_space.py: a search space whose criterion choices include your own.

The built-in spaces search a fixed list of criteria (search_spaces/_common.py): a study's
choices must not change when someone registers a criterion, or Optuna refuses to resume it.
A space that searches yours lists it itself. A sweep reads this file's `SPACE`; its trials
name weight_l2, so the sweep imports the criterion too (in the driver and every Ray worker):

    python tune_main.py --import docs/examples/my_criterion.py --space docs/examples/my_space.py
"""

from __future__ import annotations

from typing import Any

from rsst_tune.experiment.records import Objective
from rsst_tune.tune.space import SearchSpace

CRITERIA = ("l1", "magnitude", "weight_l2")  # weight_l2: docs/examples/my_criterion.py


def define(trial: Any) -> dict[str, Any]:
    """An Optuna trial in, the searched TrialConfig fields out."""
    return {
        "head_ratio": trial.suggest_float("head_ratio", 0.1, 0.5),
        "mlp_ratio": trial.suggest_float("mlp_ratio", 0.1, 0.6),
        "criteria": trial.suggest_categorical("criteria", list(CRITERIA)),
        "lr": trial.suggest_float("lr", 5e-4, 5e-3, log=True),
    }


SPACE = SearchSpace(
    description="RSST on vit_digits: head and MLP ratios, criterion (weight_l2 too), lr",
    base={"model": "vit_digits", "dataset": "digits", "method": "rsst", "pruning_times": 3},
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",  # it searches sparsity: multi-objective early stopping
)
