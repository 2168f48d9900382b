"""Colour maps and prediction panels (PNG).

A panel is a grid: the first row holds the input image and each task's prediction, the second the
ground truth where it is known. Colour maps: class palettes for semseg/parts (ignore = black),
a perceptual ramp for depth (invalid = black), ``(n + 1) / 2`` RGB for normals, grey levels for
boundary and saliency probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC bit-interleaving palette, (n, 3) uint8; index 255 is black."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    # shift so class 0 is not black (black marks "ignore")
    out = np.roll(pal, -1, axis=0)
    out[255] = 0
    return out


_PAL = palette()
# A compact viridis-like ramp (5 anchor colours, linearly interpolated).
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float32)


def denormalize(image: np.ndarray) -> np.ndarray:
    """(3, H, W) ImageNet-normalised float -> (H, W, 3) uint8."""
    x = image.transpose(1, 2, 0) * STD + MEAN
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) int class map -> (H, W, 3) uint8; 255 (ignore) is black."""
    return _PAL[np.clip(labels, 0, 255).astype(np.int64)]


def colorize_scalar(x: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                    invalid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through the ramp; ``invalid`` pixels black."""
    valid = np.isfinite(x) if invalid is None else (~invalid & np.isfinite(x))
    vals = x[valid]
    lo = vmin if vmin is not None else (float(vals.min()) if vals.size else 0.0)
    hi = vmax if vmax is not None else (float(vals.max()) if vals.size else 1.0)
    t = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1) * (len(_RAMP) - 1)
    t = np.nan_to_num(t)
    i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
    f = (t - i)[..., None]
    rgb = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
    rgb[~valid] = 0
    return rgb.astype(np.uint8)


def colorize_normals(n: np.ndarray) -> np.ndarray:
    """(3, H, W) unit normals -> (H, W, 3) uint8 ``(n + 1) / 2``; all-zero (invalid) is black."""
    rgb = ((n.transpose(1, 2, 0) + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
    rgb[(n == 0).all(axis=0)] = 0
    return rgb


def colorize(task: str, x: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Colour a postprocessed prediction or a target of ``task`` (no batch dimension).

    ``ref`` (the ground truth) fixes the depth colour range so prediction and truth compare.
    """
    if task in ("semseg", "parts"):
        return colorize_labels(x)
    if task == "depth":
        d = x[0]
        r = ref[0] if ref is not None else d
        valid = r[r > 0]
        lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 1.0)
        return colorize_scalar(d, lo, hi, invalid=d <= 0)
    if task == "normals":
        return colorize_normals(x)
    # edge, saliency: probabilities or 0/1 targets (255 = ignore -> black)
    p = x[0].astype(np.float32)
    return colorize_scalar(p, 0.0, 1.0, invalid=p > 1.0)


def make_panel(image: np.ndarray, preds: dict[str, np.ndarray],
               gts: dict[str, np.ndarray] | None = None) -> Image.Image:
    """The PNG panel of one sample. ``image``: (3, H, W) normalised; ``preds``/``gts`` per task."""
    h, w = image.shape[1:]
    tasks = list(preds)
    rows = 2 if gts else 1
    label_h = 14
    canvas = Image.new("RGB", ((len(tasks) + 1) * w, rows * (h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def put(col: int, row: int, rgb: np.ndarray, text: str) -> None:
        x, y = col * w, row * (h + label_h)
        draw.text((x + 2, y + 1), text, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(rgb), (x, y + label_h))

    put(0, 0, denormalize(image), "input")
    for i, t in enumerate(tasks):
        ref = gts.get(t) if gts else None
        put(i + 1, 0, colorize(t, preds[t], ref), f"{t} pred")
        if ref is not None:
            put(i + 1, 1, colorize(t, ref, ref), f"{t} truth")
    return canvas


def save_panel(path: Path, image: np.ndarray, preds: dict[str, np.ndarray],
               gts: dict[str, np.ndarray] | None = None) -> None:
    """Write a panel PNG atomically."""
    import io

    from mtlkit.utils import atomic_write_bytes

    buf = io.BytesIO()
    make_panel(image, preds, gts).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
