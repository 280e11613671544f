"""The A/B verdict: the difference of two click rates, its interval and its p-value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class ProportionTest:
    """Two click rates compared (``b`` minus ``a``).

    Attributes
    ----------
    difference : float
        ``clicks_b / n_b - clicks_a / n_a``.
    interval : (float, float)
        The unpooled normal (Wald) interval at ``level``:
        ``difference -/+ z * sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b)``.
    z : float
        The pooled two-proportion z statistic: ``difference / sqrt(p (1 - p) (1/n_a + 1/n_b))``
        with ``p = (clicks_a + clicks_b) / (n_a + n_b)``.
    p_value : float
        Two-sided: ``P(|Z| >= |z|)`` for a standard normal ``Z``.
    level : float
    """

    difference: float
    interval: tuple[float, float]
    z: float
    p_value: float
    level: float


def two_proportion_test(
    clicks_a: float, n_a: float, clicks_b: float, n_b: float, level: float = 0.95
) -> ProportionTest:
    """Compare the click rates ``clicks_b / n_b`` and ``clicks_a / n_a``.

    Each of the ``n`` trials (impressions) is treated as an independent Bernoulli draw: in a
    simulation whose users come back, and whose policies learn, they are not quite, which
    :func:`bootstrap_over_users` does not assume.

    Examples
    --------
    >>> test = two_proportion_test(100, 1000, 130, 1000)
    >>> round(test.difference, 3), round(test.z, 3), round(test.p_value, 4)
    (0.03, 2.103, 0.0355)

    Raises
    ------
    ValueError
        Naming the argument, for trials < 1 or clicks outside [0, trials], or a level outside
        (0, 1).
    """
    for name, clicks, n in (("a", clicks_a, n_a), ("b", clicks_b, n_b)):
        if not n >= 1:
            raise ValueError(f"n_{name} must be >= 1, got {n!r}")
        if not 0 <= clicks <= n:
            raise ValueError(f"clicks_{name} must be in [0, n_{name}], got {clicks!r}")
    _check_level(level)
    rate_a, rate_b = clicks_a / n_a, clicks_b / n_b
    difference = rate_b - rate_a
    spread = math.sqrt(rate_a * (1 - rate_a) / n_a + rate_b * (1 - rate_b) / n_b)
    quantile = NormalDist().inv_cdf(0.5 + level / 2)
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    pooled_spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if pooled_spread > 0:
        z = difference / pooled_spread
        p_value = math.erfc(abs(z) / math.sqrt(2))
    else:  # no clicks at all, or nothing but clicks: the rates are equal
        z, p_value = 0.0, 1.0
    return ProportionTest(
        difference=difference,
        interval=(difference - quantile * spread, difference + quantile * spread),
        z=z,
        p_value=p_value,
        level=level,
    )


def bootstrap_over_users(
    clicks_a: np.ndarray,
    impressions_a: np.ndarray,
    clicks_b: np.ndarray,
    impressions_b: np.ndarray,
    n_boot: int = 2_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the click-rate difference ``b - a``, resampling users.

    The user is the unit of randomisation of a test by user hash, and one user's clicks are
    correlated (the same taste, round after round): each resample draws each arm's users with
    replacement, independently, and takes all their clicks and impressions (a cluster
    bootstrap). It assumes nothing of the impressions' independence, unlike
    :func:`two_proportion_test`.

    Parameters
    ----------
    clicks_a, impressions_a : arrays of float, shape (users_a,)
        Clicks and impressions of each user of arm ``a`` (users with no impressions may be
        left out: they change nothing).
    clicks_b, impressions_b : arrays of float, shape (users_b,)
    n_boot : int
    seed : int
    level : float

    Returns
    -------
    (low, high) : (float, float)
        NaN when a resample gives an arm no impressions at all.
    """
    _check_level(level)
    rng = np.random.default_rng(seed)
    rates = []
    for name, clicks, impressions in (("a", clicks_a, impressions_a),
                                      ("b", clicks_b, impressions_b)):  # fmt: skip
        clicks = np.asarray(clicks, dtype=np.float64)
        impressions = np.asarray(impressions, dtype=np.float64)
        if clicks.ndim != 1 or clicks.shape != impressions.shape or not len(clicks):
            raise ValueError(
                f"clicks_{name} and impressions_{name}: expected two arrays of one shape "
                "(users,), at least one user"
            )
        # How often each user is drawn: (n_boot, users) @ (users, 2) sums both columns at once.
        counts = rng.multinomial(len(clicks), np.full(len(clicks), 1.0 / len(clicks)), n_boot)
        sums = counts @ np.stack([clicks, impressions], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rates.append(sums[:, 0] / sums[:, 1])
    differences = rates[1] - rates[0]
    if not np.isfinite(differences).all():
        return (math.nan, math.nan)
    tail = (1 - level) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return (float(low), float(high))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
