"""NormalsMetrics against hand-computed angles."""

import math

import numpy as np
import pytest
import torch

from mtlkit.metrics import NormalsMetrics
from mtlkit.metrics.normals import BIN_DEG


def _vec(deg: float, scale: float = 1.0) -> list[float]:
    r = math.radians(deg)
    return [scale * math.sin(r), 0.0, scale * math.cos(r)]


def _batch(vectors):
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_hand_computed():
    angles = [0.0, 10.0, 20.0, 25.0, 45.0, 90.0]
    pred = [_vec(a, scale=3.0) for a in angles] + [[1.0, 0.0, 0.0]]  # normalised inside
    target = [[0.0, 0.0, 1.0]] * len(angles) + [[0.0, 0.0, 0.0]]  # last pixel invalid
    m = NormalsMetrics()
    m.update(_batch(pred), _batch(target))
    out = m.compute()
    assert out["mean"] == pytest.approx(190.0 / 6, abs=1e-4)
    assert out["median"] == pytest.approx(22.5, abs=BIN_DEG / 2 + 1e-4)
    assert out["rmse"] == pytest.approx(math.sqrt(11250.0 / 6), abs=1e-4)
    assert out["within_11_25"] == pytest.approx(200.0 / 6)
    assert out["within_22_5"] == pytest.approx(50.0)
    assert out["within_30"] == pytest.approx(400.0 / 6)


def test_opposite_vector_is_180_degrees():
    m = NormalsMetrics()
    m.update(_batch([[0.0, 0.0, -1.0]]), _batch([[0.0, 0.0, 1.0]]))
    assert m.compute()["mean"] == pytest.approx(180.0)


def test_median_within_half_a_bin_of_exact():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 3, 9, 11))
    g = rng.normal(size=(2, 3, 9, 11))
    g[:, :, 0, :] = 0  # invalid row
    m = NormalsMetrics()
    m.update(torch.from_numpy(p), torch.from_numpy(g))
    pv = np.moveaxis(p, 1, -1)[:, 1:].reshape(-1, 3)
    gv = np.moveaxis(g, 1, -1)[:, 1:].reshape(-1, 3)
    cos = np.sum(pv * gv, 1) / np.linalg.norm(pv, axis=1) / np.linalg.norm(gv, axis=1)
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    out = m.compute()
    assert abs(out["median"] - np.median(ang)) <= BIN_DEG / 2 + 1e-6
    assert out["mean"] == pytest.approx(ang.mean(), abs=1e-5)
    assert out["within_30"] == pytest.approx(np.mean(ang < 30) * 100)


def test_merge_equals_single_update():
    rng = np.random.default_rng(1)
    p = torch.from_numpy(rng.normal(size=(3, 3, 4, 5)))
    g = torch.from_numpy(rng.normal(size=(3, 3, 4, 5)))
    whole = NormalsMetrics()
    whole.update(p, g)
    a, b = NormalsMetrics(), NormalsMetrics()
    a.update(p[:1], g[:1])
    b.update(p[1:], g[1:])
    a.merge(b)
    assert np.array_equal(a.state["hist"], whole.state["hist"])
    for k, v in whole.compute().items():
        assert a.compute()[k] == pytest.approx(v, rel=1e-12)
