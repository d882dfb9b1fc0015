"""Layer-wise budgets: one head ratio and one MLP ratio per transformer block, under a MACs
budget (`--macs-budget B`).

Every block gets its own `head_ratio_<i>` and `mlp_ratio_<i>` (Optuna parameters), which
become the trial's `head_ratios` and `mlp_ratios` (docs/methods.md §3.2: each compounds per
state in its block). The number of blocks is the model's (`--model` may change it). Because
explicit ratios fix the units kept at every state, the MACs of the last state are known before
training: with `--macs-budget`, a proposal over the budget is told to Optuna as infeasible
(user attr `constraint` = [macs_frac − budget]) and the sampler proposes again, at no trial's
cost.
"""

from __future__ import annotations

from typing import Any

from rsst_tune.experiment.records import Objective
from rsst_tune.macs_plan import layer_counts
from rsst_tune.tune.space import SearchSpace
from search_spaces._common import VIT_CIFAR, VIT_LR, VIT_MODELS, overridable, suggest_rsst_recipe

HEAD_HIGH = 0.6  # ratios per block in [0, HIGH]: a block may keep everything
MLP_HIGH = 0.7


def define(trial: Any, base: dict[str, Any]) -> dict[str, Any]:
    blocks = layer_counts(str(base.get("model", "vit_tiny")), base.get("img_size"))["head"]
    cfg: dict[str, Any] = {
        "target": "both",
        "head_ratios": [
            trial.suggest_float(f"head_ratio_{i}", 0.0, HEAD_HIGH) for i in range(blocks)
        ],
        "mlp_ratios": [trial.suggest_float(f"mlp_ratio_{i}", 0.0, MLP_HIGH) for i in range(blocks)],
    }
    cfg.update(suggest_rsst_recipe(trial, VIT_LR))
    return cfg


SPACE = SearchSpace(
    description="RSST on vit_tiny/CIFAR-10: one head and one MLP ratio per block, under "
    "--macs-budget (analytic MACs; proposals over it never train), regularizer, criteria, lr",
    base={**VIT_CIFAR, "weight_decay": 0.05},
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable=overridable(VIT_MODELS),
    macs_budget=True,
)
