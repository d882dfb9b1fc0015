"""Layer-wise filter budgets for CNNs: one filter ratio per stage of ResNet-20, under a MACs
budget (`--macs-budget B`).

The trial's `filter_ratios` hold one ratio per prunable conv (18 for resnet20, in model
order; docs/methods.md §3.2: each compounds per state in its conv). This space ties them:

* a conv whose filters reach a residual add (`conv2` of every CIFAR BasicBlock; `conv3` and
  the downsample of a Bottleneck) gets ratio 0: an export keeps such channels whole (the add
  needs them), so pruning them would cost accuracy and save no params or MACs;
* the removable convs (`conv1` of every BasicBlock: 9 in resnet20) share one ratio per
  stage, a stage being the removable convs of one width, in model order: Optuna parameters
  `filter_ratio_stage<i>` (resnet20/32/56: 16, 32 and 64 filters, 3 parameters whatever the
  depth; resnet50: 4; vgg16_bn: 64, 128, 256, 512, its last two 512-wide blocks sharing one).

Why per stage and not per conv or per block: the blocks of a stage cost about the same MACs
and see the same resolution, and 9 per-block ratios (27 for resnet56) are many dimensions
for TPE in a sweep of tens of trials, most of whose proposals a tight budget rejects.

Explicit ratios fix the filters kept at every state, so the MACs of the last state are known
before training (`rsst_tune.macs_plan.planned_macs_frac`, equal to the MACs counted on
the sliced model): with `--macs-budget`, a proposal over the budget is told to Optuna as
infeasible (user attr `constraint` = [macs_frac − budget]) and the sampler proposes again, at
no trial's cost. The `rate` of U is derived from the ratios (docs/methods.md §2.4.1).
"""

from __future__ import annotations

from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.records import Objective
from rsst_tune.macs_plan import ConvLayer, conv_layers
from rsst_tune.tune.space import SearchSpace
from search_spaces._common import (
    CNN_LR,
    CNN_MODELS,
    CNN_RECIPE_START,
    RESNET_CIFAR,
    RESNET_SMOKE,
    overridable,
    suggest_rsst_recipe,
)

RATIO_HIGH = 0.5  # ratios per stage in [0, HIGH]: a stage may keep every filter


def stage_widths(convs: tuple[ConvLayer, ...], model: str) -> list[int]:
    """The widths of the removable convs, one per stage, in model order."""
    widths = list(dict.fromkeys(c.filters for c in convs if c.removable))
    if not widths:
        raise ConfigError(
            f"{model} has no conv whose filters an export can remove (every one reaches a "
            "residual add, or the model cannot be traced): resnet_layerwise has nothing to search"
        )
    return widths


def define(trial: Any, base: dict[str, Any]) -> dict[str, Any]:
    model = str(base.get("model", "resnet20"))
    convs = conv_layers(model, base.get("img_size"), bool(base.get("prune_stem", False)))
    stage = {
        width: trial.suggest_float(f"filter_ratio_stage{i}", 0.0, RATIO_HIGH)
        for i, width in enumerate(stage_widths(convs, model))
    }
    cfg: dict[str, Any] = {
        "filter_ratios": [stage[c.filters] if c.removable else 0.0 for c in convs],
    }
    cfg.update(suggest_rsst_recipe(trial, CNN_LR))
    return cfg


SPACE = SearchSpace(
    description="RSST on res20s/CIFAR-10: one filter ratio per stage (removable convs), under "
    "--macs-budget (analytic MACs; proposals over it never train), regularizer, criteria, lr",
    base=dict(RESNET_CIFAR),
    define=define,
    objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
    scheduler="moasha",
    overridable=overridable(CNN_MODELS),
    smoke=dict(RESNET_SMOKE),
    starting_points=(
        {
            "filter_ratio_stage0": 0.3,
            "filter_ratio_stage1": 0.3,
            "filter_ratio_stage2": 0.3,
            **CNN_RECIPE_START,
        },
    ),
    macs_budget=True,
)
