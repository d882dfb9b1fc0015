"""The Wilson interval against values computed by hand (and scipy's, where it is installed)."""

from __future__ import annotations

import math

import pytest

from rsst_tune.stats import Z_95, accuracy_interval, overlaps, wilson_interval


def close(a: tuple[float, float], b: tuple[float, float], tol: float = 5e-5) -> bool:
    return math.isclose(a[0], b[0], abs_tol=tol) and math.isclose(a[1], b[1], abs_tol=tol)


def test_wilson_interval_matches_hand_computed_values() -> None:
    # centre = (p + z²/2n) / (1 + z²/n), half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n), z² = 3.8415
    # 5/10: centre 0.5, half 1.96·sqrt(0.025 + 0.0096037)/1.38415 = 0.26341
    assert close(wilson_interval(5, 10), (0.23659, 0.76341))
    # 0/10: [0, z²/(n + z²)] = [0, 3.8415/13.8415]; 10/10 mirrors it
    assert close(wilson_interval(0, 10), (0.0, 0.27753))
    assert close(wilson_interval(10, 10), (0.72247, 1.0))
    # 342/360 = 95 % on the digits val split: centre (0.95 + 0.0053354)/1.010671 = 0.945254,
    # half 1.96·sqrt(0.000131944 + 0.0000074114)/1.010671 = 0.022893: about ±2.3 points
    assert close(wilson_interval(342, 360), (0.92236, 0.96815), tol=2e-5)
    # a wider z widens it; the interval always holds the observed proportion
    lo, hi = wilson_interval(342, 360, z=2.5758)
    assert lo < 0.92236 and hi > 0.96815 and lo < 0.95 < hi
    assert math.isclose(Z_95, 1.96, abs_tol=1e-3)


def test_wilson_interval_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 7), (3, 7), (7, 7), (341, 360), (1, 1000)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert close(wilson_interval(k, n), (ci.low, ci.high), tol=1e-9), (k, n)


def test_wilson_interval_rejects_impossible_counts() -> None:
    for k, n in ((0, 0), (1, -1), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="z must be"):
        wilson_interval(1, 2, z=math.nan)


def test_accuracy_interval_counts_images_and_degrades_to_none() -> None:
    assert accuracy_interval(0.95, 360) == wilson_interval(342, 360)
    assert accuracy_interval(341 / 360, 360) == wilson_interval(341, 360)  # float noise rounds
    for acc, n in ((0.9, None), (None, 360), (0.9, 0), (math.nan, 360), (1.2, 360)):
        assert accuracy_interval(acc, n) is None, (acc, n)


def test_overlaps_is_closed_and_symmetric() -> None:
    assert overlaps((0.1, 0.5), (0.5, 0.9)) and overlaps((0.5, 0.9), (0.1, 0.5))
    assert overlaps((0.1, 0.9), (0.4, 0.5))
    assert not overlaps((0.1, 0.4), (0.41, 0.9)) and not overlaps((0.41, 0.9), (0.1, 0.4))
