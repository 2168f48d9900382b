"""Joint augmentation of multi-task samples (numpy, HWC) and conversion to tensors.

A numpy sample holds ``image`` (h, w, 3) uint8 or float32 in [0, 255] and any of the task maps
of the HDF5 layout: ``semseg``/``parts``/``edge``/``saliency`` (h, w) uint8 (255 = ignore),
``depth`` (h, w) float32 metres (0 = invalid), ``normals`` (h, w, 3) float32 (camera frame x right,
y down, z forward; all-zero = invalid). Transforms return the sample at ``size`` plus ``hw``, the
size of the valid (unpadded) top-left region.

Augmentation follows the reference code of the field (``shared/SPEC-data-eval.md``):

- ``mtlpt`` (Multi-Task-Learning-PyTorch, NYUD): random scale in {1, 1.2, 1.5} (image bilinear,
  labels/depth/normals nearest; depth divided by the scale, as zooming in by s is like moving
  the camera s times closer), random crop back to the training size (padding when smaller),
  horizontal flip (negating the normals' x component).
- ``atrc`` (ATRC / InvPT): scale uniform in [0.5, 2], crop, flip, photometric distortion
  (brightness, contrast, saturation; each with probability 1/2), pad.
- ``pascal`` (Multi-Task-Learning-PyTorch, PASCAL-Context): horizontal flip, rotation by an angle
  uniform in [-20, 20] degrees about the image centre (image bilinear, everything else nearest;
  outside the rotated image: labels 255, depth/normals 0, image the ImageNet mean; the normals'
  (x, y) components rotated in-plane with the image), scale uniform in [0.75, 1.25] (depth
  divided by the scale), random crop / pad to the training size.
- ``none``: no augmentation (the eval transform).

Evaluation only resizes when the sample does not fit (keeping the aspect ratio) and pads
bottom/right to ``size``: image with the ImageNet mean (0 after normalisation), labels with 255,
depth and normals with 0.

All randomness comes from torch's global RNG (``torch.rand`` / ``torch.randint``) unless a
``torch.Generator`` or ``np.random.Generator`` is passed per call, so a fixed torch seed makes
training bit-reproducible, also with DataLoader workers (torch seeds each worker from the main
process's RNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IGNORE = 255
LABEL_KEYS = ("semseg", "parts", "edge", "saliency")
PRESETS = ("none", "mtlpt", "atrc", "pascal")
Generator = torch.Generator | np.random.Generator | None


def _pad_value(key: str, dtype: np.dtype) -> Any:
    if key == "image":
        return IMAGENET_MEAN * 255.0 if dtype.kind == "f" else np.round(IMAGENET_MEAN * 255)
    if key in LABEL_KEYS:
        return IGNORE
    return 0


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel centre (matches bilinear ``align_corners=False``)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_sample(sample: dict[str, np.ndarray], out_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resize every map to ``out_hw``: the image bilinearly (float32 out), everything else nearest.

    Depth and normals are resized by nearest neighbour so invalid (0) pixels never blend into
    valid ones; normals keep unit length. Depth values are *not* changed here.
    """
    h, w = sample["image"].shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == (h, w):
        return dict(sample)
    ri, ci = _nearest_index(h, oh), _nearest_index(w, ow)
    out: dict[str, np.ndarray] = {}
    for key, arr in sample.items():
        if key == "image":
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
            t = F.interpolate(t[None], size=(oh, ow), mode="bilinear", align_corners=False,
                              antialias=oh < h or ow < w)
            out[key] = t[0].permute(1, 2, 0).clamp_(0, 255).numpy()
        else:
            out[key] = arr[ri][:, ci]
    return out


