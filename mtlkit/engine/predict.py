"""``mtlkit predict``: run a checkpoint on images and write a PNG panel (and per-task files) each.

``images`` is an HDF5 file of the DESIGN layout (its ``val`` split, at the training size; the
panel shows the ground truth too), a folder of images, or one image file. Images are read with
Pillow (``.png .jpg .jpeg .bmp .tif .tiff .webp``; EXIF rotation applied) and keep their aspect
ratio: each is resized so that its short side equals the short side of the model's training
size, padded bottom/right to a multiple of the backbone stride (32), and the predictions are
cropped to the image and resized back to its own resolution (logits and regressions bilinearly,
then postprocessed). Beside ``<name>.png`` (the panel, with a class legend and a depth colour
bar) each image gets its per-task files (:func:`mtlkit.viz.save_task_outputs`). An unreadable
file is reported through ``on_skip`` and skipped; files whose stems collide (``a.png``,
``a.jpg``) are named ``a_png`` and ``a_jpg``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError, DataError
from mtlkit.viz import MEAN, STD, save_panel, save_task_outputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Inputs are padded to a multiple of the backbones' output stride.
STRIDE = 32
#: Above this many output values (channels x H x W) class logits are not resized to the full
#: image (argmax at the model's resolution, then nearest-neighbour), to bound memory.
_MAX_UPSAMPLED = 64 * 2**20


def _read_photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; DataError when Pillow cannot read it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {str(path)!r} ({e.__class__.__name__}: {e})",
                        "pass PNG, JPEG, BMP, TIFF or WebP files") from e


def prepare_photo(rgb: np.ndarray, train_size: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """Resize (aspect kept) so the short side is ``min(train_size)``, normalise, pad to the
    stride. Returns the (3, H', W') input and the (h, w) of the image inside it."""
    from PIL import Image

    h0, w0 = rgb.shape[:2]
    scale = min(train_size) / min(h0, w0)
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    img = Image.fromarray(rgb).resize((w, h), Image.BILINEAR) if (h, w) != (h0, w0) \
        else Image.fromarray(rgb)
    x = (np.asarray(img, dtype=np.float32) / 255 - MEAN) / STD
    H, W = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
    padded = np.zeros((H, W, 3), dtype=np.float32)  # 0 = the ImageNet mean after normalising
    padded[:h, :w] = x
    return torch.from_numpy(padded.transpose(2, 0, 1).copy()), (h, w)


def _to_full_resolution(raw: Tensor, spec: Any, hw: tuple[int, int],
                        full: tuple[int, int]) -> np.ndarray:
    """Crop a raw (1, C, H', W') output to the image, resize it to ``full`` and postprocess."""
    x = raw[:, :, : hw[0], : hw[1]].float()
    if spec.kind == "labels" and x.shape[1] * full[0] * full[1] > _MAX_UPSAMPLED:
        ids = spec.postprocess(x)[:, None].float()
        return F.interpolate(ids, size=full, mode="nearest")[0, 0].long().numpy()
    x = F.interpolate(x, size=full, mode="bilinear", align_corners=False)
    return spec.postprocess(x)[0].cpu().numpy()


def _unique_names(files: list[Path]) -> list[str]:
    """Output base names: the stem, or ``stem_ext`` where stems collide (then a counter)."""
    stems: dict[str, int] = {}
    for p in files:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    names, used = [], set()
    for p in files:
        name = p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def _image_files(src: Path) -> list[Path]:
    files = sorted(p for p in ([src] if src.is_file() else src.iterdir())
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images found at {str(src)!r}",
                        f"pass a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def predict(checkpoint: str, images: str, out: str, *, limit: int | None = 16,
            on_skip: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Write panels (and, for photos, per-task files) for up to ``limit`` images into ``out``;
    returns the panel paths. ``on_skip(path, reason)`` is called for each unreadable image."""
    from mtlkit.engine.evaluator import load_run_model
    from mtlkit.utils import check_writable

    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit {limit} is out of range", "it must be >= 1")
    src = Path(images)
    if not src.exists():
        raise DataError(f"{images!r} does not exist", "pass an image, a folder or an .h5 file")
    is_h5 = src.is_file() and src.suffix.lower() in (".h5", ".hdf5")
    files = [] if is_h5 else _image_files(src)
    out_dir = Path(out)
    check_writable(out_dir, kind="folder")
    model, parts, _ = load_run_model(checkpoint)
    specs = {t: parts.specs[t] for t in parts.tasks}
    attrs = getattr(parts.val_set, "attrs", {}) or {}
    class_names = {t: list(attrs.get(f"{t}_class_names") or []) for t in ("semseg", "parts")}
    if is_h5:
        return _predict_h5(model, parts, specs, src, out_dir, limit, class_names)
    files = files[: limit or len(files)]
    device = next(model.parameters()).device
    written: list[Path] = []
    for path, name in zip(files, _unique_names(files), strict=True):
        try:
            rgb = _read_photo(path)
        except DataError as e:
            if on_skip is not None:
                on_skip(path, e.problem)
            continue
        x, hw = prepare_photo(rgb, parts.size)
        with torch.no_grad():
            raw = model(x[None].to(device))["final"]
        full = {t: _to_full_resolution(raw[t].cpu(), specs[t], hw, rgb.shape[:2]) for t in specs}
        small = {t: specs[t].postprocess(raw[t][:, :, : hw[0], : hw[1]].float())[0].cpu().numpy()
                 for t in specs}
        panel = out_dir / f"{name}.png"
        save_panel(panel, x[:, : hw[0], : hw[1]].numpy(), small, None, class_names)
        save_task_outputs(out_dir, name, full)
        written.append(panel)
    if not written:
        raise DataError(f"none of the {len(files)} image(s) at {images!r} could be read",
                        "pass PNG, JPEG, BMP, TIFF or WebP files")
    return written


def _predict_h5(model: Any, parts: Any, specs: dict[str, Any], src: Path, out_dir: Path,
                limit: int | None, class_names: dict[str, list[str]]) -> list[Path]:
    """Panels (prediction and ground truth) of the first ``limit`` samples of the val split."""
    from mtlkit.data.h5 import MultiTaskH5Dataset
    from mtlkit.data.transforms import EvalTransform

    ds = MultiTaskH5Dataset(str(src), "val", tasks=list(specs),
                            transform=EvalTransform(parts.size))
    names = ds.attrs or {}
    class_names = {t: list(names.get(f"{t}_class_names") or class_names.get(t) or [])
                   for t in ("semseg", "parts")}
    device = next(model.parameters()).device
    written = []
    with torch.no_grad():
        for i in range(min(len(ds), limit or len(ds))):
            s = ds[i]
            h, w = s["meta"]["hw"]
            gts = {t: s[t].numpy() for t in specs if t in s}
            pred = model(s["image"][None].to(device))["final"]
            preds = {t: specs[t].postprocess(pred[t])[0].cpu().numpy() for t in specs}
            path = out_dir / f"{i:05d}.png"
            save_panel(path, s["image"].numpy(), preds, gts, class_names)
            written.append(path)
    return written
