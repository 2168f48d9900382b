"""Spread over seeds: mean, sample std (ddof 1) and the t interval, checked by hand."""

from __future__ import annotations

import math
import statistics

import pytest

from mtlkit.engine.stats import mean, sample_std, spread, t_interval, t_quantile

# Student's t, two-sided 95 % (0.975 quantile), from printed tables
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}


@pytest.mark.parametrize("dof", [1, 2, 3])
def test_t_quantile_matches_printed_tables(dof: int) -> None:
    assert t_quantile(0.975, dof) == pytest.approx(T975[dof], abs=1e-4)


def test_mean_and_sample_std_by_hand() -> None:
    xs = [1.0, 2.0, 4.0]
    assert mean(xs) == pytest.approx(7 / 3)
    # sum of squared deviations 42/9 over n - 1 = 2
    assert sample_std(xs) == pytest.approx(math.sqrt(7 / 3))
    assert sample_std(xs) == pytest.approx(statistics.stdev(xs))
    assert sample_std([3.0]) is None


def test_interval_by_hand() -> None:
    xs = [1.0, 2.0, 4.0]
    lo, hi = t_interval(xs)
    half = T975[2] * math.sqrt(7 / 3) / math.sqrt(3)
    assert lo == pytest.approx(7 / 3 - half, abs=1e-3)
    assert hi == pytest.approx(7 / 3 + half, abs=1e-3)
    assert t_interval([1.0]) is None
    lo90, hi90 = t_interval(xs, 0.90)
    assert hi90 - lo90 < hi - lo  # a lower confidence gives a narrower interval


def test_spread_skips_missing_values() -> None:
    sp = spread([2.0, None, 4.0])
    assert sp.n == 2 and sp.mean == pytest.approx(3.0)
    assert sp.std == pytest.approx(math.sqrt(2.0))
    assert sp.half_width == pytest.approx(T975[1] * math.sqrt(2.0) / math.sqrt(2), abs=1e-3)
    assert sp.values == [2.0, None, 4.0]
    one = spread([5.0])
    assert one.n == 1 and one.mean == 5.0 and one.std is None and one.ci_low is None
    empty = spread([None])
    assert empty.n == 0 and empty.mean is None


def test_constant_values_have_zero_spread() -> None:
    sp = spread([3.0, 3.0, 3.0])
    assert sp.std == 0.0 and sp.ci_low == pytest.approx(3.0) and sp.ci_high == pytest.approx(3.0)
