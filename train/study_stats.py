"""Confidence intervals for multi-seed studies (`fuller ablate --seeds N`).

A variant's score over seeds gets the mean and the Student-t interval of the mean (n - 1 degrees
of freedom). Variants trained with the same seeds share initialisation and data order, so their
scores are correlated across seeds; the interval of the per-seed (paired) differences removes the
variation the two runs of a seed have in common and is the one to compare variants with. The
unpaired (Welch) interval is here for reference. One value gives a mean and no interval.

NumPy only; the t quantile comes from scipy.stats when scipy is importable, else from the
regularised incomplete beta function computed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Interval", "mean_interval", "paired_interval", "t_quantile", "unpaired_interval"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its confidence interval (``low``/``high`` None when n = 1)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval lies entirely on one side of ``value`` (False without an interval)."""
        return self.low is not None and (self.low > value or self.high < value)


def _values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: expected at least one value, got none")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite values, got {array.tolist()}")
    return array


def _interval(mean: float, se: float, dof: float, n: int, level: float) -> Interval:
    half = t_quantile(0.5 + level / 2, dof) * se
    return Interval(mean, mean - half, mean + half, n, level)


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``values`` and its Student-t confidence interval (sample sd, n - 1 dof)."""
    x = _values(values, "values")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, None, None, 1, level)
    return _interval(mean, float(x.std(ddof=1)) / math.sqrt(x.size), x.size - 1, x.size, level)


def paired_interval(values: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of the paired differences ``values[i] - baseline[i]`` (same seed i) and its interval."""
    a, b = _values(values, "values"), _values(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"paired_interval: expected one baseline value per value, got {a.size} and {b.size}")
    return mean_interval(a - b, level)


def unpaired_interval(values: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Interval:
    """Difference of the two means with Welch's interval (independent samples, unequal variances);
    no interval unless both sides have two values or more."""
    a, b = _values(values, "values"), _values(baseline, "baseline")
    mean = float(a.mean() - b.mean())
    n = min(a.size, b.size)
    if n < 2:
        return Interval(mean, None, None, n, level)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    if se2 == 0:
        return Interval(mean, mean, mean, n, level)
    dof = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return _interval(mean, math.sqrt(se2), dof, n, level)


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``dof`` degrees of freedom."""
    if not 0 < p < 1:
        raise ValueError(f"t_quantile: expected a probability in (0, 1), got {p}")
    if not dof > 0:
        raise ValueError(f"t_quantile: expected positive degrees of freedom, got {dof}")
    try:
        from scipy import stats
    except ImportError:
        return _t_quantile(p, dof)
    return float(stats.t.ppf(p, dof))


def _t_quantile(p: float, dof: float) -> float:
    """t quantile by bisection on the CDF (no scipy); symmetric about 0."""
    if p < 0.5:
        return -_t_quantile(1 - p, dof)
    if p == 0.5:
        return 0.0
    hi = 1.0
    while _t_cdf(hi, dof) < p:
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for t >= 0: 1 - I_x(dof/2, 1/2) / 2 with x = dof / (dof + t^2)."""
    return 1 - 0.5 * _incomplete_beta(dof / (dof + t * t), dof / 2, 0.5)


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b), continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point
        return 1 - _incomplete_beta(1 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return math.exp(log_front) * f / a