def pad_to(sample: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Pad every map bottom/right to ``size`` (image: ImageNet mean, labels 255, others 0)."""
    H, W = int(size[0]), int(size[1])
    out: dict[str, np.ndarray] = {}
    for key, arr in sample.items():
        if key == "hw":
            out[key] = arr
            continue
        h, w = arr.shape[:2]
        if (h, w) == (H, W):
            out[key] = arr
            continue
        if h > H or w > W:
            raise ValueError(f"{key} of size {(h, w)} does not fit in {(H, W)}")
        full = np.empty((H, W, *arr.shape[2:]), dtype=arr.dtype)
        full[...] = _pad_value(key, arr.dtype)
        full[:h, :w] = arr
        out[key] = full
    return out


def hflip(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mirror every map left-right; the normals' x component changes sign."""
    out = {k: v[:, ::-1] for k, v in sample.items()}
    if "normals" in out:
        n = out["normals"].copy()
        n[..., 0] *= -1.0
        n[..., 0] += 0.0  # no -0.0 where the normal is invalid
        out["normals"] = n
    return out


def rotate_sample(sample: dict[str, np.ndarray], angle: float) -> dict[str, np.ndarray]:
    """Rotate every map by ``angle`` degrees counter-clockwise (as seen on screen) about the
    image centre, keeping the canvas size.

    The image is sampled bilinearly (float32 out), all other maps by nearest neighbour, so label
    values are never interpolated. Pixels that come from outside the source get the padding
    values of :func:`pad_to` (labels 255, depth/normals 0, image the ImageNet mean).

    Normals are rotated in-plane like the image: with x right and y down, a counter-clockwise
    screen rotation by theta maps a direction (x, y) to (x cos t + y sin t, -x sin t + y cos t)
    (right -> up for 90 degrees); z is unchanged (the camera turned about its optical axis).
    """
    if angle == 0.0:
        return dict(sample)
    h, w = sample["image"].shape[:2]
    t = np.deg2rad(float(angle))
    c, s = np.cos(t), np.sin(t)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64) - cy,
                         np.arange(w, dtype=np.float64) - cx, indexing="ij")
    # source of each output pixel: the inverse (clockwise) rotation of its offset from the centre
    sx = c * xx - s * yy + cx
    sy = s * xx + c * yy + cy
    inside = (sx >= -0.5) & (sx < w - 0.5) & (sy >= -0.5) & (sy < h - 0.5)
    ni = np.clip(np.floor(sy + 0.5).astype(np.int64), 0, h - 1)
    nj = np.clip(np.floor(sx + 0.5).astype(np.int64), 0, w - 1)
    out: dict[str, np.ndarray] = {}
    for key, arr in sample.items():
        if key == "image":
            x0f = np.clip(sx, 0, w - 1)
            y0f = np.clip(sy, 0, h - 1)
            x0 = np.minimum(np.floor(x0f).astype(np.int64), w - 2) if w > 1 else np.zeros_like(nj)
            y0 = np.minimum(np.floor(y0f).astype(np.int64), h - 2) if h > 1 else np.zeros_like(ni)
            x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
            ax = (x0f - x0).astype(np.float32)[..., None]
            ay = (y0f - y0).astype(np.float32)[..., None]
            img = arr.astype(np.float32, copy=False)
            top = img[y0, x0] * (1 - ax) + img[y0, x1] * ax
            bot = img[y1, x0] * (1 - ax) + img[y1, x1] * ax
            res = top * (1 - ay) + bot * ay
            res[~inside] = _pad_value(key, res.dtype)
            out[key] = np.clip(res, 0.0, 255.0).astype(np.float32)
            continue
        res = arr[ni, nj]
        res[~inside] = _pad_value(key, arr.dtype)
        if key == "normals":
            nx, ny = res[..., 0].copy(), res[..., 1].copy()
            res[..., 0] = c * nx + s * ny
            res[..., 1] = -s * nx + c * ny
            res[~inside] = 0.0
            res += 0.0  # no -0.0
        out[key] = res
    return out


