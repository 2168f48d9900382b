"""Boundary detection scores: exact BSDS/SEISM-style odsF, oisF, AP and the PR curve (issue 8).

SPEC-data-eval.md ("Metrics", Edges); MTI-Net (paper 004, Sec. 4.1) reports odsF [30]; the
reference repos (MTL-PT, ATRC, MT-CP) score boundaries with SEISM (jponttuset/seism,
``src/scripts/gather_measure.m``, ``general_ods.m``, ``general_ois.m``, ``general_ap.m``,
``src/measures/eval_cont.m``), whose summaries mtlkit reproduces. Maps are (H, W); for each
threshold t of a sweep (default 99 thresholds 0.01 .. 0.99):

1. binarise the prediction (``pred >= t``) and thin it to one-pixel-wide boundaries; the ground
   truth is thinned once. Thinning is Guo & Hall's two-sub-iteration algorithm iterated to
   convergence, pixel-for-pixel identical to ``skimage.morphology.thin`` (the algorithm MATLAB's
   ``bwmorph(bw, 'thin', Inf)``, used by the BSDS code, documents);
2. pixels marked ignore in the ground truth (255) are removed from both maps *after* thinning;
3. predicted pixels are matched one-to-one to ground-truth pixels at Euclidean distance
   ``d <= r``, ``r = max_dist * sqrt(H^2 + W^2)`` (0.011 NYUD, 0.0075 PASCAL; inclusive, with a
   1e-9 slack on d^2). As in BSDS ``correspondPixels`` the assignment is a bipartite matching,
   never a nearest-neighbour or distance-transform shortcut (a distance transform only prunes
   pixels that have no candidate). Only the matching's *cardinality* enters precision and
   recall, and we compute the maximum cardinality exactly (Dinic max-flow on the sparse graph
   of all candidate pairs, found by a vectorised offset search). BSDS (and SEISM, which calls
   the same ``correspondPixels``) solves a min-cost assignment with the approximate CSA solver
   and a large outlier cost; ``match_pixels(..., min_cost=True)`` gives a matching that is both
   of maximum cardinality and of minimum total distance. Expected difference: the exact
   maximum finds 0.07-0.09 % more matches than CSA, so mtlkit's odsF is about +0.1 point above
   the MATLAB code's on the same maps (deterministic, unlike CSA's tie-breaking);
4. matched, predicted and ground-truth counts are summed over the split per threshold:
   P = matched / predicted, R = matched / ground truth, F = 2PR / (P + R) (0 when undefined).

Reported (fractions in :func:`boundary_scores`, % in :class:`BoundaryF`):

- ``odsF``: max over thresholds of the pooled F; ``odsT`` its threshold (lowest on ties). As
  SEISM's ``general_ods``, the plain maximum over the sweep (BSDS's own ``collect_eval_bdry``
  additionally interpolates F between neighbouring thresholds).
- ``oisF``: per image the threshold with the best F is chosen (on ties the *first*, i.e. the
  lowest threshold, as SEISM's ``max(values, [], 2)``; an image without ground-truth
  boundaries has F = 0 everywhere and so contributes its densest prediction), the counts at
  those thresholds are summed over the split and F is computed from the sums.
- ``AP``: SEISM's ``general_ap``. One PR point per threshold from the pooled counts, with
  SEISM's conventions where a ratio is undefined (no ground truth in the split: R 1, P 0;
  nothing predicted: R 0, P 1); for a recall reached at several thresholds the point of the
  first (lowest) threshold is kept (MATLAB's ``unique``, whose default is the first occurrence
  since R2013a); precision is interpolated linearly (``interp1``, no monotone envelope) at the
  recalls 0, 0.01, ..., 1 that lie within the range of the points, and those values are
  *summed* and divided by 100 (not 101). Fewer than two distinct recalls give AP 0. Against
  the area under the piecewise-linear curve this counts both end points half a step more
  (up to +1 point) and spans down to recall 0 when a threshold predicts nothing.

The tolerance uses the diagonal of the maps given: crop padded samples to their valid size
(``BoundaryF.update(..., hw=meta["hw"])``) to use the original image diagonal.

Speed: thinning works on the list of foreground pixels (after the first passes only on the
neighbours of deleted pixels), candidates are gathered once per image for the union of all
predicted pixels near the ground truth, identical binary maps of consecutive thresholds are
scored once, and images can be scored in parallel processes (``workers``). Measured (one core,
synthetic noisy predictions): ~0.09 s per 128x160 image and ~0.9 s per 480x640 image with 99
thresholds; ~10x less with 9 thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow, min_weight_full_bipartite_matching

from mtlkit.metrics.base import Accumulator, check_same_shape, squeeze_channel, to_numpy

_SLACK = 1e-9  # distance test is d^2 <= r^2 + _SLACK (robust to r computed in floating point)
_CHUNK = 8192  # rows per chunk of the candidate gather (bounds temporary memory)
_SWITCH = 4  # thinning: go incremental once a pass deletes < 1/_SWITCH of the foreground


# ----------------------------------------------------------------------------------- thresholds

def default_thresholds(n: int = 99) -> np.ndarray:
    """``n`` evenly spaced thresholds 1/(n+1) .. n/(n+1) (BSDS: 99 -> 0.01 .. 0.99)."""
    if n < 1:
        raise ValueError(f"need at least one threshold, got {n}")
    return np.linspace(1.0 / (n + 1), n / (n + 1), n)


def as_thresholds(thresholds: int | Sequence[float] | np.ndarray) -> np.ndarray:
    """A count (``default_thresholds``) or explicit values -> sorted unique float64 array (T,)."""
    if isinstance(thresholds, (int, np.integer)):
        return default_thresholds(int(thresholds))
    thr = np.unique(np.asarray(thresholds, dtype=np.float64).ravel())
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError("thresholds must be a positive count or finite values")
    return thr


# ------------------------------------------------------------------------------------ thinning

def _guo_hall_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Guo & Hall's parallel thinning (A1, 1989).

    Index: 8-bit neighbourhood code whose bit ``b - 1`` is neighbour ``x_b``, numbered
    counter-clockwise from east (x1 E, x2 NE, x3 N, x4 NW, x5 W, x6 SW, x7 S, x8 SE). A pixel is
    deleted when G1 (X_H = 1), G2 (2 <= min(n1, n2) <= 3) and G3 (first sub-iteration:
    (x2 | x3 | ~x8) & x1 == 0) or G3' (second: (x6 | x7 | ~x4) & x5 == 0) hold.
    """
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        bit = [(code >> i) & 1 for i in range(8)]

        def x(k: int, bit: list[int] = bit) -> int:  # 1-based, cyclic (x9 = x1)
            return bit[(k - 1) % 8]

        x_h = sum(1 for i in range(1, 5) if not x(2 * i - 1) and (x(2 * i) or x(2 * i + 1)))
        n1 = sum(1 for k in range(1, 5) if x(2 * k - 1) or x(2 * k))
        n2 = sum(1 for k in range(1, 5) if x(2 * k) or x(2 * k + 1))
        g12 = x_h == 1 and 2 <= min(n1, n2) <= 3
        g3 = not ((x(2) or x(3) or not x(8)) and x(1))
        g3p = not ((x(6) or x(7) or not x(4)) and x(5))
        first[code] = g12 and g3
        second[code] = g12 and g3p
    return first, second


