"""Colour maps and panels."""

from __future__ import annotations

import numpy as np

from mtlkit.viz import colorize, colorize_labels, make_panel, palette


def test_palette_distinct_and_ignore_black() -> None:
    pal = palette()
    assert len({tuple(c) for c in pal[:40]}) == 40
    assert tuple(pal[255]) == (0, 0, 0)
    assert tuple(colorize_labels(np.array([[255]]))[0, 0]) == (0, 0, 0)


def test_normals_colour_and_invalid() -> None:
    n = np.zeros((3, 1, 2), dtype=np.float32)
    n[:, 0, 0] = (0, 0, -1)
    rgb = colorize("normals", n)
    assert tuple(rgb[0, 0]) == (127, 127, 0) and tuple(rgb[0, 1]) == (0, 0, 0)


def test_depth_uses_truth_range() -> None:
    gt = np.array([[[1.0, 3.0, 0.0]]], dtype=np.float32)
    rgb = colorize("depth", gt, gt)
    assert tuple(rgb[0, 2]) == (0, 0, 0)
    assert rgb[0, 0].tolist() != rgb[0, 1].tolist()


def test_panel_size() -> None:
    img = np.zeros((3, 8, 10), dtype=np.float32)
    preds = {"semseg": np.zeros((8, 10), dtype=np.int64), "edge": np.zeros((1, 8, 10))}
    panel = make_panel(img, preds, {"semseg": np.zeros((8, 10), dtype=np.int64)})
    # a grid of (input + 2 tasks) x (pred, truth) cells with a 14 px caption each, then a
    # 4 px gap, the "semseg classes:" title and one row of the class legend (14 px each)
    assert panel.size == (30, 2 * (8 + 14) + 4 + 14 + 14)
    no_labels = make_panel(img, {"edge": np.zeros((1, 8, 10))}, {"edge": np.zeros((1, 8, 10))})
    assert no_labels.size == (20, 2 * (8 + 14))  # nothing to explain: no footer
