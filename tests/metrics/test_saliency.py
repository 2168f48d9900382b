"""SaliencyMaxF: maxF (pooled F-beta) and mIoU (per-image Jaccard) against hand computations."""

import numpy as np
import pytest
import torch

from mtlkit.metrics import SaliencyMaxF
from mtlkit.metrics.saliency import MIOU_THRESHOLDS


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
    for k in ("tp", "fp", "fn", "n_images"):
        assert np.array_equal(a.state[k], whole.state[k])
    assert np.allclose(a.state["jaccard"], whole.state["jaccard"])
    assert a.compute()["mIoU"] == pytest.approx(whole.compute()["mIoU"])
    # per-threshold counts agree with a direct loop
    valid = t != 255
    for i, thr in enumerate(whole.thresholds):
        pp = (p >= thr) & valid
        assert whole.state["tp"][i] == int((pp & (t == 1)).sum())
        assert whole.state["fp"][i] == int((pp & (t == 0)).sum())


def test_empty_is_nan():
    m = SaliencyMaxF()
    m.update(_t([0.7]), _t([255]))
    out = m.compute()
    assert np.isnan(out["maxF"]) and np.isnan(out["mIoU"])


def test_miou_thresholds_are_mtlpt():
    # MTL-PT SaliencyMeter / eval_sal_predictions: np.linspace(0.2, 0.9, 15)
    assert MIOU_THRESHOLDS == pytest.approx([0.2 + 0.05 * k for k in range(15)])


def test_miou_hand_computed_per_image():
    m = SaliencyMaxF()
    # image 1: gt (1, 1, 0, 0), only the 0.95 pixel is salient at every threshold 0.2 .. 0.9:
    # Jaccard 1/2; image 2: no salient pixel, nothing predicted: Jaccard 1 (MTL-PT's jaccard);
    # image 3: all ignored, skipped. mIoU = mean (1/2 + 1) / 2 = 75 % at every threshold (the
    # first, 0.2, reported); pooled over the split it would be 1/2.
    pred = np.array([[0.95, 0.1, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]])
    gt = np.array([[1, 1, 0, 0], [0, 0, 255, 255], [255, 255, 255, 255]], np.float64)
    m.update(pred[:, None, None, :], gt[:, None, None, :])
    assert int(m.state["n_images"]) == 2
    assert m.mean_jaccard() == pytest.approx(np.full(15, 0.75))
    out = m.compute()
    assert out["mIoU"] == pytest.approx(75.0) and out["mIoU_threshold"] == pytest.approx(0.2)


def test_miou_uses_strict_threshold_and_max_over_thresholds():
    m = SaliencyMaxF()
    t4 = MIOU_THRESHOLDS[4]  # 0.4: a pixel scored exactly 0.4 is not salient at t = 0.4
    pred = np.array([0.1, t4, 0.6, 0.9, 0.99])
    gt = np.array([0, 1, 1, 0, 255], np.float64)
    m.update(pred, gt)  # one (H, W) map
    j = m.mean_jaccard()
    # t 0.20 .. 0.35: {t4, 0.6, 0.9} -> 2 / 3; t 0.40 .. 0.55: {0.6, 0.9} -> 1 / 3;
    # t 0.60 .. 0.85: {0.9} -> 0; t 0.90: nothing predicted, gt 2 -> 0
    assert j == pytest.approx([2 / 3] * 4 + [1 / 3] * 4 + [0.0] * 7)
    out = m.compute()
    assert out["mIoU"] == pytest.approx(200 / 3) and out["mIoU_threshold"] == pytest.approx(0.2)
    # maxF on the same map is unchanged by the mIoU part (>= thresholds, pooled)
    assert out["maxF"] == pytest.approx(100 * 1.3 * (2 / 3) / 1.2)


def test_miou_matches_a_direct_loop_of_mtlpt_formula():
    rng = np.random.default_rng(1)
    p = rng.random((5, 1, 7, 9))
    t = (rng.random((5, 1, 7, 9)) > 0.7).astype(np.float64)
    t[1] = 0  # an image without salient pixels
    p[1] = 0.05  # ... and nothing predicted: Jaccard 1
    t[2, 0, :3] = 255
    m = SaliencyMaxF()
    m.update(torch.from_numpy(p), torch.from_numpy(t))
    means = []
    for thr in MIOU_THRESHOLDS:
        jac = []
        for i in range(5):
            void = t[i, 0] == 255
            gt, pr = (t[i, 0] == 1) & ~void, (p[i, 0] > thr) & ~void
            union = (gt | pr).sum()
            jac.append((gt & pr).sum() / union if union else 1.0)
        means.append(np.mean(jac))
    assert m.mean_jaccard() == pytest.approx(means)
    assert m.compute()["mIoU"] == pytest.approx(100 * max(means))
