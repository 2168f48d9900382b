"""Task specifications: output channels, loss, fixed weight, metric and postprocessing per task.

Losses and fixed weights follow the field's reference code (MTL-PT / ATRC / InvPT; see
``shared/SPEC-data-eval.md``): semseg and parts cross-entropy (ignore 255), depth L1 on valid
pixels, normals L1 on L2-normalised predictions over valid pixels, edge BCE with positive weight
0.95, saliency balanced BCE. Weights: semseg 1, parts 2, saliency 5, edge 50, normals 10, depth 1.

Raw model outputs per task (B = batch): semseg (B, K, H, W) logits; parts (B, 7, H, W) logits;
depth (B, 1, H, W) metres; normals (B, 3, H, W) unnormalised; edge and saliency (B, 1, H, W) logits.
Targets: semseg/parts int64 (B, H, W) with 255 = ignore; depth (B, 1, H, W) with 0 = invalid;
normals (B, 3, H, W) with all-zero = invalid; edge/saliency float (B, 1, H, W) 0/1, 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import UnknownNameError

IGNORE = 255


def resize_pred(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a prediction (B, C, h, w) to ``size`` (deep-supervision outputs)."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def _ce_loss(pred: Tensor, target: Tensor) -> Tensor:
    pred = resize_pred(pred, target.shape[-2:])
    if not (target != IGNORE).any():
        return pred.sum() * 0.0
    return F.cross_entropy(pred.float(), target.long(), ignore_index=IGNORE)


def _depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    pred = resize_pred(pred, target.shape[-2:]).float()
    valid = target > 0
    if not valid.any():
        return pred.sum() * 0.0
    return (pred - target).abs()[valid].mean()


def _normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    pred = F.normalize(resize_pred(pred, target.shape[-2:]).float(), dim=1)
    valid = (target != 0).any(dim=1, keepdim=True).expand_as(target)
    if not valid.any():
        return pred.sum() * 0.0
    return (pred - target).abs()[valid].mean()


def _edge_loss(pred: Tensor, target: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Weighted BCE (MTL-PT ``BalancedCrossEntropyLoss`` with fixed pos_weight 0.95)."""
    pred = resize_pred(pred, target.shape[-2:]).float()
    valid = target != IGNORE
    if not valid.any():
        return pred.sum() * 0.0
    t = target[valid]
    x = pred[valid]
    w = torch.where(t > 0.5, torch.full_like(t, pos_weight), torch.full_like(t, 1 - pos_weight))
    return F.binary_cross_entropy_with_logits(x, t, weight=w, reduction="sum") / valid.sum()


def _saliency_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Balanced BCE: positive weight = fraction of negatives in the batch."""
    pred = resize_pred(pred, target.shape[-2:]).float()
    valid = target != IGNORE
    if not valid.any():
        return pred.sum() * 0.0
    t = target[valid]
    pos_frac = t.mean().clamp(1e-6, 1 - 1e-6)
    return _edge_loss(pred, target, pos_weight=float(1 - pos_frac))


@dataclass
class TaskSpec:
    """Everything the trainer and evaluator need to know about one task."""

    name: str
    out_channels: int
    weight: float
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    postprocess: Callable[[Tensor], Tensor]
    metric_factory: Callable[[], Any]
    main_metric: str
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    kind: str = "dense"  # "labels" (class map) | "dense" (regression / probability)
    fast_metric_factory: Callable[[], Any] | None = None

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of a raw prediction (any resolution) against the target."""
        return self.loss_fn(pred, target)

    def make_metric(self, fast: bool = False) -> Any:
        """A fresh metric accumulator for a split (``fast``: cheaper settings, if any)."""
        if fast and self.fast_metric_factory is not None:
            return self.fast_metric_factory()
        return self.metric_factory()

    @property
    def main_higher_is_better(self) -> bool:
        return self.higher_is_better[self.main_metric]


def _argmax(pred: Tensor) -> Tensor:
    return pred.argmax(dim=1)


def _sigmoid(pred: Tensor) -> Tensor:
    return torch.sigmoid(pred.float())


def _normalize(pred: Tensor) -> Tensor:
    return F.normalize(pred.float(), dim=1)


def _identity(pred: Tensor) -> Tensor:
    return pred.float()


TASK_NAMES = ("semseg", "depth", "normals", "edge", "parts", "saliency")
DEFAULT_CLASSES = {"semseg": 40, "parts": 7}


def get_task(
    name: str, num_classes: int | None = None, *, edge_max_dist: float = 0.011
) -> TaskSpec:
    """Build the TaskSpec of ``name``; ``num_classes`` for semseg/parts (dataset dependent)."""
    from mtlkit.metrics import boundary, depth, normals, saliency, segmentation

    if name in ("semseg", "parts"):
        k = num_classes or DEFAULT_CLASSES[name]
        return TaskSpec(
            name,
            k,
            1.0 if name == "semseg" else 2.0,
            _ce_loss,
            _argmax,
            lambda: segmentation.MeanIoU(k),
            "mIoU",
            {"mIoU": True, "pixel_acc": True},
            kind="labels",
        )
    if name == "depth":
        hib = {m: False for m in ("rmse", "log_rmse", "abs_rel", "sq_rel")}
        hib.update({f"delta{i}": True for i in (1, 2, 3)})
        return TaskSpec(name, 1, 1.0, _depth_loss, _identity, depth.DepthMetrics, "rmse", hib)
    if name == "normals":
        hib = {
            "mean": False,
            "median": False,
            "rmse": False,
            "within_11_25": True,
            "within_22_5": True,
            "within_30": True,
        }
        return TaskSpec(
            name, 3, 10.0, _normals_loss, _normalize, normals.NormalsMetrics, "mean", hib
        )
    if name == "edge":
        return TaskSpec(
            name,
            1,
            50.0,
            _edge_loss,
            _sigmoid,
            lambda: boundary.BoundaryF(max_dist=edge_max_dist),
            "odsF",
            {"odsF": True, "oisF": True, "AP": True},
            fast_metric_factory=lambda: boundary.BoundaryF(max_dist=edge_max_dist, thresholds=9),
        )
    if name == "saliency":
        return TaskSpec(
            name, 1, 5.0, _saliency_loss, _sigmoid, saliency.SaliencyMaxF, "maxF", {"maxF": True}
        )
    raise UnknownNameError(f"unknown task {name!r}", f"choose from: {', '.join(TASK_NAMES)}")