_LUT_FIRST, _LUT_SECOND = _guo_hall_luts()
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))  # x1..x8


def _codes(img: np.ndarray, idx: np.ndarray, offsets: list[int]) -> np.ndarray:
    """8-bit neighbourhood codes (bit b-1 = neighbour x_b) of the flat pixels ``idx``."""
    code = img[idx + offsets[0]]
    for b in range(1, 8):
        code |= img[idx + offsets[b]] << b
    return code


def _thin_flat(img: np.ndarray, width: int, idx: np.ndarray) -> np.ndarray:
    """Thin in place a flat uint8 0/1 image of row length ``width`` whose border is all 0.

    ``idx``: flat indices of its foreground pixels; returns the indices that remain. The two
    Guo-Hall sub-iterations alternate (each in parallel: all codes are read before any
    deletion) until a pass (first + second) deletes nothing, exactly as the whole-image
    algorithm. Work is kept proportional to what changes:

    - while passes delete a large share of the foreground, every foreground pixel is evaluated;
    - then only *candidates* are: a pixel evaluated by a sub-iteration and kept stays kept by it
      until one of its neighbours is deleted, and interior pixels (code 255) are never deleted,
      so after the switch each sub-iteration re-evaluates only the neighbours of the pixels
      deleted since it last ran.
    """
    offsets = [dy * width + dx for dy, dx in _NEIGHBOURS]
    luts = (_LUT_FIRST, _LUT_SECOND)
    idx = np.asarray(idx, np.int64)
    while True:  # phase 1: whole-foreground passes
        deleted = []
        for lut in luts:
            if idx.size == 0:
                return idx
            delete = lut[_codes(img, idx, offsets)]
            gone = idx[delete]
            if gone.size:
                img[gone] = 0
                idx = idx[~delete]
            deleted.append(gone)
        n_deleted = deleted[0].size + deleted[1].size
        if n_deleted == 0:
            return idx
        if n_deleted * _SWITCH < idx.size:
            break

    off = np.asarray(offsets, np.int64)
    stamp = np.empty(img.size, np.int64)

    def dedupe(a: np.ndarray) -> np.ndarray:  # unique values of a, O(n), order kept
        r = np.arange(a.size)
        stamp[a] = r
        return a[stamp[a] == r]

    def neighbours(gone: np.ndarray) -> np.ndarray:  # foreground 8-neighbours of gone pixels
        nb = (gone[:, None] + off[None, :]).ravel()
        return nb[img[nb] == 1]

    nb_second = dedupe(neighbours(deleted[1]))
    cand = [dedupe(np.concatenate((neighbours(deleted[0]), nb_second))), nb_second]
    sub, idle = 0, 0
    while idle < 2:  # phase 2: two consecutive sub-iterations without deletion = a quiet pass
        c = cand[sub]
        c = c[img[c] == 1]
        gone = c[luts[sub][_codes(img, c, offsets)]]
        if gone.size:
            img[gone] = 0
            nb = dedupe(neighbours(gone))
            cand[sub] = nb
            cand[1 - sub] = dedupe(np.concatenate((cand[1 - sub], nb)))
            idle = 0
        else:
            cand[sub] = c[:0]
            idle += 1
        sub = 1 - sub
    return idx[img[idx] == 1]


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning of a binary image (H, W) to one-pixel-wide curves.

    Same result as ``skimage.morphology.thin(mask)`` (Guo-Hall, iterated to convergence, pixels
    outside the image count as background), computed on the foreground pixels only.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"thin: expected a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    img = np.zeros((h + 2, w + 2), np.uint8)
    img[1:-1, 1:-1] = mask
    flat = img.ravel()
    _thin_flat(flat, w + 2, np.flatnonzero(flat))
    return img[1:-1, 1:-1].astype(bool)


