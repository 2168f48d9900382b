"""Boundary scores (issue 8): thinning, exact one-to-one matching, ODS/OIS/AP on built cases."""

import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.morphology import thin as sk_thin

from mtlkit.metrics import BoundaryF, boundary_scores, match_pixels, thin
from mtlkit.metrics.boundary import (
    average_precision,
    best_image_index,
    default_thresholds,
    image_counts,
    max_matching,
    summarize,
)

SIZE = (40, 40)
DIAG = math.hypot(*SIZE)


def max_dist_for(radius: float) -> float:
    """max_dist giving a tolerance of ``radius`` pixels on a SIZE image."""
    return radius / DIAG


def vline(x: int, y0: int = 5, y1: int = 15, value: float = 1.0, img=None):
    img = np.zeros(SIZE) if img is None else img
    img[y0:y1, x] = value
    return img


# ----------------------------------------------------------------------------------- thinning

def test_thin_matches_skimage_on_random_maps():
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = rng.integers(1, 45, 2)
        if i % 2:
            m = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 3)) > 0.5
        else:
            m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        assert np.array_equal(thin(m), sk_thin(m)), i


def test_thin_thick_bar_to_one_pixel():
    m = np.zeros((9, 20), bool)
    m[3:6, 2:18] = True
    t = thin(m)
    assert t.sum() < m.sum()
    assert np.all(t.sum(axis=0) <= 1)  # at most one pixel per column: one pixel wide
    assert t[:, 4:16].sum() == 12  # connected run along the bar


# ----------------------------------------------------------------------------------- matching

def brute_force(pred: np.ndarray, gt: np.ndarray, radius: float) -> tuple[int, float]:
    """(max cardinality, min total distance at that cardinality) by exhaustive search."""
    p = list(zip(*np.nonzero(pred), strict=True))
    g = list(zip(*np.nonzero(gt), strict=True))
    best = (0, 0.0)
    for k in range(min(len(p), len(g)), 0, -1):
        costs = []
        for ps in itertools.combinations(range(len(p)), k):
            for gs in itertools.permutations(range(len(g)), k):
                d = [math.dist(p[a], g[b]) for a, b in zip(ps, gs, strict=True)]
                if max(d) <= radius + 1e-9:
                    costs.append(sum(d))
        if costs:
            return k, min(costs)
    return best


