"""Joint transforms: flip, scale (depth / s), crop alignment, padding, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlkit.data.transforms import (
    IMAGENET_MEAN,
    EvalTransform,
    TrainTransform,
    build_transform,
    denormalize_image,
    hflip,
    photometric_distortion,
    to_tensors,
)
from mtlkit.errors import ConfigError


def _sample(h: int = 24, w: int = 32, block: int = 1) -> dict[str, np.ndarray]:
    """A sample whose maps all encode the same per-pixel id, so alignment can be checked."""
    yy, xx = np.meshgrid(np.arange(h) // block, np.arange(w) // block, indexing="ij")
    ident = (yy * 7 + xx * 3) % 200  # < 255, a different value per block in a neighbourhood
    image = np.stack([ident, (ident * 5) % 256, np.full_like(ident, 9)], -1).astype(np.uint8)
    nrm = np.stack([np.sin(ident * 0.1), np.cos(ident * 0.1), -np.ones_like(ident)], -1)
    nrm = (nrm / np.linalg.norm(nrm, axis=-1, keepdims=True)).astype(np.float32)
    return {
        "image": image,
        "semseg": ident.astype(np.uint8),
        "depth": (1.0 + ident).astype(np.float32),
        "normals": nrm,
        "edge": (ident % 2).astype(np.uint8),
    }


def _ident_from(out: dict[str, np.ndarray]) -> np.ndarray:
    return out["semseg"].astype(np.int64)


def test_hflip_mirrors_and_negates_normals_x() -> None:
    s = _sample()
    f = hflip(s)
    for k in ("image", "semseg", "depth", "edge"):
        np.testing.assert_array_equal(f[k], s[k][:, ::-1])
    np.testing.assert_array_equal(f["normals"][..., 0], -s["normals"][:, ::-1, 0])
    np.testing.assert_array_equal(f["normals"][..., 1:], s["normals"][:, ::-1, 1:])
    z = hflip({"normals": np.zeros((2, 2, 3), np.float32)})["normals"]
    assert not np.signbit(z).any()  # invalid stays +0.0


def test_flip_in_train_transform_negates_x() -> None:
    s = _sample()
    t = TrainTransform((24, 32), scales=(1.0,), flip=True)
    seen = set()
    for seed in range(12):
        out = t(dict(s), generator=torch.Generator().manual_seed(seed))
        flipped = not np.array_equal(out["semseg"], s["semseg"])
        if flipped:
            np.testing.assert_array_equal(out["semseg"], s["semseg"][:, ::-1])
            np.testing.assert_array_equal(out["normals"][..., 0], -s["normals"][:, ::-1, 0])
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("scale", [1.2, 1.5, 2.0])
def test_scale_divides_depth(scale: float) -> None:
    s = _sample(block=4)
    t = TrainTransform((24, 32), scales=(scale,), flip=False)
    out = t(dict(s), generator=torch.Generator().manual_seed(0))
    ident = _ident_from(out)
    # depth was 1 + id before scaling; nearest resizing keeps depth and semseg aligned
    np.testing.assert_allclose(out["depth"], (1.0 + ident) / scale, rtol=1e-6)
    assert out["depth"].shape == (24, 32)
    # the crop really is a zoomed-in view: fewer distinct blocks than the original
    assert len(np.unique(ident)) < len(np.unique(s["semseg"]))


def test_scale_one_is_identity_or_mirror() -> None:
    s = _sample(h=24, w=32)
    t = TrainTransform((24, 32), scales=(1.0,), flip=True)
    for seed in range(4):
        out = t(dict(s), generator=torch.Generator().manual_seed(seed))
        ident = _ident_from(out)
        np.testing.assert_array_equal(np.rint(out["image"][..., 0]).astype(np.int64), ident)
        np.testing.assert_allclose(out["depth"], 1.0 + ident)
        assert tuple(out["hw"]) == (24, 32)
        assert np.array_equal(ident, s["semseg"]) or np.array_equal(ident, s["semseg"][:, ::-1])


def test_random_crops_differ_and_stay_aligned() -> None:
    s = _sample(h=24, w=32, block=2)
    t = TrainTransform((24, 32), scales=(1.5,), flip=False)
    outs = [t(dict(s), generator=torch.Generator().manual_seed(k)) for k in range(6)]
    assert len({o["semseg"].tobytes() for o in outs}) > 1  # the crop position is random
    for o in outs:
        ident = _ident_from(o)
        np.testing.assert_allclose(o["depth"], (1.0 + ident) / 1.5, rtol=1e-6)
        ref = _sample(h=24, w=32, block=2)["normals"]
        lut = {int(i): ref[s["semseg"] == i][0] for i in np.unique(s["semseg"])}
        expect = np.stack([lut[int(i)] for i in ident.ravel()]).reshape(24, 32, 3)
        np.testing.assert_allclose(o["normals"], expect)


def test_image_and_labels_aligned_after_scaling() -> None:
    s = _sample(h=48, w=64, block=8)
    t = TrainTransform((48, 64), scales=(1.5,), flip=True)
    out = t(dict(s), generator=torch.Generator().manual_seed(1))
    ident = _ident_from(out)
    # away from block borders the bilinear image equals the nearest label exactly
    from scipy import ndimage

    interior = (ndimage.maximum_filter(ident, 5) == ndimage.minimum_filter(ident, 5))
    interior[:2] = interior[-2:] = False  # the crop may cut next to a block edge
    interior[:, :2] = interior[:, -2:] = False
    assert interior.sum() > 500
    img = np.rint(out["image"][..., 0]).astype(np.int64)
    np.testing.assert_array_equal(img[interior], ident[interior])


def test_padding_when_smaller() -> None:
    s = _sample(h=20, w=30)
    out = EvalTransform((32, 40))(dict(s))
    assert tuple(out["hw"]) == (20, 30)
    assert (out["semseg"][20:] == 255).all() and (out["semseg"][:, 30:] == 255).all()
    assert (out["depth"][20:] == 0).all() and (out["normals"][:, 30:] == 0).all()
    np.testing.assert_array_equal(out["semseg"][:20, :30], s["semseg"])
    t = to_tensors(out)
    assert torch.allclose(t["image"][:, 25:, :], torch.zeros(()), atol=0.03)  # mean colour
    tr = TrainTransform((32, 40), scales=(1.0,), flip=False)(dict(s))
    assert (tr["semseg"][20:] == 255).all() and tuple(tr["hw"]) == (20, 30)


def test_eval_shrinks_large_samples_keeping_aspect() -> None:
    s = _sample(h=48, w=64, block=8)
    out = EvalTransform((24, 40))(dict(s))
    assert tuple(out["hw"]) == (24, 32)
    assert out["image"].shape == (24, 40, 3)
    np.testing.assert_allclose(out["depth"][:, :32], 1.0 + out["semseg"][:, :32])  # unchanged
    assert (out["semseg"][:, 32:] == 255).all()
    ident = EvalTransform((48, 64))(dict(s))
    np.testing.assert_array_equal(ident["semseg"], s["semseg"])


def test_reproducible_with_torch_seed() -> None:
    s = _sample(h=40, w=50)
    t = build_transform("atrc", (24, 32), train=True)
    torch.manual_seed(123)
    a = t(dict(s))
    torch.manual_seed(123)
    b = t(dict(s))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    outs = [t(dict(s)) for _ in range(5)]
    assert any(not np.array_equal(o["semseg"], outs[0]["semseg"]) for o in outs[1:])


def test_photometric_leaves_labels() -> None:
    s = _sample(h=40, w=50)
    t = TrainTransform((40, 50), scales=(1.0,), flip=False, photometric=True)
    changed = False
    for seed in range(6):
        out = t(dict(s), generator=torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(out["semseg"], s["semseg"])
        changed |= not np.allclose(out["image"], s["image"])
        assert out["image"].min() >= 0 and out["image"].max() <= 255
    assert changed
    img = photometric_distortion(np.full((4, 4, 3), 100.0), torch.Generator().manual_seed(0))
    assert img.shape == (4, 4, 3)


def test_presets() -> None:
    assert isinstance(build_transform("mtlpt", (8, 8), train=False), EvalTransform)
    mt = build_transform("mtlpt", (8, 8), train=True)
    assert isinstance(mt, TrainTransform) and mt.scales == (1.0, 1.2, 1.5) and mt.flip
    at = build_transform("atrc", (8, 8), train=True)
    assert at.scale_range == (0.5, 2.0) and at.photometric
    assert isinstance(build_transform("none", (8, 8), train=True), EvalTransform)
    with pytest.raises(ConfigError):
        build_transform("bogus", (8, 8), train=True)


def test_to_tensors_and_denormalize() -> None:
    s = _sample()
    s["parts"] = s["edge"].copy()
    s["saliency"] = s["edge"].copy()
    t = to_tensors(s)
    assert t["image"].shape == (3, 24, 32) and t["image"].dtype == torch.float32
    assert t["semseg"].dtype == torch.int64 and t["semseg"].shape == (24, 32)
    assert t["parts"].dtype == torch.int64
    assert t["depth"].shape == (1, 24, 32) and t["edge"].shape == (1, 24, 32)
    assert t["saliency"].dtype == torch.float32
    assert t["normals"].shape == (3, 24, 32)
    np.testing.assert_array_equal(denormalize_image(t["image"]), s["image"])
    mean = np.round(IMAGENET_MEAN * 255)
    assert np.abs(denormalize_image(torch.zeros(3, 2, 2)) - mean).max() <= 1


def test_numpy_generator_accepted() -> None:
    s = _sample(h=40, w=50)
    t = build_transform("mtlpt", (24, 32), train=True)
    a = t(dict(s), generator=np.random.default_rng(5))
    b = t(dict(s), generator=np.random.default_rng(5))
    np.testing.assert_array_equal(a["semseg"], b["semseg"])