# ------------------------------------------------------------------------------------ matching

def tolerance_radius(shape: tuple[int, int], max_dist: float) -> float:
    """Matching radius in pixels: ``max_dist`` x image diagonal (BSDS ``maxDist``)."""
    return float(max_dist) * math.hypot(shape[0], shape[1])


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (dy, dx) with dy^2 + dx^2 <= radius^2, in raster order."""
    k = int(math.floor(radius + _SLACK)) if radius >= 0 else -1
    if k < 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    inside = dy * dy + dx * dx <= radius * radius + _SLACK
    return dy[inside].astype(np.int64), dx[inside].astype(np.int64)


def max_matching(indptr: np.ndarray, indices: np.ndarray, n_cols: int,
                 return_pairs: bool = False) -> tuple[int, np.ndarray | None]:
    """Maximum-cardinality matching of a bipartite graph given as CSR adjacency rows -> columns.

    ``indptr`` (m + 1,), ``indices`` (E,) column ids in [0, n_cols). Solved exactly as a unit-
    capacity max-flow (source -> rows -> columns -> sink) with Dinic's algorithm, which is
    Hopcroft-Karp's O(E sqrt(V)) on this network. (SciPy's ``maximum_bipartite_matching`` is not
    used: its depth-first search has no dead-end pruning and can take exponential time on
    geometric candidate graphs such as these.) Returns ``(size, pairs)`` with ``pairs`` (size, 2)
    = (row, column) when ``return_pairs``.
    """
    m = len(indptr) - 1
    e = int(indptr[-1]) if m > 0 else 0
    if m == 0 or n_cols == 0 or e == 0:
        return 0, (np.zeros((0, 2), np.int64) if return_pairs else None)
    n_nodes = m + n_cols + 2
    sink = n_nodes - 1
    indptr = np.asarray(indptr, np.int64)
    full_indptr = np.concatenate((
        [0, m], m + indptr[1:], m + e + np.arange(1, n_cols + 1), [m + e + n_cols],
    )).astype(np.int32)
    full_indices = np.concatenate((
        np.arange(1, m + 1), np.asarray(indices, np.int64)[:e] + (m + 1),
        np.full(n_cols, sink),
    )).astype(np.int32)
    graph = csr_array((np.ones(full_indices.size, np.int32), full_indices, full_indptr),
                      shape=(n_nodes, n_nodes))
    res = maximum_flow(graph, 0, sink, method="dinic")
    size = int(res.flow_value)
    if not return_pairs:
        return size, None
    flow = csr_array(res.flow)[1:m + 1][:, m + 1:m + 1 + n_cols].tocoo()
    used = flow.data > 0
    pairs = np.stack((flow.row[used], flow.col[used]), axis=1).astype(np.int64)
    return size, pairs[np.argsort(pairs[:, 0], kind="stable")]


class _Frame:
    """Ground-truth pixels of one image in a zero-padded flat frame, with a candidate search.

    The frame is the image padded by ``pad`` = max(1, floor(radius)) pixels on every side, so
    both thinning (needs a zero border) and the offset search never leave the array.
    """

    def __init__(self, shape: tuple[int, int], gt: np.ndarray, radius: float) -> None:
        h, w = shape
        self.h, self.w, self.radius = h, w, radius
        self.pad = max(1, int(math.floor(radius + _SLACK)))
        self.wp = w + 2 * self.pad
        self.hp = h + 2 * self.pad
        dy, dx = _disk_offsets(radius)
        self.offsets = dy * self.wp + dx
        gy, gx = np.nonzero(gt)
        self.gt_yx = np.stack((gy, gx), axis=1)
        self.n_gt = gy.size
        self.gt_index = np.full(self.hp * self.wp, -1, np.int32)
        self.gt_index[self.to_flat(gy, gx)] = np.arange(self.n_gt, dtype=np.int32)
        if self.n_gt:  # prefilter: pixels farther than radius (+ slack) from any GT pixel
            dist = ndi.distance_transform_edt(~gt)
            near = np.zeros((self.hp, self.wp), bool)
            near[self.pad:self.pad + h, self.pad:self.pad + w] = dist <= radius + 0.5
            self.near = near.ravel()
        else:
            self.near = np.zeros(self.hp * self.wp, bool)

    def to_flat(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (y + self.pad) * self.wp + (x + self.pad)

    def embed(self, img: np.ndarray, dtype: type) -> np.ndarray:
        out = np.zeros((self.hp, self.wp), dtype)
        out[self.pad:self.pad + self.h, self.pad:self.pad + self.w] = img
        return out.ravel()

    def candidates(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GT candidates of frame pixels ``flat`` (n,): counts (n,) and GT ids grouped by pixel.

        Within each pixel's group the GT ids are increasing (raster order).
        """
        counts = np.zeros(flat.size, np.int64)
        cols = []
        for s in range(0, flat.size, _CHUNK):
            cand = self.gt_index[flat[s:s + _CHUNK, None] + self.offsets[None, :]]
            ok = cand >= 0
            counts[s:s + _CHUNK] = ok.sum(axis=1)
            cols.append(cand[ok])
        return counts, (np.concatenate(cols) if cols else np.zeros(0, np.int32))


