"""MeanIoU against hand-computed confusion matrices."""

import numpy as np
import pytest
import torch

from mtlkit.metrics import MeanIoU

# valid (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2); the last pixel is ignored
TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [1, 2, 0]]])


def test_hand_computed():
    m = MeanIoU(3)
    m.update(PRED, TARGET)
    out = m.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1 -> 1
    assert out["per_class_IoU"] == pytest.approx([50.0, 200.0 / 3, 100.0])
    assert out["mIoU"] == pytest.approx((50.0 + 200.0 / 3 + 100.0) / 3)
    assert out["pixel_acc"] == pytest.approx(80.0)  # 4 of 5 valid pixels


def test_class_absent_from_gt_and_pred_is_left_out():
    m = MeanIoU(4)
    m.update(PRED, TARGET)
    out = m.compute()
    assert out["per_class_IoU"][3] is None
    assert out["mIoU"] == pytest.approx((50.0 + 200.0 / 3 + 100.0) / 3)


def test_class_only_predicted_counts_as_zero():
    m = MeanIoU(4)
    m.update(torch.tensor([[3, 0]]), torch.tensor([[0, 0]]))
    out = m.compute()
    # class 0: TP 1, FN 1 -> 50; class 3: FP 1 -> 0; classes 1, 2 absent
    assert out["per_class_IoU"] == [50.0, None, None, 0.0]
    assert out["mIoU"] == pytest.approx(25.0)


def test_ignore_pixels_do_not_count():
    a, b = MeanIoU(3), MeanIoU(3)
    a.update(PRED, TARGET)
    pred2 = PRED.clone()
    pred2[0, 1, 2] = 2  # change only the ignored pixel's prediction
    b.update(pred2, TARGET)
    assert np.array_equal(a.state["confusion"], b.state["confusion"])
    assert a.state["confusion"].sum() == 5


def test_logits_input_and_channel_dim():
    logits = torch.nn.functional.one_hot(PRED.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    a, b = MeanIoU(3), MeanIoU(3)
    a.update(PRED, TARGET)
    b.update(logits, TARGET[:, None])
    assert np.array_equal(a.state["confusion"], b.state["confusion"])


def test_merge_equals_single_update():
    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.integers(0, 5, (4, 8, 8)))
    t[t == 4] = 255
    p = torch.from_numpy(rng.integers(0, 4, (4, 8, 8)))
    whole = MeanIoU(4)
    whole.update(p, t)
    a, b = MeanIoU(4), MeanIoU(4)
    a.update(p[:1], t[:1])
    b.update(p[1:], t[1:])
    a.merge(b)
    assert np.array_equal(a.state["confusion"], whole.state["confusion"])
    assert a.compute() == whole.compute()
    with pytest.raises(ValueError):
        a.merge(MeanIoU(5))


def test_labels_out_of_range_raise_and_reset():
    m = MeanIoU(3)
    with pytest.raises(ValueError):
        m.update(torch.tensor([[0]]), torch.tensor([[7]]))
    m.update(PRED, TARGET)
    m.reset()
    assert m.state["confusion"].sum() == 0
