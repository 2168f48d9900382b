"""Depth estimation metrics, pooled over every valid pixel of the split.

SPEC-data-eval.md ("Metrics"): rmse = sqrt(sum_i (d_i - g_i)^2 / N_valid) over all valid pixels
of the split (MTL-PT; ASTMT averaged per image instead, which gives a different number); also
log-rmse (natural log), abs-rel, sq-rel and delta < 1.25^k, k = 1, 2, 3 (as MTI-Net Table 6,
paper 004). With d = prediction, g = ground truth, over pixels with g > 0:

- rmse     = sqrt(mean (d - g)^2)                  metres
- log_rmse = sqrt(mean (ln max(d, 1e-9) - ln g)^2)
- abs_rel  = mean |d - g| / g
- sq_rel   = mean (d - g)^2 / g
- delta_k  = fraction of pixels with max(d', g) / min(d', g) < 1.25^k, d' = max(d, 1e-9)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtlkit.metrics.base import Accumulator, check_same_shape, to_numpy

EPS = 1e-9

_KEYS = ("n", "sq", "sq_log", "abs_rel", "sq_rel", "delta1", "delta2", "delta3")
_COUNTS = ("n", "delta1", "delta2", "delta3")


class DepthMetrics(Accumulator):
    """Pooled depth errors.

    ``update(pred, target)``: ``pred`` (B, 1, H, W) metres, ``target`` (B, 1, H, W) metres with
    0 (or any value <= 0, or non-finite) = invalid. ``compute()`` -> ``{"rmse", "log_rmse",
    "abs_rel", "sq_rel", "delta1", "delta2", "delta3"}`` (deltas as fractions in [0, 1]).
    State: 0-d float64 sums over valid pixels; int64 counts ``n`` (valid pixels), ``delta1..3``.
    """

    def _empty_state(self) -> dict[str, np.ndarray]:
        return {k: np.zeros((), np.int64 if k in _COUNTS else np.float64) for k in _KEYS}

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        d = to_numpy(pred).astype(np.float64)
        g = to_numpy(target).astype(np.float64)
        check_same_shape(d, g, "DepthMetrics")
        valid = np.isfinite(g) & (g > 0)
        d, g = d[valid], g[valid]
        err = d - g
        dc = np.maximum(d, EPS)
        log_err = np.log(dc) - np.log(g)
        ratio = np.maximum(dc / g, g / dc)
        s = self.state
        s["n"] += d.size
        s["sq"] += np.sum(err * err)
        s["sq_log"] += np.sum(log_err * log_err)
        s["abs_rel"] += np.sum(np.abs(err) / g)
        s["sq_rel"] += np.sum(err * err / g)
        for k in (1, 2, 3):
            s[f"delta{k}"] += np.count_nonzero(ratio < 1.25**k)

    def compute(self) -> dict[str, Any]:
        s = self.state
        n = float(s["n"])
        if n == 0:
            return {k: float("nan") for k in
                    ("rmse", "log_rmse", "abs_rel", "sq_rel", "delta1", "delta2", "delta3")}
        return {
            "rmse": float(np.sqrt(s["sq"] / n)),
            "log_rmse": float(np.sqrt(s["sq_log"] / n)),
            "abs_rel": float(s["abs_rel"] / n),
            "sq_rel": float(s["sq_rel"] / n),
            "delta1": float(s["delta1"] / n),
            "delta2": float(s["delta2"] / n),
            "delta3": float(s["delta3"] / n),
        }