def _gather_rows(rows: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                 cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of the candidate lists of ``rows`` (ids into starts/counts)."""
    c = counts[rows]
    indptr = np.zeros(rows.size + 1, np.int64)
    np.cumsum(c, out=indptr[1:])
    take = np.repeat(starts[rows] - indptr[:-1], c) + np.arange(indptr[-1])
    return indptr, cols[take]


def match_pixels(pred: np.ndarray, gt: np.ndarray, radius: float, *,
                 min_cost: bool = False) -> np.ndarray:
    """One-to-one matching of boundary pixels within ``radius`` pixels (BSDS correspondPixels).

    ``pred``, ``gt``: bool (H, W) (used as given, not thinned). Returns int64 (M, 4) rows
    ``(py, px, gy, gx)`` of a maximum-cardinality matching; with ``min_cost`` the matching also
    has the minimum total Euclidean distance among maximum-cardinality matchings (LAPJVsp on the
    graph augmented with outlier nodes, as BSDS's assignment formulation).
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    check_same_shape(pred, gt, "match_pixels")
    frame = _Frame(pred.shape, gt, radius)
    py, px = np.nonzero(pred)
    flat = frame.to_flat(py, px)
    counts, cols = frame.candidates(flat)
    keep = np.flatnonzero(counts > 0)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    indptr, indices = _gather_rows(keep, starts, counts, cols)
    if not min_cost:
        _, pairs = max_matching(indptr, indices, frame.n_gt, return_pairs=True)
        assert pairs is not None
        rows, gcols = keep[pairs[:, 0]], pairs[:, 1]
    else:
        rows, gcols = _min_cost_matching(indptr, indices, frame, py[keep], px[keep])
        rows = keep[rows]
    out = np.stack((py[rows], px[rows], frame.gt_yx[gcols, 0], frame.gt_yx[gcols, 1]), axis=1)
    return out.astype(np.int64).reshape(-1, 4)


def _min_cost_matching(indptr: np.ndarray, indices: np.ndarray, frame: _Frame,
                       py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max-cardinality min-distance matching via a full assignment on an augmented graph.

    Rows = m predicted pixels + n GT "outlier" copies, columns = n GT pixels + m predicted
    "outlier" copies. Edges: real pairs (cost d + delta), pred_i - its outlier (cost C), GT
    outlier j - GT j (cost C), GT outlier j - pred outlier i for every real pair (cost delta).
    Every matching M of the real graph extends to a full assignment of cost
    sum_M d + 2 delta |M| + C (m + n - 2 |M|); C > (min(m, n) + 1) r makes a larger |M| always
    cheaper, so the optimum is a maximum matching of least total distance.
    """
    m, n = len(indptr) - 1, frame.n_gt
    e = int(indptr[-1])
    if m == 0 or e == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.repeat(np.arange(m), np.diff(indptr))
    d = np.hypot(py[rows] - frame.gt_yx[indices, 0], px[rows] - frame.gt_yx[indices, 1])
    delta = 1e-3
    big = (min(m, n) + 2) * (frame.radius + 1.0) + 1.0
    r_all = np.concatenate((rows, np.arange(m), m + np.arange(n), m + indices))
    c_all = np.concatenate((indices, n + np.arange(m), np.arange(n), n + rows))
    w_all = np.concatenate((d + delta, np.full(m, big), np.full(n, big), np.full(e, delta)))
    graph = csr_array((w_all, (r_all, c_all)), shape=(m + n, n + m))
    ri, ci = min_weight_full_bipartite_matching(graph)
    real = (ri < m) & (ci < n)
    return ri[real].astype(np.int64), ci[real].astype(np.int64)


# --------------------------------------------------------------------------- per-image scoring

def image_counts(pred: np.ndarray, gt: np.ndarray, *, max_dist: float,
                 thresholds: int | Sequence[float] | np.ndarray = 99,
                 ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Matched / predicted counts per threshold and the ground-truth count of one image.

    ``pred``: float (H, W) boundary probabilities; ``gt``: bool (H, W) boundary map (thinned
    here); ``ignore``: optional bool (H, W), pixels removed from both maps after thinning.
    Returns ``(matched (T,), predicted (T,), n_gt)`` (int64; matched predicted pixels = matched
    ground-truth pixels, the matching being one-to-one).
    """
    thr = as_thresholds(thresholds)
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    check_same_shape(pred, gt, "image_counts")
    if pred.ndim != 2:
        raise ValueError(f"image_counts: expected (H, W) maps, got {pred.shape}")
    n_thr = thr.size
    radius = tolerance_radius(pred.shape, max_dist)
    ign = None if ignore is None else np.asarray(ignore, dtype=bool)
    gt_b = gt if ign is None else gt & ~ign
    frame = _Frame(pred.shape, thin(gt_b), radius)
    ign_flat = None if ign is None or not ign.any() else frame.embed(ign, bool)

    # level = number of thresholds <= pred; the pixel is "on" at threshold k iff level > k
    # (NaN scores are never "on": searchsorted would rank them above every threshold)
    level = np.searchsorted(thr, np.where(np.isnan(pred), -np.inf, pred), side="right")
    level = frame.embed(level, np.int32)
    on_counts = np.cumsum(np.bincount(level, minlength=n_thr + 1)[::-1])[::-1][1:]
    img = np.zeros(level.size, np.uint8)  # scratch image, all zero between thresholds
    fg = np.flatnonzero(level)  # foreground of the current threshold (sorted; maps are nested)
    skeletons: list[np.ndarray] = []
    for k in range(n_thr):
        if on_counts[k] == 0:
            skeletons.append(np.zeros(0, np.int64))
            continue
        if fg.size != on_counts[k]:
            fg = fg[level[fg] > k]
        if k > 0 and on_counts[k] == on_counts[k - 1]:
            skeletons.append(skeletons[-1])  # identical binary map
            continue
        img[fg] = 1
        idx = _thin_flat(img, frame.wp, fg)
        img[idx] = 0
        if ign_flat is not None:
            idx = idx[~ign_flat[idx]]
        skeletons.append(idx)
    predicted = np.array([s.size for s in skeletons], np.int64)
    matched = np.zeros(n_thr, np.int64)
    if frame.n_gt == 0 or predicted.max(initial=0) == 0:
        return matched, predicted, frame.n_gt

    # candidate lists once for the union of all predicted pixels near the ground truth
    mark = np.zeros(frame.hp * frame.wp, bool)
    for k, skel in enumerate(skeletons):
        if skel.size and (k == 0 or skel is not skeletons[k - 1]):
            mark[skel] = True
    union = np.flatnonzero(mark & frame.near)
    counts, cols = frame.candidates(union)
    union, counts = union[counts > 0], counts[counts > 0]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    row_of = np.full(frame.hp * frame.wp, -1, np.int64)
    row_of[union] = np.arange(union.size)
    for k, skel in enumerate(skeletons):
        if k > 0 and skel is skeletons[k - 1]:
            matched[k] = matched[k - 1]
            continue
        rows = row_of[skel]
        rows = rows[rows >= 0]
        if rows.size == 0:
            continue
        indptr, indices = _gather_rows(rows, starts, counts, cols)
        matched[k], _ = max_matching(indptr, indices, frame.n_gt)
    return matched, predicted, frame.n_gt


def _image_counts_job(args: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    pred, gt, ignore, max_dist, thr = args
    return image_counts(pred, gt, max_dist=max_dist, thresholds=thr, ignore=ignore)


def split_gt(gt: np.ndarray,
             ignore_index: int | None = 255) -> tuple[np.ndarray, np.ndarray | None]:
    """Ground-truth array -> (boundary bool, ignore bool or None).

    Bool input is all boundary/background; numeric input: ``ignore_index`` = ignore, other
    values > 0.5 = boundary.
    """
    gt = np.asarray(gt)
    if gt.dtype == bool:
        return gt, None
    if ignore_index is None:
        return gt > 0.5, None
    ign = gt == ignore_index
    return (gt > 0.5) & ~ign, (ign if ign.any() else None)


# ------------------------------------------------------------------------------------- summary

def _f_measure(matched: np.ndarray, predicted: np.ndarray,
               n_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matched = np.asarray(matched, np.float64)
    p = np.divide(matched, predicted, out=np.zeros_like(matched),
                  where=np.asarray(predicted) > 0)
    r = np.divide(matched, n_gt, out=np.zeros_like(matched), where=np.asarray(n_gt) > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(matched), where=(p + r) > 0)
    return p, r, f


def best_image_index(matched: np.ndarray, predicted: np.ndarray, n_gt: int) -> int:
    """Per-image OIS threshold index: best F, the first (lowest) threshold on ties (SEISM)."""
    _, _, f = _f_measure(matched, predicted, np.full(len(matched), n_gt))
    return int(np.argmax(f))


#: SEISM's recall grid 0:0.01:1 for AP (as k / 100, so a recall of exactly k/100 is on it)
AP_RECALL_GRID = np.arange(101) / 100.0


def seism_pr_points(matched: np.ndarray, predicted: np.ndarray,
                    n_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (precision, recall) per threshold with SEISM's conventions (``gather_measure``).

    No ground truth: R 1, P 0; ground truth but nothing predicted: R 0, P 1; else
    P = matched / predicted, R = matched / n_gt. Arrays (T,).
    """
    m = np.asarray(matched, np.float64)
    n_pred = np.broadcast_to(np.asarray(predicted, np.float64), m.shape)
    n_gt = np.broadcast_to(np.asarray(n_gt, np.float64), m.shape)
    no_gt, no_pred = n_gt == 0, (n_gt > 0) & (n_pred == 0)
    p = np.divide(m, n_pred, out=np.zeros_like(m), where=n_pred > 0)
    r = np.divide(m, n_gt, out=np.zeros_like(m), where=n_gt > 0)
    p[no_gt], r[no_gt] = 0.0, 1.0
    p[no_pred], r[no_pred] = 1.0, 0.0
    return p, r


def average_precision(matched: np.ndarray, predicted: np.ndarray, n_gt: np.ndarray) -> float:
    """SEISM's ``general_ap`` (fraction) from pooled counts per threshold (module doc, ``AP``).

    ``matched``, ``predicted``, ``n_gt``: (T,) counts in increasing threshold order.
    """
    p, r = seism_pr_points(matched, predicted, n_gt)
    _, first = np.unique(r, return_index=True)  # sorted recalls, first threshold of each
    if first.size < 2:
        return 0.0
    r, p = r[first], p[first]
    grid = AP_RECALL_GRID[(AP_RECALL_GRID >= r[0]) & (AP_RECALL_GRID <= r[-1])]
    return float(np.interp(grid, r, p).sum() / 100.0)


def summarize(thresholds: np.ndarray, matched: np.ndarray, predicted: np.ndarray,
              n_gt: np.ndarray, ois: np.ndarray) -> dict[str, Any]:
    """Scores (fractions) from pooled counts per threshold and the OIS count sums (3,)."""
    p, r, f = _f_measure(matched, predicted, n_gt)
    k = int(np.argmax(f))
    _, _, f_ois = _f_measure(ois[:1], ois[1:2], ois[2:3])
    return {
        "odsF": float(f[k]), "odsT": float(thresholds[k]),
        "odsP": float(p[k]), "odsR": float(r[k]),
        "oisF": float(f_ois[0]),
        "AP": average_precision(matched, predicted, n_gt),
        "thresholds": np.asarray(thresholds, np.float64),
        "precision": p, "recall": r, "F": f,
    }


def boundary_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], *, max_dist: float,
                    thresholds: int | Sequence[float] | np.ndarray = 99,
                    ignore_index: int | None = 255, workers: int = 1) -> dict[str, Any]:
    """Exact BSDS-style boundary scores of a split (fractions in [0, 1]).

    ``preds``: float arrays (H, W) in [0, 1]; ``gts``: bool arrays of the same shapes (thinned
    here), or numeric 0/1 arrays where ``ignore_index`` marks ignored pixels. ``max_dist``:
    tolerance as a fraction of the image diagonal (0.011 NYUD, 0.0075 PASCAL). ``thresholds``:
    count (default 99: 0.01 .. 0.99) or explicit values. ``workers`` > 1 scores images in that
    many processes.

    Returns ``{"odsF", "odsT", "odsP", "odsR", "oisF", "AP"}`` (floats) and per threshold
    ``"thresholds", "precision", "recall", "F"`` (T,) and the pooled counts ``"matched",
    "predicted", "gt"`` (T,) int64.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth maps")
    thr = as_thresholds(thresholds)
    jobs = []
    for pred, gt in zip(preds, gts, strict=True):
        b, ign = split_gt(gt, ignore_index)
        jobs.append((np.asarray(pred, np.float64), b, ign, max_dist, thr))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_image_counts_job, jobs,
                                    chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_image_counts_job(j) for j in jobs]
    matched = np.zeros(thr.size, np.int64)
    predicted = np.zeros(thr.size, np.int64)
    n_gt = 0
    ois = np.zeros(3, np.int64)
    for m, p, g in results:
        matched += m
        predicted += p
        n_gt += g
        b = best_image_index(m, p, g)
        ois += (m[b], p[b], g)
    out = summarize(thr, matched, predicted, np.full(thr.size, n_gt, np.int64), ois)
    out.update(matched=matched, predicted=predicted, gt=np.full(thr.size, n_gt, np.int64))
    return out


# --------------------------------------------------------------------------------- accumulator

class BoundaryF(Accumulator):
    """Split-level boundary scores (odsF, oisF, AP) accumulated batch by batch.

    ``update(pred, target)``: ``pred`` probabilities (B, 1, H, W), ``target`` (B, 1, H, W) with
    1 = boundary, 0 = not, ``ignore_index`` = ignored. ``compute()`` -> ``{"odsF": %, "odsT":
    threshold, "oisF": %, "AP": %}``; :meth:`pr_curve` gives the curve. ``thresholds``: count or
    values (99 for final evaluation; e.g. 9 for cheaper periodic evaluation during training).
    ``workers`` > 1 scores the images of a batch in a process pool (kept until :meth:`close`).

    State (fixed-size sums, mergeable by addition): ``matched``, ``pred``, ``gt`` int64 (T,)
    pooled counts per threshold; ``ois`` int64 (3,) = summed (matched, predicted, gt) counts of
    every image at its own best threshold; ``n_images``.
    """

    def __init__(self, max_dist: float = 0.011, thresholds: int | Sequence[float] = 99,
                 ignore_index: int = 255, workers: int = 1) -> None:
        self.max_dist = float(max_dist)
        self.thresholds = as_thresholds(thresholds)
        self.ignore_index = ignore_index
        self.workers = int(workers)
        self._pool: Executor | None = None
        super().__init__()

    def _config(self) -> tuple[Any, ...]:
        return (self.max_dist, tuple(self.thresholds.tolist()), self.ignore_index)

    def _empty_state(self) -> dict[str, np.ndarray]:
        t = self.thresholds.size
        return {
            "matched": np.zeros(t, np.int64), "pred": np.zeros(t, np.int64),
            "gt": np.zeros(t, np.int64), "ois": np.zeros(3, np.int64),
            "n_images": np.zeros((), np.int64),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None  # process pools do not pickle (DDP gathers accumulators)
        return state

    def close(self) -> None:
        """Shut down the worker pool, if any."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
               hw: Sequence[Sequence[int]] | torch.Tensor | np.ndarray | None = None) -> None:
        """Score a batch. ``hw`` (optional, (B, 2) or list of (h, w)): the valid top-left size
        of each padded sample (``meta["hw"]``); images are cropped to it so that the tolerance
        uses the original image diagonal, as BSDS does (padding would enlarge it)."""
        p = squeeze_channel(to_numpy(pred), 3).astype(np.float64)
        t = squeeze_channel(to_numpy(target), 3)
        check_same_shape(p, t, "BoundaryF")
        if p.ndim == 2:
            p, t = p[None], t[None]
        sizes = None if hw is None else np.asarray(to_numpy(hw) if torch.is_tensor(hw) else hw,
                                                   dtype=np.int64).reshape(-1, 2)
        if sizes is not None and len(sizes) != p.shape[0]:
            raise ValueError(f"BoundaryF: {len(sizes)} sizes for a batch of {p.shape[0]}")
        jobs = []
        for i in range(p.shape[0]):
            h, w = (p.shape[1], p.shape[2]) if sizes is None else sizes[i]
            b, ign = split_gt(t[i, :h, :w].astype(np.float64), self.ignore_index)
            jobs.append((p[i, :h, :w], b, ign, self.max_dist, self.thresholds))
        if self.workers > 1 and len(jobs) > 1:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.workers)
            results = list(self._pool.map(_image_counts_job, jobs))
        else:
            results = [_image_counts_job(j) for j in jobs]
        s = self.state
        for m, n_pred, g in results:
            s["matched"] += m
            s["pred"] += n_pred
            s["gt"] += g
            b = best_image_index(m, n_pred, g)
            s["ois"] += np.array((m[b], n_pred[b], g), np.int64)
            s["n_images"] += 1

    def scores(self) -> dict[str, Any]:
        """All scores as fractions plus the per-threshold curve (see :func:`summarize`)."""
        s = self.state
        return summarize(self.thresholds, s["matched"], s["pred"], s["gt"], s["ois"])

    def pr_curve(self) -> dict[str, list[float]]:
        """``{"thresholds", "precision", "recall", "F"}`` lists (fractions)."""
        sc = self.scores()
        return {k: [float(v) for v in sc[k]] for k in ("thresholds", "precision", "recall", "F")}

    def compute(self) -> dict[str, Any]:
        if int(self.state["n_images"]) == 0:
            return {"odsF": float("nan"), "odsT": float("nan"), "oisF": float("nan"),
                    "AP": float("nan")}
        sc = self.scores()
        return {"odsF": sc["odsF"] * 100.0, "odsT": sc["odsT"], "oisF": sc["oisF"] * 100.0,
                "AP": sc["AP"] * 100.0}
