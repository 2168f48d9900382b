"""Saliency maxF: the best F-beta over fixed thresholds, with counts pooled over the split.

SPEC-data-eval.md ("Metrics", as ATRC): thresholds 0.05, 0.10, ..., 0.95; at threshold t a pixel
is predicted salient when its probability is >= t. TP, FP, FN are summed over all valid pixels
of the split (target != 255; target > 0.5 is salient), then per threshold
P = TP / (TP + FP), R = TP / (TP + FN), F = (1 + beta^2) P R / (beta^2 P + R) with
beta^2 = 0.3 (an undefined F counts as 0), and maxF = max_t F (in %). (InvPT/TaskPrompter's
double sigmoid is deliberately not reproduced.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtlkit.metrics.base import Accumulator, check_same_shape, squeeze_channel, to_numpy

THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 10)  # 0.05 .. 0.95


class SaliencyMaxF(Accumulator):
    """Pooled maxF.

    ``update(pred, target)``: ``pred`` probabilities (B, 1, H, W), ``target`` (B, 1, H, W) with
    values 0 / 1 and ``ignore_index``. ``compute()`` -> ``{"maxF": %, "maxF_threshold": t}``.
    State: ``tp``, ``fp``, ``fn`` int64 (19,) per threshold.
    """

    def __init__(self, beta_sq: float = 0.3, ignore_index: int = 255,
                 thresholds: np.ndarray | None = None) -> None:
        self.beta_sq = float(beta_sq)
        self.ignore_index = ignore_index
        thr = THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
        self.thresholds = np.sort(thr)
        super().__init__()

    def _config(self) -> tuple[Any, ...]:
        return (self.beta_sq, self.ignore_index, tuple(self.thresholds.tolist()))

    def _empty_state(self) -> dict[str, np.ndarray]:
        n = len(self.thresholds)
        return {k: np.zeros(n, np.int64) for k in ("tp", "fp", "fn")}

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        p = squeeze_channel(to_numpy(pred), 3).astype(np.float64)
        t = squeeze_channel(to_numpy(target), 3).astype(np.float64)
        check_same_shape(p, t, "SaliencyMaxF")
        valid = t != self.ignore_index
        p, pos = p[valid], t[valid] > 0.5
        n_thr = len(self.thresholds)
        # level = number of thresholds <= p: the pixel is predicted salient at thresholds[:level]
        level = np.searchsorted(self.thresholds, np.where(np.isnan(p), -np.inf, p), side="right")
        hist_pos = np.bincount(level[pos], minlength=n_thr + 1)
        hist_neg = np.bincount(level[~pos], minlength=n_thr + 1)
        # predicted at threshold k <=> level > k: suffix sums over levels k+1..n_thr
        tp = np.cumsum(hist_pos[::-1])[::-1][1:]
        fp = np.cumsum(hist_neg[::-1])[::-1][1:]
        self.state["tp"] += tp
        self.state["fp"] += fp
        self.state["fn"] += int(pos.sum()) - tp

    def fscores(self) -> np.ndarray:
        """F-beta per threshold (fractions; 0 where undefined)."""
        tp, fp, fn = (self.state[k].astype(np.float64) for k in ("tp", "fp", "fn"))
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = tp / (tp + fp)
            rec = tp / (tp + fn)
            f = (1 + self.beta_sq) * prec * rec / (self.beta_sq * prec + rec)
        return np.nan_to_num(f, nan=0.0)

    def compute(self) -> dict[str, Any]:
        if not any(self.state[k].any() for k in ("tp", "fp", "fn")):
            return {"maxF": float("nan"), "maxF_threshold": float("nan")}  # nothing to score
        f = self.fscores()
        k = int(np.argmax(f))
        return {"maxF": float(f[k] * 100.0), "maxF_threshold": float(self.thresholds[k])}
