"""Normals from depth (plane / sphere of known orientation) and boundaries of label maps."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from mtlkit.data.geometry import backproject, boundaries, normals_from_depth

FX, FY, CX, CY = 120.0, 125.0, 39.5, 29.5
H, W = 60, 80


def _plane_depth(n: np.ndarray, dist: float) -> np.ndarray:
    """z-depth of the plane {X : n . X = dist} seen by the pinhole camera."""
    u, v = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    rays = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], -1)
    return dist / (rays @ n)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


@pytest.mark.parametrize("normal", [(0.3, -0.5, -0.8), (0.0, 0.0, -1.0), (-0.6, 0.2, -0.7),
                                    (0.0, -0.9, -0.35)])
@pytest.mark.parametrize("smooth", [1, 3])
def test_plane_normal_recovered(normal: tuple[float, float, float], smooth: int) -> None:
    n = np.array(normal) / np.linalg.norm(normal)
    depth = _plane_depth(n, -2.0)  # n . X = -2 < 0: the plane faces the camera
    assert (depth > 0).all()
    out = normals_from_depth(depth.astype(np.float32), FX, FY, CX, CY, smooth=smooth)
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert _angle_deg(out, n).max() < 1.0
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_orientation_towards_camera() -> None:
    # the same plane written with the opposite normal: the result must still face the camera
    n = np.array([0.2, 0.1, 1.0]) / np.linalg.norm([0.2, 0.1, 1.0])
    depth = _plane_depth(n, 3.0)
    out = normals_from_depth(depth, FX, FY, CX, CY)
    pts = backproject(depth, FX, FY, CX, CY)
    assert ((out * pts).sum(-1) < 0).all()
    assert _angle_deg(out, -n).max() < 1.0


def test_sphere_normals() -> None:
    c, r = np.array([0.1, -0.05, 2.0]), 0.8
    u, v = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    d = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], -1)
    a = (d * d).sum(-1)
    b = d @ c
    disc = b * b - a * (c @ c - r * r)
    hit = disc > 0
    t = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) / a, 0.0)
    depth = t  # d has z = 1, so t is the z-depth
    out = normals_from_depth(depth, FX, FY, CX, CY, smooth=1)
    valid = (out != 0).any(-1)
    truth = (d * t[..., None] - c) / r
    assert valid.sum() > 0.5 * hit.sum()
    assert not valid[~hit].any()
    assert np.median(_angle_deg(out[valid], truth[valid])) < 1.0


def test_invalid_depth_gives_zero_normals() -> None:
    depth = _plane_depth(np.array([0.0, 0.0, -1.0]), -2.0)
    depth[30, 40] = 0.0
    depth[0:3, :] = np.nan
    out = normals_from_depth(depth, FX, FY, CX, CY, smooth=2)
    valid = (out != 0).any(-1)
    assert not valid[28:33, 38:43].any()  # the hole and its 5x5 window
    assert valid[35:, 45:].all()
    assert not valid[0:5].any()
    assert valid[6:25].all()


def test_boundaries_two_regions_thick() -> None:
    lab = np.zeros((6, 8), dtype=np.int64)
    lab[:, 4:] = 1
    e = boundaries([lab])
    assert e.dtype == np.uint8
    expect = np.zeros((6, 8), dtype=np.uint8)
    expect[:, 3:5] = 1  # both sides, including the label-0 side ("inner" would skip it)
    np.testing.assert_array_equal(e, expect)


def test_boundaries_union_and_skimage_equivalence() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (20, 30))
    b = rng.integers(0, 2, (20, 30))
    e = boundaries([a, b])
    ref = find_boundaries(a, mode="thick", connectivity=1) | find_boundaries(
        b, mode="thick", connectivity=1)
    np.testing.assert_array_equal(e.astype(bool), ref)


def test_boundaries_ignore() -> None:
    lab = np.zeros((5, 5), dtype=np.uint8)
    lab[2, 2] = 255
    e = boundaries([lab], ignore=255)
    assert e[2, 2] == 255
    assert e[2, 1] == 1 and e[1, 2] == 1  # labelled next to unknown counts as boundary
    assert e[0, 0] == 0
    assert set(np.unique(e)) <= {0, 1, 255}


def test_boundaries_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        boundaries([np.zeros((3, 3)), np.zeros((3, 4))])
