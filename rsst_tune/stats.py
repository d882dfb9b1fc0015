"""How far a measured accuracy can be trusted: the Wilson score interval of a proportion.

    wilson_interval(successes, n) -> (low, high)      # 95 % by default
    accuracy_interval(accuracy, n) -> (low, high) | None

An accuracy measured on n images is a binomial proportion; the Wilson interval stays inside
[0, 1] and behaves at 0 % and 100 %, where the normal approximation does not. Pure functions:
nothing here reads records or renders.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `n` trials (95 % with the default z).

    >>> [round(x, 4) for x in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0, got {z}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # the exact bounds at 0 and n (rounding could leave them a hair inside)
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def accuracy_interval(
    accuracy: float | None, n: int | None, z: float = Z_95
) -> tuple[float, float] | None:
    """The Wilson interval of an accuracy measured on `n` images, or None when either is
    missing, `n` is not positive or the accuracy is not a finite fraction in [0, 1].

    The number of correct images is `round(accuracy * n)` (an accuracy is correct / n).
    """
    if accuracy is None or n is None or isinstance(n, bool) or n <= 0:
        return None
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        return None
    return wilson_interval(round(accuracy * n), int(n), z)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share a point."""
    return a[0] <= b[1] and b[0] <= a[1]
