"""Geometric label derivation: surface normals from depth, boundaries from label maps.

NYUD ships neither the normals nor the edge maps its multi-task benchmark uses
(``shared/SPEC-data-eval.md``), so mtlkit derives both, documented here.

Normals (:func:`normals_from_depth`): back-project every pixel with the pinhole intrinsics,
``P(u, v) = z * ((u - cx) / fx, (v - cy) / fy, 1)``; estimate the two tangent vectors of the
surface as least-squares derivatives of the 3D points over a (2r+1) x (2r+1) window
(``dP/du`` = sum_k k (P(u+k) - P(u-k)) smoothed over rows, likewise ``dP/dv``; a
Savitzky-Golay style local plane fit); the normal is their cross product, normalised and
oriented towards the camera (``n . P < 0``). Every difference of two points of a plane lies in the
plane, so the estimate is exact for planar surfaces whatever the window. Pixels whose depth is
invalid (0) or whose window contains an invalid depth get the all-zero (invalid) normal.
Frame: camera, x right, y down, z forward (the HDF5 convention).

Boundaries (:func:`boundaries`): the union over label maps of
``skimage.segmentation.find_boundaries(mode="thick", connectivity=1)``: a pixel is a boundary
when one of its 4-neighbours has another label, so both sides of a label change are marked
(2 pixels wide). ``"thick"`` rather than ``"inner"``: ``inner`` skips the pixels of the
``background`` label (0), but label 0 is a real class (NYUD's wall, the synthetic floor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

IGNORE = 255


def backproject(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Camera-frame 3D points (H, W, 3) of a z-depth map (H, W) in metres."""
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float64) - cx) / fx
    v = (np.arange(h, dtype=np.float64) - cy) / fy
    z = depth.astype(np.float64)
    return np.stack([z * u[None, :], z * v[:, None], z], axis=-1)


def normals_from_depth(
    depth: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    smooth: int = 2,
    max_rel_jump: float | None = None,
) -> np.ndarray:
    """Surface normals (H, W, 3) float32 from a z-depth map (H, W) in metres (0 = invalid).

    Args:
        depth: (H, W) z-depth along the optical axis, metres; <= 0 or non-finite is invalid.
        fx, fy, cx, cy: pinhole intrinsics in pixels.
        smooth: window radius r >= 1 of the local fit (window (2r+1)^2).
        max_rel_jump: if given, also invalidate pixels whose window spans a depth ratio
            max/min > 1 + max_rel_jump (occlusion boundaries).

    Returns:
        unit normals in the camera frame (x right, y down, z forward) facing the camera
        (``n . P < 0``); all-zero where the depth or its window is invalid.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    r = max(1, int(smooth))
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0.0)
    pts = backproject(z, fx, fy, cx, cy)
    k = np.arange(-r, r + 1, dtype=np.float64)
    deriv = k / (k**2).sum()  # least-squares slope weights
    box = np.full(2 * r + 1, 1.0 / (2 * r + 1))
    du = np.empty_like(pts)
    dv = np.empty_like(pts)
    for c in range(3):
        du[..., c] = ndimage.correlate1d(
            ndimage.correlate1d(pts[..., c], deriv, axis=1, mode="nearest"), box, axis=0,
            mode="nearest")
        dv[..., c] = ndimage.correlate1d(
            ndimage.correlate1d(pts[..., c], deriv, axis=0, mode="nearest"), box, axis=1,
            mode="nearest")
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1)
    ok = ndimage.minimum_filter(valid, size=2 * r + 1, mode="nearest") & (norm > 1e-12)
    if max_rel_jump is not None:
        big = np.where(valid, z, np.inf)
        zmax = ndimage.maximum_filter(z, size=2 * r + 1, mode="nearest")
        zmin = ndimage.minimum_filter(big, size=2 * r + 1, mode="nearest")
        ok &= zmax <= zmin * (1.0 + max_rel_jump)
    n = n / np.where(norm > 0, norm, 1.0)[..., None]
    facing = (n * pts).sum(-1)
    n = np.where((facing > 0)[..., None], -n, n)
    n[~ok] = 0.0
    return n.astype(np.float32)


def boundaries(label_maps: Sequence[np.ndarray], ignore: int | None = None) -> np.ndarray:
    """Boundary map (H, W) uint8 of one or more label maps (H, W) of the same size.

    1 where any map changes label between 4-neighbours (both sides, skimage ``find_boundaries``
    mode ``"thick"``), else 0. If ``ignore`` is given, pixels equal to ``ignore`` in any map are
    255 (unknown); a labelled pixel next to an ignored region counts as a boundary.
    """
    if len(label_maps) == 0:
        raise ValueError("boundaries needs at least one label map")
    shape = np.asarray(label_maps[0]).shape
    out = np.zeros(shape, dtype=bool)
    unknown = np.zeros(shape, dtype=bool)
    for lab in label_maps:
        lab = np.asarray(lab)
        if lab.shape != shape:
            raise ValueError(f"label maps differ in shape: {lab.shape} vs {shape}")
        out |= find_boundaries(lab, connectivity=1, mode="thick")
        if ignore is not None:
            unknown |= lab == ignore
    res = out.astype(np.uint8)
    res[unknown] = IGNORE
    return res
