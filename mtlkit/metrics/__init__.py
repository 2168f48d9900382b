"""Metric accumulators pooled over a split (SPEC-data-eval.md, "Metrics") and delta_m.

Every accumulator has ``update(pred, target)`` (torch tensors or arrays of one batch),
``compute() -> dict``, ``merge(other)``, ``reset()`` and a ``state`` dict of fixed-shape numpy
int64/float64 sums (mergeable by addition, e.g. a DDP all-reduce).

=====================  ==============================================  ==========================
accumulator            compute() keys                                  units
=====================  ==============================================  ==========================
MeanIoU(K)             mIoU, pixel_acc, per_class_IoU                  %
DepthMetrics()         rmse, log_rmse, abs_rel, sq_rel, delta1..3      m / ratios / fractions
NormalsMetrics()       mean, median, rmse; within_11_25/22_5/30        degrees; %
SaliencyMaxF()         maxF, maxF_threshold, mIoU, mIoU_threshold      %; threshold
BoundaryF(max_dist)    odsF, odsT, oisF, AP                            %; threshold
=====================  ==============================================  ==========================
"""

from mtlkit.metrics.base import Accumulator
from mtlkit.metrics.boundary import BoundaryF, boundary_scores, match_pixels, thin
from mtlkit.metrics.delta_m import (
    HIGHER_IS_BETTER,
    MAIN_METRICS,
    SALIENCY_METRICS,
    delta_m,
    delta_per_task,
    main_metrics,
)
from mtlkit.metrics.depth import DepthMetrics
from mtlkit.metrics.normals import NormalsMetrics
from mtlkit.metrics.saliency import SaliencyMaxF
from mtlkit.metrics.segmentation import MeanIoU

__all__ = [
    "Accumulator",
    "BoundaryF",
    "DepthMetrics",
    "HIGHER_IS_BETTER",
    "MAIN_METRICS",
    "MeanIoU",
    "NormalsMetrics",
    "SALIENCY_METRICS",
    "SaliencyMaxF",
    "boundary_scores",
    "delta_m",
    "delta_per_task",
    "main_metrics",
    "match_pixels",
    "thin",
]
