"""`round_to` (docs/methods.md §3.2): the neurons and filters a layer keeps snap to the nearest
multiple of r (half up), then the clamp to [max(min_units, r) when at least r are alive, else
min_units; alive]; heads never snap."""

from __future__ import annotations

import pytest

from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop
from rsst_tune.pruning.select import clamp_keep, planned_keep
from rsst_tune.unit_budget import planned_alive


@pytest.mark.parametrize(
    ("k", "alive", "min_units", "r", "want"),
    [
        (171, 192, 1, 8, 168),  # 21.375 -> 21
        (172, 192, 1, 8, 176),  # 21.5 -> 22 (half up)
        (3, 192, 1, 8, 8),  # rounds to 0: the floor is max(min_units, r)
        (3, 192, 12, 8, 12),  # min_units above r
        (3, 5, 1, 8, 1),  # fewer than r alive: the floor is min_units
        (100, 100, 1, 64, 100),  # 128 is more than alive: clamped to alive
        (96, 100, 1, 64, 100),  # round(1.5) = 2 -> 128 -> alive
        (95, 100, 1, 64, 64),  # round(1.48) = 1
        (171, 192, 1, 1, 171),  # r = 1: no snapping
    ],
)
def test_clamp_keep_snaps_to_the_nearest_multiple_then_clamps(
    k: int, alive: int, min_units: int, r: int, want: int
) -> None:
    assert clamp_keep(k, alive, min_units, r) == want


def test_planned_keep_snaps_state_by_state() -> None:
    # 192 neurons at ratio 0.3: round(192 * 0.7^p) = 134, 94, 66 -> multiples of 8: 136, 96, 64
    assert [planned_keep(192, 0.3, p, 1, 8) for p in (1, 2, 3)] == [136, 96, 64]
    assert [planned_keep(192, 0.3, p, 1, 1) for p in (1, 2, 3)] == [134, 94, 66]


def test_the_loop_keeps_multiples_of_round_to_and_whole_heads(make_cfg, digits_small) -> None:
    cfg = make_cfg(
        model="vit_digits",
        method="refill",
        target="both",
        head_ratio=0.25,
        mlp_ratio=0.3,
        round_to=16,
        pruning_times=3,
        criteria="magnitude",
    )
    loop = PruneLoop(cfg, data=digits_small)
    results = loop.run()
    # 128 neurons: round(128 * 0.7) = 90 -> 96; round(128 * 0.49) = 63 -> 64
    assert [list(r.neurons_per_layer) for r in results] == [[128] * 4, [96] * 4, [64] * 4]
    # heads (4 per block at ratio 0.25) never snap to 16: 3, then round(2.25) = 2
    assert [list(r.heads_per_layer) for r in results] == [[4] * 4, [3] * 4, [2] * 4]
    assert results[1].mlp_ratio_effective == pytest.approx(0.25)  # what was kept: 96 of 128
    # the analytic plan (MACs before training) agrees with the loop
    alive = planned_alive(cfg, loop.structure, loop.structure, 2)
    assert alive is not None
    neurons = loop.structure.by_kind("neuron")
    assert [alive[g.name] for g in neurons] == [64] * len(neurons) == [64] * 4


def test_round_to_with_global_sorting_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match="round_to 8 needs sorting 'layer'"):
        make_cfg(round_to=8, sorting="global")
    with pytest.raises(ConfigError, match="round_to"):
        make_cfg(round_to=0)