def to_tensors(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Numpy HWC sample -> tensors of the mtlkit convention.

    image float32 (3, H, W) ImageNet-normalised; semseg/parts int64 (H, W); depth float32
    (1, H, W); normals float32 (3, H, W); edge/saliency float32 (1, H, W) with values 0/1/255.
    """
    out: dict[str, torch.Tensor] = {}
    for key, arr in sample.items():
        arr = np.ascontiguousarray(arr)
        if key == "image":
            img = (arr.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
            out[key] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        elif key in ("semseg", "parts"):
            out[key] = torch.from_numpy(arr.astype(np.int64))
        elif key in ("edge", "saliency", "depth"):
            out[key] = torch.from_numpy(arr.astype(np.float32))[None]
        elif key == "normals":
            out[key] = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32)
                                                             .transpose(2, 0, 1)))
        elif key == "hw":
            continue
        else:
            raise KeyError(f"unknown sample key {key!r}")
    return out


def denormalize_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Undo the ImageNet normalisation: (3, H, W) -> uint8 (H, W, 3); batched (B, 3, H, W) too."""
    x = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image
    x = np.moveaxis(np.asarray(x, dtype=np.float32), -3, -1)
    x = (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _fit_ratio(hw: tuple[int, int], size: tuple[int, int]) -> float:
    """Largest ratio <= 1 that makes ``hw`` fit into ``size`` (never upscales)."""
    return min(1.0, size[0] / hw[0], size[1] / hw[1])


def _scaled(hw: tuple[int, int], r: float) -> tuple[int, int]:
    return max(1, int(round(hw[0] * r))), max(1, int(round(hw[1] * r)))


class EvalTransform:
    """Deterministic: shrink (aspect kept) only if the sample does not fit, pad to ``size``."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: dict[str, np.ndarray],
                 generator: Generator = None) -> dict[str, np.ndarray]:
        h, w = sample["image"].shape[:2]
        r = _fit_ratio((h, w), self.size)
        if r < 1.0:
            hw = _scaled((h, w), r)
            hw = (min(hw[0], self.size[0]), min(hw[1], self.size[1]))
            sample = resize_sample(sample, hw)
        return _pad_with_hw(sample, self.size)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"


def _pad_with_hw(sample: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """:func:`pad_to` ``size``, plus the unpadded (h, w) under ``"hw"`` (int64)."""
    hw = sample["image"].shape[:2]
    out = pad_to(sample, size)
    out["hw"] = np.array(hw, dtype=np.int64)
    return out


def _random_crop(sample: dict[str, np.ndarray], size: tuple[int, int],
                 generator: Generator) -> dict[str, np.ndarray]:
    """A uniformly placed (H, W) window (top drawn first, then left); a side that is not larger
    than the window is kept whole."""
    H, W = size
    nh, nw = sample["image"].shape[:2]
    top = _randint(nh - H + 1, generator) if nh > H else 0
    left = _randint(nw - W + 1, generator) if nw > W else 0
    return {k: v[top:top + H, left:left + W] for k, v in sample.items()}


def _divide_depth(sample: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """Depth divided by the image scale factor (zooming in by s brings the scene s times closer)."""
    if "depth" in sample and scale != 1.0:
        sample["depth"] = (sample["depth"] / np.float32(scale)).astype(np.float32)
    return sample


def _rand(generator: Generator) -> float:
    """Uniform float in [0, 1) from the given generator, else torch's global RNG."""
    if isinstance(generator, np.random.Generator):
        return float(generator.random())
    return float(torch.rand((), generator=generator))


def _randint(n: int, generator: Generator) -> int:
    """Uniform integer in [0, n)."""
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, n))
    return int(torch.randint(0, n, (), generator=generator))


def photometric_distortion(image: np.ndarray, generator: Generator = None,
                           brightness: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                           saturation: tuple[float, float] = (0.5, 1.5)) -> np.ndarray:
    """ATRC/mmseg-style jitter of a float (h, w, 3) image in [0, 255], each step with p = 1/2.

    brightness: add U(-b, b); contrast: multiply by U(contrast); saturation: blend with the
    grey image by U(saturation). (The hue step of mmseg is left out.)
    """
    img = image.astype(np.float32, copy=True)
    if _rand(generator) < 0.5:
        img += (2.0 * _rand(generator) - 1.0) * brightness
    if _rand(generator) < 0.5:
        img *= contrast[0] + _rand(generator) * (contrast[1] - contrast[0])
    if _rand(generator) < 0.5:
        a = saturation[0] + _rand(generator) * (saturation[1] - saturation[0])
        grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = grey[..., None] + a * (img - grey[..., None])
    return np.clip(img, 0.0, 255.0)


