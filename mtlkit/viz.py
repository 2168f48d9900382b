"""Colour maps and prediction panels (PNG).

A panel is a grid: the first row holds the input image and each task's prediction, the second the
ground truth where it is known; below it, a legend of the classes shown (semseg, parts) and a
depth colour bar in metres. Colour maps: class palettes for semseg/parts (ignore = black), a
perceptual ramp for depth (invalid = black), ``(n + 1) / 2`` RGB for normals, grey levels for
boundary and saliency probabilities.

Per-task files (:func:`save_task_outputs`) hold one prediction at an image's own resolution:
``<name>.semseg.png`` / ``<name>.parts.png`` indexed PNGs with the class palette (pixel value =
class id), ``<name>.depth.npy`` (float32 metres) with ``<name>.depth.png`` (colour-mapped, with
a scale bar in metres), ``<name>.normals.png``, ``<name>.edge.png`` / ``<name>.saliency.png``
(probability x 255).
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


LABEL_TASKS = ("semseg", "parts")
_TEXT_H = 14  # height of one line of PIL's default bitmap font, with margins


def depth_range(depth: np.ndarray, ref: np.ndarray | None = None) -> tuple[float, float]:
    """(min, max) of the valid (> 0) depths of ``ref`` (else ``depth``); (0, 1) if none."""
    r = ref if ref is not None else depth
    valid = r[np.isfinite(r) & (r > 0)]
    return (float(valid.min()), float(valid.max())) if valid.size else (0.0, 1.0)


def colorbar(lo: float, hi: float, width: int, unit: str = "m", height: int = 10) -> Image.Image:
    """A horizontal colour bar of the depth ramp from ``lo`` to ``hi`` with labelled ends
    and middle (``width`` x ``height + text``)."""
    width = max(int(width), 60)
    ramp = colorize_scalar(np.tile(np.linspace(lo, hi, width, dtype=np.float32), (height, 1)),
                           lo, hi)
    img = Image.new("RGB", (width, height + _TEXT_H), (255, 255, 255))
    img.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(img)
    labels = [(0, f"{lo:.2f}"), (width // 2, f"{(lo + hi) / 2:.2f}"), (width, f"{hi:.2f} {unit}")]
    for x, text in labels:
        tw = draw.textlength(text)
        draw.text((min(max(0, x - tw / 2), width - tw), height + 1), text, fill=(0, 0, 0))
    return img


def legend(classes: list[tuple[int, str]], width: int) -> Image.Image:
    """Colour swatches and names of ``classes`` ((id, name) pairs), wrapped to ``width``."""
    width = max(int(width), 80)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, y = [], 0, 0
    for cid, name in classes:
        text = f"{cid} {name}"
        w = 12 + int(probe.textlength(text)) + 10
        if x and x + w > width:
            x, y = 0, y + _TEXT_H
        items.append((x, y, cid, text))
        x += w
    img = Image.new("RGB", (width, y + _TEXT_H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x, y, cid, text in items:
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=tuple(int(c) for c in _PAL[cid]),
                       outline=(0, 0, 0))
        draw.text((x + 12, y + 1), text, fill=(0, 0, 0))
    return img


def _present(task: str, maps: list[np.ndarray | None]) -> list[int]:
    ids: set[int] = set()
    for m in maps:
        if m is not None:
            ids.update(int(v) for v in np.unique(m) if v != 255)
    return sorted(ids)


def _footer(preds: dict[str, np.ndarray], gts: dict[str, np.ndarray] | None, width: int,
            class_names: dict[str, list[str]] | None) -> list[Image.Image]:
    """Legend and colour-bar strips below a panel."""
    strips = []
    for t in LABEL_TASKS:
        if t in preds:
            ids = _present(t, [preds[t], (gts or {}).get(t)])
            names = (class_names or {}).get(t) or []
            pairs = [(i, names[i] if i < len(names) else f"class {i}") for i in ids]
            if pairs:
                title = Image.new("RGB", (width, _TEXT_H), (255, 255, 255))
                ImageDraw.Draw(title).text((2, 1), f"{t} classes:", fill=(0, 0, 0))
                strips += [title, legend(pairs, width)]
    if "depth" in preds:
        ref = (gts or {}).get("depth")
        lo, hi = depth_range(preds["depth"][0], ref[0] if ref is not None else None)
        title = Image.new("RGB", (width, _TEXT_H), (255, 255, 255))
        ImageDraw.Draw(title).text((2, 1), "depth (m):", fill=(0, 0, 0))
        strips += [title, colorbar(lo, hi, min(width, 320))]
    return strips


def make_panel(image: np.ndarray, preds: dict[str, np.ndarray],
               gts: dict[str, np.ndarray] | None = None,
               class_names: dict[str, list[str]] | None = None) -> Image.Image:
    """The PNG panel of one sample. ``image``: (3, H, W) normalised; ``preds``/``gts`` per task;
    ``class_names``: per label task, for the legend (ids are shown without)."""
    h, w = image.shape[1:]
    tasks = list(preds)
    rows = 2 if gts else 1
    label_h = _TEXT_H
    width = (len(tasks) + 1) * w
    footer = _footer(preds, gts, width, class_names)
    extra = sum(f.height for f in footer) + (4 if footer else 0)
    canvas = Image.new("RGB", (width, rows * (h + label_h) + extra), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = rows * (h + label_h) + 4
    for strip in footer:
        canvas.paste(strip, (0, y))
        y += strip.height

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


def _png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_panel(path: Path, image: np.ndarray, preds: dict[str, np.ndarray],
               gts: dict[str, np.ndarray] | None = None,
               class_names: dict[str, list[str]] | None = None) -> None:
    """Write a panel PNG atomically."""
    from mtlkit.utils import atomic_write_bytes

    atomic_write_bytes(Path(path), _png_bytes(make_panel(image, preds, gts, class_names)))


def indexed_png(labels: np.ndarray) -> Image.Image:
    """(H, W) class ids -> a palette ("P") image: pixel value = class id, colours = palette."""
    img = Image.fromarray(np.clip(labels, 0, 255).astype(np.uint8), mode="P")
    img.putpalette(_PAL.reshape(-1).tolist())
    return img


def depth_png(depth: np.ndarray) -> Image.Image:
    """(H, W) metres -> the colour-mapped depth with a scale bar in metres below it."""
    lo, hi = depth_range(depth)
    rgb = colorize_scalar(depth, lo, hi, invalid=~(depth > 0))
    bar = colorbar(lo, hi, min(depth.shape[1], 480))
    img = Image.new("RGB", (depth.shape[1], depth.shape[0] + bar.height + 2), (255, 255, 255))
    img.paste(Image.fromarray(rgb), (0, 0))
    img.paste(bar, (0, depth.shape[0] + 2))
    return img


def save_task_outputs(out_dir: Path, name: str, preds: dict[str, np.ndarray]) -> list[Path]:
    """Write each task's prediction (postprocessed, at the image's own resolution) as the files
    of the module docstring; returns their paths. ``preds``: semseg/parts (H, W) ids, depth
    (1, H, W) metres, normals (3, H, W), edge/saliency (1, H, W) probabilities."""
    from mtlkit.utils import atomic_write_bytes

    out_dir = Path(out_dir)
    written = []

    def put(suffix: str, data: bytes) -> None:
        p = out_dir / f"{name}.{suffix}"
        atomic_write_bytes(p, data)
        written.append(p)

    for t, x in preds.items():
        if t in LABEL_TASKS:
            put(f"{t}.png", _png_bytes(indexed_png(x)))
        elif t == "depth":
            import io

            buf = io.BytesIO()
            np.save(buf, x[0].astype(np.float32))
            put("depth.npy", buf.getvalue())
            put("depth.png", _png_bytes(depth_png(x[0])))
        elif t == "normals":
            put("normals.png", _png_bytes(Image.fromarray(colorize_normals(x))))
        else:  # edge, saliency: probabilities
            grey = (np.clip(x[0], 0, 1) * 255).round().astype(np.uint8)
            put(f"{t}.png", _png_bytes(Image.fromarray(grey, mode="L")))
    return written
