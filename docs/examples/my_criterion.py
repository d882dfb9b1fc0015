"""docs/examples/my_criterion.py: two unit criteria of your own (docs/extending.md).

A criterion scores units; it never edits a mask (docs/methods.md §3.1). At every prune the
loop calls it with the trained model, the unit groups the trial prunes and a `ScoreInputs`
(the masks U and M, a few training batches, the loss function), and it returns one float
vector per group, `group.num_units` long: the higher the score, the more the unit is worth
keeping. Units an earlier prune removed stay removed, whatever their score.

    import my_criterion                      # registers "weight_l2" and "keep_last"
    rsst_tune.run_trial(criteria="weight_l2", ...)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rsst_tune.pruning.criteria import ScoreInputs, register_criterion
from rsst_tune.pruning.structure import UnitGroup


@register_criterion("weight_l2", "wl2")
@torch.no_grad()
def weight_l2(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """The L2 norm of the weights each unit owns that M still keeps (biases excluded)."""
    params = dict(model.named_parameters())
    scores = []
    for group in groups:
        # A unit owns slices of several tensors (a head: rows of q, k and v in `qkv` and input
        # columns of `proj`). Each `Member` views one tensor with the units along one axis;
        # `per_unit` sums a tensor of that shape to one value per unit.
        total = torch.zeros(group.num_units, device=inputs.M[group.members[0].param].device)
        for member in group.weight_members:
            w = params[member.param].float()
            total += member.per_unit(w.pow(2) * inputs.M[member.param])
        scores.append(total.sqrt())
    return scores


@register_criterion("keep_last")
def keep_last(model: nn.Module, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> list[Tensor]:
    """A unit's position in its layer: the last heads, neurons and filters score highest.

    Not a sensible criterion (a unit's position should never decide, docs/methods.md §3.1),
    but one whose outcome is known before training: with `sorting=layer` every layer keeps
    its last k alive units. A quick way to check that a trial really uses your criterion.
    """
    device = next(model.parameters()).device
    return [torch.arange(g.num_units, dtype=torch.float32, device=device) for g in groups]