def kuhn(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Maximum matching size by simple augmenting paths (Kuhn), for medium-size checks."""
    p = list(zip(*np.nonzero(pred), strict=True))
    g = list(zip(*np.nonzero(gt), strict=True))
    adj = [[j for j, b in enumerate(g) if math.dist(a, b) <= radius + 1e-9] for a in p]
    owner = [-1] * len(g)

    def augment(i, seen):
        for j in adj[i]:
            if not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * len(g)) for i in range(len(p)))


def check_pairs(pairs: np.ndarray, pred: np.ndarray, gt: np.ndarray, radius: float) -> None:
    assert len({(a, b) for a, b, _, _ in pairs}) == len(pairs)  # one-to-one on pred side
    assert len({(c, d) for _, _, c, d in pairs}) == len(pairs)  # and on gt side
    for py, px, gy, gx in pairs:
        assert pred[py, px] and gt[gy, gx]
        assert math.hypot(py - gy, px - gx) <= radius + 1e-9


def test_matching_agrees_with_brute_force_on_tiny_maps():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(40):
        pred = np.zeros(30, bool)
        gt = np.zeros(30, bool)
        pred[rng.choice(30, rng.integers(0, 7), replace=False)] = True
        gt[rng.choice(30, rng.integers(0, 7), replace=False)] = True
        pred, gt = pred.reshape(5, 6), gt.reshape(5, 6)
        radius = float(rng.choice([1.0, 1.5, 2.0, 2.3]))
        size, cost = brute_force(pred, gt, radius)
        pairs = match_pixels(pred, gt, radius)
        check_pairs(pairs, pred, gt, radius)
        assert len(pairs) == size
        pairs_mc = match_pixels(pred, gt, radius, min_cost=True)
        check_pairs(pairs_mc, pred, gt, radius)
        assert len(pairs_mc) == size
        total = sum(math.hypot(a - c, b - d) for a, b, c, d in pairs_mc)
        assert total == pytest.approx(cost, abs=1e-6)
        checked += 1
    assert checked == 40


def test_matching_agrees_with_augmenting_paths_on_larger_maps():
    rng = np.random.default_rng(2)
    for _ in range(5):
        pred = rng.random((30, 30)) < 0.15
        gt = rng.random((30, 30)) < 0.15
        radius = 2.5
        pairs = match_pixels(pred, gt, radius)
        check_pairs(pairs, pred, gt, radius)
        assert len(pairs) == kuhn(pred, gt, radius)


def test_image_counts_agree_with_augmenting_paths():
    rng = np.random.default_rng(3)
    thresholds = [0.2, 0.45, 0.7]
    for _ in range(3):
        pred = ndi.gaussian_filter(rng.random((32, 36)), 1.0)
        pred = (pred - pred.min()) / (pred.max() - pred.min())
        gt = ndi.gaussian_filter(rng.random((32, 36)), 1.5) > 0.5
        md = 0.04
        radius = md * math.hypot(32, 36)
        matched, n_pred, n_gt = image_counts(pred, gt, max_dist=md, thresholds=thresholds)
        gt_thin = sk_thin(gt)
        assert n_gt == gt_thin.sum()
        for k, t in enumerate(thresholds):
            p_thin = sk_thin(pred >= t)
            assert n_pred[k] == p_thin.sum()
            assert matched[k] == kuhn(p_thin, gt_thin, radius)


def test_count_is_matching_size_not_a_bound():
    # 3 predicted and 3 gt pixels all with candidates, but p1 and p2 share their only gt pixel
    gt = np.zeros(SIZE, bool)
    gt[10, [10, 20, 22]] = True
    pred = np.zeros(SIZE)
    pred[[9, 11], 10] = 1.0
    pred[10, 21] = 1.0
    matched, n_pred, n_gt = image_counts(pred, gt, max_dist=max_dist_for(1.5), thresholds=[0.5])
    assert (matched[0], n_pred[0], n_gt) == (2, 3, 3)


def test_matching_needs_augmentation_not_greedy():
    # greedy (nearest first) pairs p1 with g1 (distance 0) and leaves p2, g2 unmatched;
    # the maximum matching re-routes: p1 -> g2, p2 -> g1
    pred = np.zeros((1, 8), bool)
    gt = np.zeros((1, 8), bool)
    pred[0, [3, 1]] = True  # p1 at x=3, p2 at x=1
    gt[0, [3, 5]] = True  # g1 at x=3, g2 at x=5
    pairs = match_pixels(pred, gt, 2.0)
    assert len(pairs) == 2
    assert max_matching(np.array([0, 1, 3]), np.array([0, 0, 1]), 2)[0] == 2


def test_two_predictions_compete_for_one_gt_pixel():
    gt = np.zeros(SIZE, bool)
    gt[10, 10] = True
    pred = np.zeros(SIZE)
    pred[10, 9] = pred[10, 11] = 1.0
    matched, n_pred, n_gt = image_counts(pred, gt, max_dist=max_dist_for(1.5), thresholds=[0.5])
    assert (matched[0], n_pred[0], n_gt) == (1, 2, 1)
    sc = boundary_scores([pred], [gt], max_dist=max_dist_for(1.5), thresholds=[0.5])
    assert sc["precision"][0] == 0.5 and sc["recall"][0] == 1.0
    assert sc["odsF"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("shift,radius,expect", [(2, 2.0, 10), (2, 2.5, 10), (3, 2.5, 0),
                                                 (1, 0.5, 0), (0, 0.5, 10)])
def test_shifted_boundary_within_and_beyond_tolerance(shift, radius, expect):
    gt = vline(10).astype(bool)
    pred = vline(10 + shift)
    matched, n_pred, n_gt = image_counts(pred, gt, max_dist=max_dist_for(radius),
                                         thresholds=[0.5])
    assert (n_pred[0], n_gt) == (10, 10)
    assert matched[0] == expect


def test_empty_prediction_and_empty_gt():
    gt = vline(10).astype(bool)
    sc = boundary_scores([np.zeros(SIZE)], [gt], max_dist=0.011)
    assert np.all(sc["predicted"] == 0) and np.all(sc["gt"] == 10)
    assert sc["odsF"] == 0.0 and sc["oisF"] == 0.0 and sc["AP"] == 0.0
    sc = boundary_scores([vline(10, value=0.5)], [np.zeros(SIZE, bool)], max_dist=0.011)
    assert np.all(sc["matched"] == 0) and sc["predicted"][0] == 10 and sc["odsF"] == 0.0
    # no ground truth: F = 0 at every threshold and OIS takes the first (lowest) threshold, as
    # SEISM's max(values, [], 2): the image contributes its 10 predicted pixels
    acc = BoundaryF(max_dist=0.011)
    acc.update(torch.from_numpy(vline(10, value=0.5))[None, None], torch.zeros(1, 1, *SIZE))
    assert acc.state["ois"].tolist() == [0, 10, 0]
    assert acc.compute()["odsF"] == 0.0


def test_ignore_pixels_are_removed_from_both_maps():
    gt = vline(10)
    gt[20:30, 20:30] = 255  # ignored block
    gt[25, 5:15] = 1  # a gt boundary outside the block
    pred = vline(10, value=0.9)
    pred[22:28, 25] = 0.9  # spurious prediction inside the ignored block
    pred[25, 5:15] = 0.9
    sc = boundary_scores([pred], [gt], max_dist=max_dist_for(1.0), thresholds=[0.5])
    assert sc["predicted"][0] == 20 and sc["gt"][0] == 20 and sc["matched"][0] == 20
    sc = boundary_scores([pred], [gt == 1], max_dist=max_dist_for(1.0), thresholds=[0.5])
    assert sc["predicted"][0] == 26  # without ignore the spurious pixels count


def test_thick_prediction_is_thinned():
    gt = vline(10).astype(bool)
    pred = np.zeros(SIZE)
    pred[5:15, 9:12] = 0.8  # three pixels wide
    matched, n_pred, _ = image_counts(pred, gt, max_dist=max_dist_for(1.5), thresholds=[0.5])
    assert n_pred[0] == thin(pred >= 0.5).sum() < 30
    assert matched[0] == n_pred[0]


# ------------------------------------------------------------------------- sweep and summaries

def test_threshold_sweep_picks_best_f():
    gt = vline(10).astype(bool)
    pred = vline(10, value=0.8)
    vline(30, value=0.3, img=pred)  # spurious, far away
    sc = boundary_scores([pred], [gt], max_dist=max_dist_for(2.0))
    f = sc["F"]
    thr = default_thresholds(99)
    assert np.allclose(f[thr <= 0.3], 2 / 3)  # P 1/2, R 1
    assert np.allclose(f[(thr > 0.3) & (thr <= 0.8)], 1.0)
    assert np.all(f[thr > 0.8] == 0)
    assert sc["odsF"] == 1.0 and sc["odsT"] == pytest.approx(0.31)


def constructed_split():
    """Two images with hand-countable counts at thresholds 0.4, 0.6, 0.8 (radius 2 px).

    image 1: GT line of 10 px; prediction: 5 px of it at 0.9, the other 5 at 0.5.
      t 0.4: 10/10 matched (F 1); t 0.6, 0.8: 5 predicted, 5 matched (P 1, R 1/2).
    image 2: GT line of 10 px; prediction: the line at 0.9, far lines at 0.5 and 0.7.
      t 0.4: 30 predicted, 10 matched; t 0.6: 20, 10; t 0.8: 10, 10.
    """
    gt1 = vline(5).astype(bool)
    p1 = vline(5, 5, 10, value=0.9)
    vline(5, 10, 15, value=0.5, img=p1)
    gt2 = vline(5).astype(bool)
    p2 = vline(5, value=0.9)
    vline(20, value=0.5, img=p2)
    vline(30, value=0.7, img=p2)
    return [p1, p2], [gt1, gt2]


def test_ods_ois_ap_on_constructed_case():
    preds, gts = constructed_split()
    sc = boundary_scores(preds, gts, max_dist=max_dist_for(2.0), thresholds=[0.4, 0.6, 0.8])
    assert sc["matched"].tolist() == [20, 15, 15]
    assert sc["predicted"].tolist() == [40, 25, 15]
    assert sc["gt"].tolist() == [20, 20, 20]
    # P (.5, .6, 1), R (1, .75, .75), F (2/3, 2/3, 6/7)
    assert sc["precision"] == pytest.approx([0.5, 0.6, 1.0])
    assert sc["recall"] == pytest.approx([1.0, 0.75, 0.75])
    assert sc["odsF"] == pytest.approx(6 / 7) and sc["odsT"] == pytest.approx(0.8)
    # OIS: image 1 at 0.4 (10, 10, 10), image 2 at 0.8 (10, 10, 10) -> F 1
    assert sc["oisF"] == pytest.approx(1.0)
    # SEISM AP: recall 0.75 first reached at t 0.6 (P 0.6, not t 0.8's P 1), recall 1 at P 0.5;
    # grid recalls 0.75, 0.76, ..., 1.00 (26 values, P linear 0.6 -> 0.5): sum 26 x 0.55 / 100
    assert sc["AP"] == pytest.approx(26 * 0.55 / 100)


def test_summarize_hand_counts():
    thr = np.array([0.2, 0.5, 0.7])
    out = summarize(thr, np.array([8, 6, 2]), np.array([16, 8, 2]), np.array([10, 10, 10]),
                    np.array([7, 8, 10]))
    # P (.5, .75, 1), R (.8, .6, .2), F (.6154, .6667, .3333)
    assert out["odsF"] == pytest.approx(2 * 0.75 * 0.6 / 1.35) and out["odsT"] == 0.5
    assert out["oisF"] == pytest.approx(2 * (7 / 8) * 0.7 / (7 / 8 + 0.7))
    # SEISM AP, points (0.2, 1) - (0.6, .75) - (0.8, .5), grid 0.20 .. 0.80 (61 recalls):
    # 0.20 .. 0.60: 41 values, P 1 -> .75, sum 41 x 0.875 = 35.875;
    # 0.61 .. 0.80: 20 values, P .7375 -> .5, sum 20 x 0.61875 = 12.375; AP = 48.25 / 100
    # (the trapezoid area would be 0.475: the grid sum adds half a step at both ends)
    assert out["AP"] == pytest.approx(0.4825)


def test_seism_ap_empty_thresholds_and_first_point():
    thr = np.array([0.2, 0.5, 0.8])
    # t 0.8 predicts nothing: SEISM's point (R 0, P 1); t 0.2 and 0.5 reach (0.8, 0.8), (0.4, 0.8)
    # grid 0.00 .. 0.40: 41 values, P 1 -> 0.8, sum 36.9; 0.41 .. 0.80: 40 values of 0.8, 32
    out = summarize(thr, np.array([8, 4, 0]), np.array([10, 5, 0]), np.array([10, 10, 10]),
                    np.array([8, 10, 10]))
    assert out["AP"] == pytest.approx((36.9 + 32.0) / 100)
    assert average_precision(np.array([8, 4, 0]), np.array([10, 5, 0]), 10) == out["AP"]
    # a recall reached at two thresholds keeps the first (lowest) one's precision: points
    # (R 1, P 0.25) at t 0.2, (0.5, 0.5) at t 0.5, (0.5, 1) at t 0.8 -> (0.5, 0.5), (1, 0.25);
    # grid 0.50 .. 1.00: 51 values, P 0.5 -> 0.25
    ap = average_precision(np.array([4, 2, 2]), np.array([16, 4, 2]), np.array([4, 4, 4]))
    assert ap == pytest.approx(51 * 0.375 / 100)
    # one distinct recall (nothing predicted anywhere, or no ground truth): AP 0
    assert average_precision(np.zeros(3), np.zeros(3), np.full(3, 5)) == 0.0
    assert average_precision(np.zeros(3), np.array([3, 2, 0]), np.zeros(3)) == 0.0
    # a perfect detector over the whole grid sums 101 values of 1: AP 1.01, as SEISM
    assert average_precision(np.array([5, 0]), np.array([5, 0]), np.array([5, 5])) \
        == pytest.approx(1.01)


def test_ois_takes_the_first_best_threshold():
    # identical maps at the first two thresholds, F (1/2, 1/2, 0): the first best is index 0
    # (the highest would be 1)
    assert best_image_index(np.array([1, 1, 0]), np.array([2, 2, 0]), 2) == 0
    # no ground truth: F 0 everywhere -> index 0, the densest prediction
    assert best_image_index(np.zeros(3, np.int64), np.array([7, 3, 0]), 0) == 0


# --------------------------------------------------------------------------------- accumulator

def _batch(maps):
    return torch.from_numpy(np.stack(maps).astype(np.float32))[:, None]


def test_accumulator_matches_function_and_merge():
    preds, gts = constructed_split()
    md = max_dist_for(2.0)
    ref = boundary_scores(preds, gts, max_dist=md)
    whole = BoundaryF(max_dist=md)
    whole.update(_batch(preds), _batch(gts))
    out = whole.compute()
    assert out["odsF"] == pytest.approx(ref["odsF"] * 100)
    assert out["oisF"] == pytest.approx(ref["oisF"] * 100)
    assert out["AP"] == pytest.approx(ref["AP"] * 100)
    assert out["odsT"] == pytest.approx(ref["odsT"])
    a, b = BoundaryF(max_dist=md), BoundaryF(max_dist=md)
    a.update(_batch(preds[:1]), _batch(gts[:1]))
    b.update(_batch(preds[1:]), _batch(gts[1:]))
    a = pickle.loads(pickle.dumps(a))  # DDP gathers accumulators as objects
    a.merge(b)
    for k, v in whole.state.items():
        assert np.array_equal(a.state[k], v), k
    assert a.compute() == out
    assert len(a.pr_curve()["precision"]) == 99
    with pytest.raises(ValueError):
        a.merge(BoundaryF(max_dist=md, thresholds=9))


def test_accumulator_ignore_value_and_fast_mode():
    gt = vline(10)
    gt[0:3, :] = 255
    pred = vline(10, value=0.7)
    pred[1, :] = 0.7  # spurious row inside the ignored band
    acc = BoundaryF(max_dist=max_dist_for(1.0), thresholds=9)
    acc.update(_batch([pred]), _batch([gt]))
    assert acc.thresholds.tolist() == pytest.approx([0.1 * i for i in range(1, 10)])
    assert acc.compute()["odsF"] == pytest.approx(100.0)
    acc.reset()
    assert acc.state["n_images"] == 0


def test_padding_is_cropped_with_hw():
    preds, gts = constructed_split()
    md = max_dist_for(2.0)
    plain = BoundaryF(max_dist=md)
    plain.update(_batch(preds), _batch(gts))
    padded_p = [np.pad(p, ((0, 24), (0, 8))) for p in preds]  # bottom/right padding
    padded_g = [np.pad(g.astype(np.float32), ((0, 24), (0, 8)), constant_values=255)
                for g in gts]
    cropped = BoundaryF(max_dist=md)
    cropped.update(_batch(padded_p), _batch(padded_g), hw=torch.tensor([SIZE, SIZE]))
    for k, v in plain.state.items():
        assert np.array_equal(cropped.state[k], v), k
    # without hw the tolerance grows with the padded diagonal: the 3-px shift below matches
    gt = vline(10)
    pred = vline(13)
    big = BoundaryF(max_dist=md, thresholds=[0.5])
    big.update(_batch([np.pad(pred, ((0, 40), (0, 40)))]),
               _batch([np.pad(gt, ((0, 40), (0, 40)), constant_values=255)]))
    small = BoundaryF(max_dist=md, thresholds=[0.5])
    small.update(_batch([np.pad(pred, ((0, 40), (0, 40)))]),
                 _batch([np.pad(gt, ((0, 40), (0, 40)), constant_values=255)]), hw=[SIZE])
    assert big.state["matched"][0] == 10 and small.state["matched"][0] == 0


def test_parallel_workers_give_same_counts():
    preds, gts = constructed_split()
    md = max_dist_for(2.0)
    one = boundary_scores(preds * 2, gts * 2, max_dist=md, thresholds=9)
    two = boundary_scores(preds * 2, gts * 2, max_dist=md, thresholds=9, workers=2)
    for k in ("matched", "predicted", "gt"):
        assert np.array_equal(one[k], two[k])
