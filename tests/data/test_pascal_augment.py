"""The ``pascal`` augmentation preset: flip, rotation (normals rotated in-plane), scale, crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlkit.data import DATASET_INFO
from mtlkit.data.transforms import (
    PascalTransform,
    build_transform,
    rotate_sample,
)
from mtlkit.errors import ConfigError


def _sample(h: int = 24, w: int = 32) -> dict[str, np.ndarray]:
    """PASCAL-like sample: labels in a small set, valid/invalid depth and normals."""
    rng = np.random.default_rng(0)
    semseg = rng.integers(0, 5, (h, w)).astype(np.uint8)
    semseg[:3] = 255
    parts = rng.integers(0, 7, (h, w)).astype(np.uint8)
    edge = (rng.random((h, w)) < 0.2).astype(np.uint8)
    sal = (rng.random((h, w)) < 0.5).astype(np.uint8)
    depth = (1.0 + rng.random((h, w))).astype(np.float32)
    depth[:, :2] = 0.0
    nrm = rng.normal(size=(h, w, 3)).astype(np.float32)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    nrm[-2:] = 0.0  # invalid
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return {"image": image, "semseg": semseg, "parts": parts, "edge": edge, "saliency": sal,
            "depth": depth, "normals": nrm}


def test_preset_and_dataset_defaults() -> None:
    t = build_transform("pascal", (16, 16), train=True)
    assert isinstance(t, PascalTransform)
    assert t.max_rotation == 20.0 and t.scale_range == (0.75, 1.25) and t.flip
    assert type(build_transform("pascal", (16, 16), train=False)).__name__ == "EvalTransform"
    assert DATASET_INFO["pascal"]["augment"] == "pascal"
    assert DATASET_INFO["synthetic-pascal"]["augment"] == "pascal"
    assert DATASET_INFO["nyud"]["augment"] == "mtlpt"
    assert DATASET_INFO["synthetic-nyud"]["augment"] == "mtlpt"
    with pytest.raises(ConfigError) as e:
        build_transform("bogus", (8, 8), train=True)
    assert "pascal" in str(e.value) + str(getattr(e.value, "fix", ""))


def test_rotation_keeps_label_values_and_fills_outside() -> None:
    s = _sample()
    out = rotate_sample(s, 17.0)
    for k in ("semseg", "parts", "edge", "saliency"):
        assert out[k].dtype == np.uint8 and out[k].shape == s[k].shape
        assert set(np.unique(out[k])) <= set(np.unique(s[k])) | {255}
        # the corners come from outside the source: ignore
        assert out[k][0, 0] == 255 and out[k][-1, -1] == 255 and out[k][0, -1] == 255
    assert out["depth"][0, 0] == 0.0 and out["depth"][-1, -1] == 0.0
    assert set(np.unique(out["depth"])) <= set(np.unique(s["depth"]))
    zeros = out["normals"] == 0
    assert zeros[0, 0].all() and not np.signbit(out["normals"][zeros]).any()  # no -0.0
    assert out["image"].dtype == np.float32 and 0 <= out["image"].min() <= out["image"].max() <= 255
    # the pixels from outside the source are the same for every map
    outside = rotate_sample({"image": s["image"], "semseg": np.zeros_like(s["semseg"])},
                            17.0)["semseg"] == 255
    assert 0 < outside.sum() < outside.size // 2
    for k in ("semseg", "parts", "edge", "saliency"):
        assert (out[k][outside] == 255).all()
    assert (out["depth"][outside] == 0).all() and (out["normals"][outside] == 0).all()
    assert (out["parts"][~outside] != 255).all() and (out["depth"][~outside][:50] >= 0).all()


def test_normals_rotate_with_the_image_90_degrees() -> None:
    """Hand-derived: rotating the image 90 deg counter-clockwise on screen moves a point right of
    the centre to above it; a normal pointing right (+x) must then point up, i.e. -y (y down)."""
    h = w = 9
    c = 4
    s = {"image": np.zeros((h, w, 3), np.uint8), "semseg": np.zeros((h, w), np.uint8),
         "normals": np.zeros((h, w, 3), np.float32)}
    s["semseg"][c, c + 3] = 1  # a marker 3 px right of the centre ...
    s["normals"][c, c + 3] = (1.0, 0.0, 0.0)  # ... facing right
    s["semseg"][c + 2, c] = 2  # a marker 2 px below the centre ...
    s["normals"][c + 2, c] = (0.0, 0.6, -0.8)  # ... facing down and towards the camera
    out = rotate_sample(s, 90.0)
    # right of centre -> above centre; below centre -> right of centre
    assert out["semseg"][c - 3, c] == 1 and out["semseg"][c, c + 2] == 2
    assert (out["semseg"] == 1).sum() == 1 and (out["semseg"] == 2).sum() == 1
    np.testing.assert_allclose(out["normals"][c - 3, c], (0.0, -1.0, 0.0), atol=1e-6)  # up
    np.testing.assert_allclose(out["normals"][c, c + 2], (0.6, 0.0, -0.8), atol=1e-6)  # right
    rest = np.ones((h, w), bool)
    rest[c - 3, c] = rest[c, c + 2] = False
    assert (out["normals"][rest] == 0).all()
    # clockwise (-90): the right-facing marker goes below the centre and faces down (+y)
    cw = rotate_sample(s, -90.0)
    assert cw["semseg"][c + 3, c] == 1
    np.testing.assert_allclose(cw["normals"][c + 3, c], (0.0, 1.0, 0.0), atol=1e-6)


@pytest.mark.parametrize("angle", [-20.0, 13.0, 90.0])
def test_normals_follow_the_rotated_image_gradient(angle: float) -> None:
    """Normals set to the direction of the image's intensity gradient stay equal to the
    gradient direction of the rotated image (geometric consistency at any angle)."""
    h, w = 41, 41
    d = np.array([0.8, -0.6])  # gradient direction (x, y)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = 128.0 + 2.0 * (d[0] * (xx - 20) + d[1] * (yy - 20))
    image = np.repeat(ramp[..., None], 3, -1).astype(np.float32)
    nrm = np.zeros((h, w, 3), np.float32)
    nrm[..., :2] = d * 0.6
    nrm[..., 2] = -0.8
    out = rotate_sample({"image": image, "normals": nrm}, angle)
    gy, gx = np.gradient(out["image"][..., 0].astype(np.float64))
    inner = np.zeros((h, w), bool)
    inner[15:26, 15:26] = True  # well inside the rotated image
    g = np.stack([gx[inner], gy[inner]], -1)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    n2 = out["normals"][inner][:, :2] / 0.6
    np.testing.assert_allclose(n2, g, atol=1e-4)
    np.testing.assert_allclose(out["normals"][inner][:, 2], -0.8, atol=1e-6)


def test_unit_length_preserved_where_valid() -> None:
    s = _sample(32, 40)
    t = PascalTransform((32, 40))
    for seed in range(4):
        out = t(dict(s), generator=torch.Generator().manual_seed(seed))
        n = out["normals"]
        norm = np.linalg.norm(n, axis=-1)
        valid = norm > 0
        assert valid.sum() > 100
        np.testing.assert_allclose(norm[valid], 1.0, atol=1e-5)
        assert (n[~valid] == 0).all()
        assert set(np.unique(out["semseg"])) <= set(np.unique(s["semseg"])) | {255}
        assert out["image"].shape == (32, 40, 3) and out["depth"].shape == (32, 40)


def test_identity_without_flip_rotation_scale() -> None:
    s = _sample()
    t = PascalTransform((24, 32))
    out = t.apply(dict(s), flip=False, angle=0.0, scale=1.0)
    assert tuple(out["hw"]) == (24, 32)
    for k in s:
        np.testing.assert_array_equal(out[k], s[k])
    fixed = PascalTransform((24, 32), max_rotation=0.0, scale_range=(1.0, 1.0), flip=False)
    out = fixed(dict(s))
    for k in s:
        np.testing.assert_array_equal(out[k], s[k])


def test_scale_divides_depth_and_pads() -> None:
    s = _sample()
    t = PascalTransform((24, 32))
    out = t.apply(dict(s), flip=False, angle=0.0, scale=0.75)
    assert tuple(out["hw"]) == (18, 24)
    d = out["depth"][:18, :24]
    src = np.unique(s["depth"])
    vals = np.unique(d[d > 0]) * 0.75  # depth was divided by the scale
    assert np.abs(vals[:, None] - src[None]).min(axis=1).max() < 1e-5
    assert (out["semseg"][18:] == 255).all() and (out["depth"][:, 24:] == 0).all()


def test_reproducible_with_torch_seed() -> None:
    s = _sample(30, 30)
    t = build_transform("pascal", (24, 24), train=True)
    torch.manual_seed(7)
    a = t(dict(s))
    torch.manual_seed(7)
    b = t(dict(s))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    outs = [t(dict(s)) for _ in range(4)]
    assert any(not np.array_equal(o["semseg"], outs[0]["semseg"]) for o in outs[1:])
    torch.manual_seed(7)
    params = [t.sample_params() for _ in range(50)]
    assert all(-20.0 <= p[1] <= 20.0 and 0.75 <= p[2] <= 1.25 for p in params)
    assert {p[0] for p in params} == {True, False}
