"""TaskSpec losses: hand-computed values and ignore handling (255 / invalid pixels)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit.errors import UnknownNameError
from mtlkit.tasks import TASK_NAMES, get_task


def test_semseg_ce_ignores_255() -> None:
    spec = get_task("semseg", 3)
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0] = 2.0  # pixel 0: class 0 favoured; pixel 1 ignored
    target = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert spec.loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # changing the ignored pixel's logits does not change the loss
    logits[0, :, 0, 1] = torch.tensor([5.0, -3.0, 1.0])
    assert spec.loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_depth_l1_on_valid_only() -> None:
    spec = get_task("depth")
    pred = torch.tensor([[[[1.0, 2.0, 100.0]]]])
    target = torch.tensor([[[[1.5, 1.0, 0.0]]]])
    assert spec.loss(pred, target).item() == pytest.approx((0.5 + 1.0) / 2)


def test_normals_l1_normalises_prediction_and_ignores_zero() -> None:
    spec = get_task("normals")
    pred = torch.tensor([0.0, 0.0, 2.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    pred[0, :, 0, 1] = torch.tensor([7.0, 7.0, 7.0])  # invalid pixel: anything
    target = torch.zeros(1, 3, 1, 2)
    target[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    # normalised pred (0,0,1) vs (1,0,0): |diffs| = 1, 0, 1 -> mean 2/3
    assert spec.loss(pred, target).item() == pytest.approx(2 / 3)


def test_edge_weighted_bce_and_ignore() -> None:
    spec = get_task("edge")
    pred = torch.tensor([[[[0.0, 1.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 255.0]]]])
    pos = 0.95 * F.softplus(torch.tensor(-0.0))
    neg = 0.05 * F.softplus(torch.tensor(1.0))
    assert spec.loss(pred, target).item() == pytest.approx(((pos + neg) / 2).item(), rel=1e-6)


def test_saliency_balanced_bce() -> None:
    spec = get_task("saliency")
    pred = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    # positives weighted by the negative fraction 0.75, negatives by 0.25; BCE(0) = log 2
    expected = (0.75 * math.log(2) + 3 * 0.25 * math.log(2)) / 4
    assert spec.loss(pred, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_all_ignored_gives_zero_with_grad(name: str) -> None:
    spec = get_task(name, 5 if name == "semseg" else None)
    pred = torch.randn(2, spec.out_channels, 4, 4, requires_grad=True)
    if name in ("semseg", "parts"):
        target = torch.full((2, 4, 4), 255)
    elif name in ("edge", "saliency"):
        target = torch.full((2, 1, 4, 4), 255.0)
    else:
        target = torch.zeros(2, spec.out_channels, 4, 4)
    loss = spec.loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None


def test_aux_predictions_are_upsampled() -> None:
    spec = get_task("depth")
    pred = torch.full((1, 1, 2, 2), 3.0)
    target = torch.full((1, 1, 8, 8), 1.0)
    assert spec.loss(pred, target).item() == pytest.approx(2.0)


def test_fixed_weights_follow_spec() -> None:
    weights = {t: get_task(t).weight for t in TASK_NAMES}
    assert weights == {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0, "parts": 2.0,
                       "saliency": 5.0}


def test_unknown_task() -> None:
    with pytest.raises(UnknownNameError, match="unknown task 'nope'"):
        get_task("nope")