class TrainTransform:
    """Random scale -> photometric jitter -> horizontal flip -> random crop / pad to ``size``.

    Args:
        size: (H, W) training size.
        scales: discrete scales, one drawn uniformly (MTL-PT: 1, 1.2, 1.5).
        scale_range: if given, a scale drawn uniformly from [lo, hi] instead (ATRC: 0.5-2).
        flip: horizontal flip with probability 1/2 (normals x negated).
        photometric: apply :func:`photometric_distortion`.

    The sample is first shrunk to fit ``size`` if larger (like :class:`EvalTransform`, depth
    unchanged: that is a change of intrinsics), then scaled by s with depth divided by s.
    """

    def __init__(self, size: Sequence[int], scales: Sequence[float] = (1.0, 1.2, 1.5),
                 flip: bool = True, scale_range: tuple[float, float] | None = None,
                 photometric: bool = False) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.scales = tuple(float(s) for s in scales)
        self.scale_range = scale_range
        self.flip = flip
        self.photometric = photometric
        if not self.scales and scale_range is None:
            raise ValueError("TrainTransform needs scales or scale_range")

    def sample_scale(self, generator: Generator = None) -> float:
        if self.scale_range is not None:
            lo, hi = self.scale_range
            return lo + _rand(generator) * (hi - lo)
        return self.scales[_randint(len(self.scales), generator)]

    def __call__(self, sample: dict[str, np.ndarray],
                 generator: Generator = None) -> dict[str, np.ndarray]:
        h, w = sample["image"].shape[:2]
        s = self.sample_scale(generator)
        r = _fit_ratio((h, w), self.size)
        sample = resize_sample(sample, _scaled((h, w), r * s))
        sample = _divide_depth(sample, s)
        if self.photometric:
            sample["image"] = photometric_distortion(sample["image"], generator)
        if self.flip and _rand(generator) < 0.5:
            sample = hflip(sample)
        return _pad_with_hw(_random_crop(sample, self.size, generator), self.size)

    def __repr__(self) -> str:
        sc = f"scale_range={self.scale_range}" if self.scale_range else f"scales={self.scales}"
        return (f"TrainTransform(size={self.size}, {sc}, flip={self.flip}, "
                f"photometric={self.photometric})")


class PascalTransform(TrainTransform):
    """MTL-PT PASCAL augmentation: flip -> rotation -> scale -> random crop / pad to ``size``.

    Args:
        size: (H, W) training size.
        max_rotation: angle drawn uniformly from [-max_rotation, max_rotation] degrees
            (:func:`rotate_sample`; normals rotated in-plane).
        scale_range: scale drawn uniformly from [lo, hi] (depth divided by the scale).
        flip: horizontal flip with probability 1/2 (normals x negated).

    As in :class:`TrainTransform` the sample is first shrunk to fit ``size`` if larger.
    """

    def __init__(self, size: Sequence[int], max_rotation: float = 20.0,
                 scale_range: tuple[float, float] = (0.75, 1.25), flip: bool = True) -> None:
        super().__init__(size, scales=(), flip=flip, scale_range=scale_range)
        self.max_rotation = float(max_rotation)

    def sample_params(self, generator: Generator = None) -> tuple[bool, float, float]:
        """(flip, angle in degrees, scale) drawn in this order."""
        flip = self.flip and _rand(generator) < 0.5
        angle = (2.0 * _rand(generator) - 1.0) * self.max_rotation if self.max_rotation else 0.0
        return flip, angle, self.sample_scale(generator)

    def apply(self, sample: dict[str, np.ndarray], flip: bool, angle: float, scale: float,
              generator: Generator = None) -> dict[str, np.ndarray]:
        """Apply the given flip / rotation / scale; only the crop position is random."""
        h, w = sample["image"].shape[:2]
        if flip:
            sample = hflip(sample)
        sample = rotate_sample(sample, angle)
        r = _fit_ratio((h, w), self.size)
        sample = resize_sample(sample, _scaled((h, w), r * scale))
        sample = _divide_depth(sample, scale)
        return _pad_with_hw(_random_crop(sample, self.size, generator), self.size)

    def __call__(self, sample: dict[str, np.ndarray],
                 generator: Generator = None) -> dict[str, np.ndarray]:
        flip, angle, scale = self.sample_params(generator)
        return self.apply(sample, flip, angle, scale, generator)

    def __repr__(self) -> str:
        return (f"PascalTransform(size={self.size}, max_rotation={self.max_rotation}, "
                f"scale_range={self.scale_range}, flip={self.flip})")


def build_transform(preset: str, size: Sequence[int],
                    train: bool) -> EvalTransform | TrainTransform:
    """The transform of an augmentation ``preset`` (``none``, ``mtlpt``, ``atrc``, ``pascal``).

    ``train=False`` always gives :class:`EvalTransform` (validation only pads).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {preset!r}",
                          f"choose one of: {', '.join(PRESETS)}")
    if not train or preset == "none":
        return EvalTransform(size)
    if preset == "mtlpt":
        return TrainTransform(size, scales=(1.0, 1.2, 1.5), flip=True)
    if preset == "pascal":
        return PascalTransform(size, max_rotation=20.0, scale_range=(0.75, 1.25), flip=True)
    return TrainTransform(size, scale_range=(0.5, 2.0), flip=True, photometric=True)
