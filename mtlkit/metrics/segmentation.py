"""Mean intersection-over-union for semantic segmentation and human parts.

SPEC-data-eval.md ("Metrics"): one confusion matrix over all valid pixels of the split
(target != ignore_index), IoU_c = TP_c / (TP_c + FP_c + FN_c) per class, mean over classes.
MTI-Net (paper 004, Sec. 4.1) reports it as mIoU (%) for SemSeg and PartSeg.

Mean over classes (documented choice): classes that occur neither in the ground truth nor in
the prediction of the split (TP + FP + FN = 0) have no IoU and are left out of the mean; their
entry in ``per_class_IoU`` is ``None``. MTL-PT divides by max(TP + FP + FN, eps) and so counts
such classes as IoU 0. On the full NYUD/PASCAL splits every class occurs and both agree; on small
or synthetic splits mtlkit's choice does not penalise a model for classes the split lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtlkit.metrics.base import Accumulator, check_same_shape, squeeze_channel, to_numpy


class MeanIoU(Accumulator):
    """Pooled confusion-matrix mIoU.

    ``update(pred, target)``: ``pred`` int (B, H, W) class ids (or logits (B, K, H, W), argmax
    taken), ``target`` int (B, H, W) (or (B, 1, H, W)) with ``ignore_index`` = ignore.
    ``compute()`` -> ``{"mIoU": %, "pixel_acc": %, "per_class_IoU": [% or None] * K}``.
    State: ``confusion`` int64 (K, K), rows = ground truth, columns = prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        super().__init__()

    def _config(self) -> tuple[Any, ...]:
        return (self.num_classes, self.ignore_index)

    def _empty_state(self) -> dict[str, np.ndarray]:
        return {"confusion": np.zeros((self.num_classes, self.num_classes), np.int64)}

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        p = to_numpy(pred)
        t = squeeze_channel(to_numpy(target), 3)
        if p.ndim == t.ndim + 1:  # logits (B, K, H, W)
            p = p.argmax(axis=1)
        p = squeeze_channel(p, t.ndim)
        check_same_shape(p, t, "MeanIoU")
        t = t.astype(np.int64).ravel()
        p = p.astype(np.int64).ravel()
        valid = t != self.ignore_index
        t, p = t[valid], p[valid]
        k = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"MeanIoU: target labels outside [0, {k}) (and != ignore)")
        if p.size and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"MeanIoU: predicted labels outside [0, {k})")
        self.state["confusion"] += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Any]:
        cm = self.state["confusion"].astype(np.float64)
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp  # TP + FP + FN
        present = union > 0
        iou = np.where(present, tp / np.where(present, union, 1.0), np.nan)
        total = cm.sum()
        miou = float(np.mean(iou[present]) * 100.0) if present.any() else float("nan")
        acc = float(tp.sum() / total * 100.0) if total > 0 else float("nan")
        per_class = [float(v * 100.0) if ok else None for v, ok in zip(iou, present, strict=True)]
        return {"mIoU": miou, "pixel_acc": acc, "per_class_IoU": per_class}
