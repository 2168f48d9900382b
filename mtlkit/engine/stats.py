"""Spread over seeds: mean, sample standard deviation and a t-distribution confidence interval.

A benchmark trains every arch with n seeds; for a quantity x_1..x_n (a metric, delta_m, a
throughput) this module gives

    mean  = (1/n) sum_i x_i
    std   = sqrt( sum_i (x_i - mean)^2 / (n - 1) )                 (sample std, ddof = 1)
    CI    = mean +- t_{1 - (1 - c)/2, n - 1} * std / sqrt(n)       (Student's t, n - 1 dof)

The interval is the usual two-sided confidence interval of the mean of a normal population with
unknown variance (c = 0.95 by default). With one seed std and the interval are undefined and
returned as ``None``; values that are ``None`` (a metric a run did not produce) are left out and
``n`` counts only the values used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Summary of the values of one quantity over seeds."""

    n: int
    mean: float | None
    std: float | None  # sample standard deviation (ddof = 1); None when n < 2
    ci_low: float | None  # the confidence interval of the mean; None when n < 2
    ci_high: float | None
    confidence: float
    values: list[float | None]

    @property
    def half_width(self) -> float | None:
        """Half the width of the confidence interval (None when n < 2)."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean of a non-empty sequence."""
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof = 1); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t-distribution with ``dof`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, dof))


def t_interval(values: Sequence[float], confidence: float = 0.95
               ) -> tuple[float, float] | None:
    """Two-sided ``confidence`` interval of the mean (t-distribution, n - 1 dof); None if n < 2."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    std = sample_std(values)
    if std is None:
        return None
    m = mean(values)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return m - half, m + half


def spread(values: Sequence[float | None], confidence: float = 0.95) -> Spread:
    """:class:`Spread` of ``values`` (``None`` entries are kept in ``values`` but not used)."""
    used = [float(v) for v in values if v is not None]
    interval = t_interval(used, confidence) if used else None
    return Spread(
        n=len(used),
        mean=mean(used) if used else None,
        std=sample_std(used),
        ci_low=interval[0] if interval else None,
        ci_high=interval[1] if interval else None,
        confidence=confidence,
        values=[None if v is None else float(v) for v in values],
    )
