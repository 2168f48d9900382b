"""``mtlkit predict``: run a checkpoint on images and write one PNG panel per image.

``images`` is an HDF5 file of the DESIGN layout (its ``val`` split; ground truth shown), a folder
of ``.png``/``.jpg`` files, or one image file (prediction only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtlkit.errors import DataError
from mtlkit.viz import MEAN, STD, save_panel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _load_image(path: Path, size: tuple[int, int]) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {str(path)!r}", "pass PNG or JPEG files") from e
    x = (np.asarray(img, dtype=np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def predict(checkpoint: str, images: str, out: str, *, limit: int | None = 16) -> list[Path]:
    """Write panels for up to ``limit`` images into ``out``; returns the written paths."""
    from mtlkit.data.h5 import MultiTaskH5Dataset
    from mtlkit.engine.evaluator import load_run_model

    model, parts, _ = load_run_model(checkpoint)
    device = next(model.parameters()).device
    specs = {t: parts.specs[t] for t in parts.tasks}
    src = Path(images)
    samples: list[tuple[str, Tensor, dict[str, np.ndarray] | None]] = []
    if src.is_file() and src.suffix in (".h5", ".hdf5"):
        from mtlkit.data.transforms import EvalTransform

        ds = MultiTaskH5Dataset(
            str(src), "val", tasks=list(specs), transform=EvalTransform(parts.size)
        )
        for i in range(min(len(ds), limit or len(ds))):
            s = ds[i]
            gts = {t: s[t].numpy() for t in specs if t in s}
            samples.append((f"{i:05d}", s["image"], gts))
    elif src.is_dir() or src.is_file():
        files = sorted(
            p
            for p in ([src] if src.is_file() else src.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(f"no images found at {images!r}", "pass a folder of .png/.jpg files")
        for p in files[: limit or len(files)]:
            samples.append((p.stem, _load_image(p, parts.size), None))
    else:
        raise DataError(f"{images!r} does not exist", "pass an image, a folder or an .h5 file")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with torch.no_grad():
        for name, image, gts in samples:
            pred = model(image[None].to(device))["final"]
            preds = {t: specs[t].postprocess(pred[t])[0].cpu().numpy() for t in specs}
            path = out_dir / f"{name}.png"
            save_panel(path, image.numpy(), preds, gts)
            written.append(path)
    return written
