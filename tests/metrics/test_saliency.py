"""SaliencyMaxF against hand-computed F-beta values."""

import numpy as np
import pytest
import torch

from mtlkit.metrics import SaliencyMaxF


def _t(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_hand_computed():
    m = SaliencyMaxF()
    # the last pixel is ignored (target 255) although it is predicted with 0.99
    m.update(_t([0.1, 0.4, 0.6, 0.9, 0.99]), _t([0, 1, 1, 0, 255]))
    f = m.fscores()
    b2 = 0.3
    # t <= 0.10: all 4 predicted -> P 1/2, R 1
    assert f[0] == pytest.approx((1 + b2) * 0.5 / (b2 * 0.5 + 1))
    # 0.15 .. 0.40: {0.4, 0.6, 0.9} -> P 2/3, R 1
    assert f[2] == pytest.approx((1 + b2) * (2 / 3) / (b2 * 2 / 3 + 1))
    # 0.45 .. 0.60: {0.6, 0.9} -> P 1/2, R 1/2 -> F 1/2
    assert f[8] == pytest.approx(0.5)
    # 0.65 .. 0.95: only negatives or nothing -> 0
    assert np.all(f[12:] == 0)
    out = m.compute()
    assert out["maxF"] == pytest.approx(100 * 1.3 * (2 / 3) / 1.2)
    assert out["maxF_threshold"] == pytest.approx(0.15)
    assert m.state["tp"][0] == 2 and m.state["fp"][0] == 2 and m.state["fn"][-1] == 2


def test_merge_equals_single_update():
    rng = np.random.default_rng(0)
    p = torch.from_numpy(rng.random((4, 1, 6, 6)).astype(np.float32))
    t = torch.from_numpy((rng.random((4, 1, 6, 6)) > 0.6).astype(np.float32))
    t[0, 0, 0] = 255
    whole = SaliencyMaxF()
    whole.update(p, t)
    a, b = SaliencyMaxF(), SaliencyMaxF()
    a.update(p[:3], t[:3])
    b.update(p[3:], t[3:])
    a.merge(b)
    for k in ("tp", "fp", "fn"):
        assert np.array_equal(a.state[k], whole.state[k])
    # per-threshold counts agree with a direct loop
    valid = t != 255
    for i, thr in enumerate(whole.thresholds):
        pp = (p >= thr) & valid
        assert whole.state["tp"][i] == int((pp & (t == 1)).sum())
        assert whole.state["fp"][i] == int((pp & (t == 0)).sum())


def test_empty_is_nan():
    m = SaliencyMaxF()
    m.update(_t([0.7]), _t([255]))
    assert np.isnan(m.compute()["maxF"])
