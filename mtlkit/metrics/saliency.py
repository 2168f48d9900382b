"""Saliency scores: maxF (ATRC / InvPT, pooled) and mIoU (MTI-Net / MTL-PT, per image).

**maxF** (SPEC-data-eval.md, "Metrics", as ATRC): thresholds 0.05, 0.10, ..., 0.95; at threshold
t a pixel is predicted salient when its probability is >= t. TP, FP, FN are summed over all
valid pixels of the split (target != 255; target > 0.5 is salient), then per threshold
P = TP / (TP + FP), R = TP / (TP + FN), F = (1 + beta^2) P R / (beta^2 P + R) with
beta^2 = 0.3 (an undefined F counts as 0), and maxF = max_t F (in %). (InvPT/TaskPrompter's
double sigmoid is deliberately not reproduced.)

**mIoU**: the saliency measure of MTI-Net (paper 004, Sec. 4.1: "saliency estimation ... mean
intersection over union") as its authors' code computes it (MTL-PT ``evaluation/eval_sal.py``
and ``jaccard.py``): thresholds ``linspace(0.2, 0.9, 15)`` (0.20, 0.25, ..., 0.90); at threshold
t a pixel is predicted salient when its probability is > t (strict); per image the Jaccard index
``|pred & gt| / |pred | gt|`` over its valid pixels (1 when both are empty); the mean over the
images per threshold; mIoU = the maximum of those means (in %). This is the one metric here
that averages per image, as the reference does. Ignored pixels (255) are void, as MTL-PT's
``void_pixels``; an image without any valid pixel is skipped. MTL-PT scores 8-bit PNGs
(probability x 255, saved then divided by 255); mtlkit scores the probabilities themselves.

Which of the two enters delta_m is chosen by :func:`mtlkit.metrics.delta_m.main_metrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtlkit.metrics.base import Accumulator, check_same_shape, squeeze_channel, to_numpy

THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 10)  # 0.05 .. 0.95 (maxF, ATRC)
MIOU_THRESHOLDS = np.linspace(0.2, 0.9, 15)  # 0.20 .. 0.90 (mIoU, MTL-PT SaliencyMeter)


def _suffix_counts(level: np.ndarray, groups: np.ndarray, n_groups: int,
                   n_thr: int) -> np.ndarray:
    """Per group, how many entries have ``level > k`` for each k: int64 (n_groups, n_thr)."""
    hist = np.bincount(groups * (n_thr + 1) + level, minlength=n_groups * (n_thr + 1))
    hist = hist.reshape(n_groups, n_thr + 1)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]


class SaliencyMaxF(Accumulator):
    """Pooled maxF and per-image mIoU of saliency maps (module docstring).

    ``update(pred, target)``: ``pred`` probabilities (B, 1, H, W) or (B, H, W) (a 2-D map is
    one image), ``target`` of the same shape with values 0 / 1 and ``ignore_index``.
    ``compute()`` -> ``{"maxF": %, "maxF_threshold": t, "mIoU": %, "mIoU_threshold": t}``.
    State: ``tp``, ``fp``, ``fn`` int64 (19,) per maxF threshold; ``jaccard`` float64 (15,) =
    per mIoU threshold the sum over images of their Jaccard index; ``n_images`` int64.
    """

    def __init__(self, beta_sq: float = 0.3, ignore_index: int = 255,
                 thresholds: np.ndarray | None = None,
                 miou_thresholds: np.ndarray | None = None) -> None:
        self.beta_sq = float(beta_sq)
        self.ignore_index = ignore_index
        thr = THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
        self.thresholds = np.sort(thr)
        mthr = MIOU_THRESHOLDS if miou_thresholds is None else miou_thresholds
        self.miou_thresholds = np.sort(np.asarray(mthr, np.float64))
        super().__init__()

    def _config(self) -> tuple[Any, ...]:
        return (self.beta_sq, self.ignore_index, tuple(self.thresholds.tolist()),
                tuple(self.miou_thresholds.tolist()))

    def _empty_state(self) -> dict[str, np.ndarray]:
        n = len(self.thresholds)
        state = {k: np.zeros(n, np.int64) for k in ("tp", "fp", "fn")}
        state["jaccard"] = np.zeros(len(self.miou_thresholds), np.float64)
        state["n_images"] = np.zeros((), np.int64)
        return state

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        p = squeeze_channel(to_numpy(pred), 3).astype(np.float64)
        t = squeeze_channel(to_numpy(target), 3).astype(np.float64)
        check_same_shape(p, t, "SaliencyMaxF")
        n_img = p.shape[0] if p.ndim > 2 else 1  # (B, H, W), or one (H, W) map
        p, t = p.reshape(n_img, -1), t.reshape(n_img, -1)
        valid = t != self.ignore_index
        p = np.where(np.isnan(p), -np.inf, p)  # NaN scores are never salient
        image = np.broadcast_to(np.arange(p.shape[0])[:, None], p.shape)[valid]
        p, pos = p[valid], t[valid] > 0.5

        # maxF: level = number of thresholds <= p (salient at thresholds[:level]), pooled
        n_thr = len(self.thresholds)
        level = np.searchsorted(self.thresholds, p, side="right")
        tp = _suffix_counts(level[pos], np.zeros(int(pos.sum()), np.int64), 1, n_thr)[0]
        fp = _suffix_counts(level[~pos], np.zeros(int((~pos).sum()), np.int64), 1, n_thr)[0]
        self.state["tp"] += tp
        self.state["fp"] += fp
        self.state["fn"] += int(pos.sum()) - tp

        # mIoU: level = number of thresholds < p (salient at p > t), per image
        n_m = len(self.miou_thresholds)
        level = np.searchsorted(self.miou_thresholds, p, side="left")
        tp_i = _suffix_counts(level[pos], image[pos], n_img, n_m)
        pred_i = _suffix_counts(level, image, n_img, n_m)
        gt_i = np.bincount(image[pos], minlength=n_img)[:, None]
        union = pred_i + gt_i - tp_i
        jac = np.divide(tp_i, union, out=np.ones(union.shape), where=union > 0)
        scored = valid.any(axis=1)
        self.state["jaccard"] += jac[scored].sum(axis=0)
        self.state["n_images"] += int(scored.sum())

    def fscores(self) -> np.ndarray:
        """F-beta per threshold (fractions; 0 where undefined)."""
        tp, fp, fn = (self.state[k].astype(np.float64) for k in ("tp", "fp", "fn"))
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = tp / (tp + fp)
            rec = tp / (tp + fn)
            f = (1 + self.beta_sq) * prec * rec / (self.beta_sq * prec + rec)
        return np.nan_to_num(f, nan=0.0)

    def mean_jaccard(self) -> np.ndarray:
        """Mean over the images of the Jaccard index, per mIoU threshold (fractions)."""
        n = int(self.state["n_images"])
        return self.state["jaccard"] / n if n else np.full(len(self.miou_thresholds), np.nan)

    def compute(self) -> dict[str, Any]:
        nan = float("nan")
        if int(self.state["n_images"]) == 0:  # nothing to score
            return {"maxF": nan, "maxF_threshold": nan, "mIoU": nan, "mIoU_threshold": nan}
        f = self.fscores()
        k = int(np.argmax(f))
        j = self.mean_jaccard()
        m = int(np.argmax(j))
        return {"maxF": float(f[k] * 100.0), "maxF_threshold": float(self.thresholds[k]),
                "mIoU": float(j[m] * 100.0), "mIoU_threshold": float(self.miou_thresholds[m])}
