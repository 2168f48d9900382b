"""DepthMetrics against hand-computed values; pooling over pixels, not images."""

import math

import numpy as np
import pytest
import torch

from mtlkit.metrics import DepthMetrics


def _t(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_hand_computed():
    m = DepthMetrics()
    # last pixel invalid (target 0): its prediction must not matter
    m.update(_t([1.5, 2.0, 3.5, 9.0]), _t([2.0, 2.0, 2.0, 0.0]))
    out = m.compute()
    # errors -0.5, 0, 1.5
    assert out["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 2.25) / 3))
    assert out["abs_rel"] == pytest.approx((0.25 + 0 + 0.75) / 3)
    assert out["sq_rel"] == pytest.approx((0.125 + 0 + 1.125) / 3)
    assert out["log_rmse"] == pytest.approx(
        math.sqrt((math.log(0.75) ** 2 + math.log(1.75) ** 2) / 3), rel=1e-6)
    # ratios 4/3, 1, 1.75 vs 1.25, 1.5625, 1.953125
    assert out["delta1"] == pytest.approx(1 / 3)
    assert out["delta2"] == pytest.approx(2 / 3)
    assert out["delta3"] == pytest.approx(1.0)


def test_pooled_over_pixels_not_averaged_over_images():
    m = DepthMetrics()
    m.update(_t([2.0]), _t([1.0]))  # image A: one pixel, error 1
    m.update(_t([3.0, 3.0, 3.0]), _t([1.0, 1.0, 1.0]))  # image B: three pixels, error 2
    pooled = math.sqrt((1 + 3 * 4) / 4)
    per_image_mean = (1.0 + 2.0) / 2
    assert m.compute()["rmse"] == pytest.approx(pooled)
    assert abs(pooled - per_image_mean) > 0.3


def test_zero_prediction_is_clamped_for_logs():
    m = DepthMetrics()
    m.update(_t([0.0]), _t([1.0]))
    out = m.compute()
    assert out["log_rmse"] == pytest.approx(-math.log(1e-9), rel=1e-6)
    assert out["delta3"] == 0.0
    assert out["abs_rel"] == pytest.approx(1.0)


def test_merge_equals_single_update_and_empty():
    rng = np.random.default_rng(0)
    g = torch.from_numpy(rng.uniform(0.5, 5, (3, 1, 6, 7)).astype(np.float32))
    g[g < 1.0] = 0
    p = g + torch.from_numpy(rng.normal(0, 0.3, g.shape).astype(np.float32))
    whole = DepthMetrics()
    whole.update(p, g)
    a, b = DepthMetrics(), DepthMetrics()
    a.update(p[:2], g[:2])
    b.update(p[2:], g[2:])
    a.merge(b)
    for k, v in whole.compute().items():
        assert a.compute()[k] == pytest.approx(v, rel=1e-12)
    assert math.isnan(DepthMetrics().compute()["rmse"])
