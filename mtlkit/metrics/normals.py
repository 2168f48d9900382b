"""Surface-normal angular errors, pooled over every valid pixel of the split.

SPEC-data-eval.md ("Metrics"); MTI-Net (paper 004) reports the mean error mErr. Prediction and
ground truth are L2-normalised, the angle is the numerically stable
``theta = 2 * atan2(|p - g|, |p + g|)`` (degrees), and over all valid pixels of the split:
mean, median, rmse = sqrt(mean theta^2) (degrees) and the percentage of pixels with
theta < 11.25, < 22.5, < 30 degrees.

Median: the state keeps a histogram of theta with 0.001-degree bins over [0, 180] (180000 int64
counts, so the state has a fixed size and merges by addition). The median is taken as the centre
of the bin holding the middle order statistic (the mean of the two middle ones for an even
count), so it is within 0.0005 degrees of the exact median of all pixels. Every other number is
exact (float64 sums and exact counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtlkit.metrics.base import Accumulator, check_same_shape, to_numpy

BIN_DEG = 0.001
N_BINS = 180_000  # 180 / BIN_DEG
WITHIN = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def angles_deg(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Angle in degrees between the L2-normalised vectors of ``pred`` and ``target`` (..., 3)."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12)
    g = target / np.maximum(np.linalg.norm(target, axis=-1, keepdims=True), 1e-12)
    return np.degrees(2.0 * np.arctan2(np.linalg.norm(p - g, axis=-1),
                                       np.linalg.norm(p + g, axis=-1)))


class NormalsMetrics(Accumulator):
    """Pooled angular errors of surface normals.

    ``update(pred, target)``: ``pred`` (B, 3, H, W) (normalised inside; a zero vector scores 90
    degrees), ``target`` (B, 3, H, W) with an all-zero vector = invalid pixel.
    ``compute()`` -> ``{"mean", "median", "rmse"}`` (degrees) and ``{"within_11_25",
    "within_22_5", "within_30"}`` (%). State: ``n``, ``sum``, ``sum_sq``, the three within-counts
    and ``hist`` (180000,) int64.
    """

    def _empty_state(self) -> dict[str, np.ndarray]:
        state = {
            "n": np.zeros((), np.int64),
            "sum": np.zeros((), np.float64),
            "sum_sq": np.zeros((), np.float64),
            "hist": np.zeros(N_BINS, np.int64),
        }
        state.update({k: np.zeros((), np.int64) for k in WITHIN})
        return state

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        p = to_numpy(pred).astype(np.float64)
        g = to_numpy(target).astype(np.float64)
        check_same_shape(p, g, "NormalsMetrics")
        if p.ndim != 4 or p.shape[1] != 3:
            raise ValueError(f"NormalsMetrics: expected (B, 3, H, W), got {p.shape}")
        p = np.moveaxis(p, 1, -1).reshape(-1, 3)
        g = np.moveaxis(g, 1, -1).reshape(-1, 3)
        valid = np.any(g != 0, axis=1) & np.all(np.isfinite(g), axis=1)
        theta = angles_deg(p[valid], g[valid])
        s = self.state
        s["n"] += theta.size
        s["sum"] += theta.sum()
        s["sum_sq"] += np.sum(theta * theta)
        for key, limit in WITHIN.items():
            s[key] += np.count_nonzero(theta < limit)
        bins = np.clip((theta / BIN_DEG).astype(np.int64), 0, N_BINS - 1)
        s["hist"] += np.bincount(bins, minlength=N_BINS)

    def _median(self) -> float:
        s = self.state
        n = int(s["n"])
        cum = np.cumsum(s["hist"])
        lo, hi = (n - 1) // 2, n // 2  # 0-based ranks of the middle order statistic(s)
        b_lo = int(np.searchsorted(cum, lo, side="right"))
        b_hi = int(np.searchsorted(cum, hi, side="right"))
        return float((b_lo + b_hi + 1) * 0.5 * BIN_DEG)

    def compute(self) -> dict[str, Any]:
        s = self.state
        n = int(s["n"])
        if n == 0:
            return {k: float("nan") for k in ("mean", "median", "rmse", *WITHIN)}
        out = {
            "mean": float(s["sum"] / n),
            "median": self._median(),
            "rmse": float(np.sqrt(s["sum_sq"] / n)),
        }
        out.update({k: float(s[k] / n * 100.0) for k in WITHIN})
        return out
