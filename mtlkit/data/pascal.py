"""PASCAL-Context multi-task (MTL-PT ``PASCAL_MT/``) -> the mtlkit HDF5 layout.

``mtlkit preprocess pascal --root PASCAL_MT/``. Layout read (``shared/SPEC-data-eval.md``):

- ``ImageSets/Context/{train,val}.txt``: ids (4998 / 5105), groups ``train`` / ``val`` in file
  order; ``index`` = the id as an integer (``2008_000002`` -> 2008000002; the 1-based position
  when an id is not of the form ``YYYY_NNNNNN``);
- ``JPEGImages/<id>.jpg``: RGB image;
- ``semseg/VOC12/<id>.png`` if present, else ``semseg/pascal-context/<id>.png``: 21 classes
  (0 = background .. 20 = tvmonitor), 255 kept as ignore;
- ``human_parts/<id>.mat``: PASCAL-Part annotation ``anno`` (fields ``imname``, ``objects``;
  each object ``class``, ``class_ind``, ``mask``, ``parts``; each part ``part_name``, ``mask``).
  The parts of every person (``class_ind`` 15) that has part annotations are painted in file
  order into 7 classes: 0 background, 1 head (hair, head, ears, eyebrows, eyes, mouth, nose),
  2 torso (torso, neck), 3 upper arms, 4 lower arms (incl. hands), 5 upper legs, 6 lower legs
  (incl. feet) - the grouping of MTL-PT. An image without such a person is all 255 (ignore), as
  MTL-PT's evaluation ignores it; a person without part annotations in an image that has some
  stays background, as in MTL-PT (kept for comparable numbers);
- ``normals_distill/<id>.png``: ``n = 2 * v / 255 - 1`` re-normalised; kept only on pixels whose
  PASCAL-Context class (``LabelMap``) is shared with NYUD (:data:`NORMALS_VALID_CONTEXT_IDS`),
  all-zero (invalid) elsewhere; axis convention of the distilled source (attr
  ``normals_convention``);
- ``sal_distill/<id>.png``: ``v / 255 > 0.5`` -> 1 else 0;
- ``pascal-context/trainval/<id>.mat``: ``LabelMap`` (459 classes) -> edge = thinned
  ``|Laplacian(LabelMap)| > 0`` (5-point Laplacian, mirrored border; skimage ``thin``).

Images differ in size (at most 500 x 500). They are stored top-left in a ``pad`` x ``pad`` canvas
(default 512, the next multiple of 32 above the largest side; ``hw`` (N, 2) records each valid
size): image 0, label maps 255, normals 0 in the padding. A map whose size differs from its image
is resized by nearest neighbour (counted in the returned summary, printed by the CLI).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.data.folders import (
    IGNORE,
    check_out_path,
    progress_bar,
    read_png,
    read_rgb,
    read_split_lists,
    require_dir,
    require_file,
    unit_normals,
)
from mtlkit.errors import ConfigError, DataError

PASCAL_TASKS = ("semseg", "parts", "normals", "saliency", "edge")
VOC_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
PERSON_CLASS = 15
DEFAULT_PAD = 512

#: PASCAL-Part person part names -> MTL-PT's 6 groups (1 head .. 6 lower legs; 0 background).
PART_GROUPS: dict[str, int] = {
    **dict.fromkeys(("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye",
                     "mouth", "nose"), 1),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}

#: PASCAL-Context ``LabelMap`` ids (1-based in the official 459-class ``labels.txt``) whose class
#: name is also one of the 894 NYUD-v2 class names (``allClassName``), excluding ``unknown``,
#: plus ``tvmonitor`` (427, NYUD's ``television``): the pixels where the NYUD-distilled normals
#: are kept. Derived once from the two official class lists (169 shared names + 1).
NORMALS_VALID_CONTEXT_IDS: frozenset[int] = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49,
    50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101,
    104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165,
    172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228,
    230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275,
    281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319,
    323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380,
    383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430,
    432, 440, 441, 442, 443, 444, 446, 454, 457,
))

_FIX = "pass the unchanged PASCAL_MT/ folder of MTL-PT (see the README)"
_ID_RE = re.compile(r"^(\d{4})_(\d{6})$")


def _loadmat(path: Path, what: str) -> dict[str, Any]:
    import scipy.io as sio

    try:
        return sio.loadmat(str(path))
    except Exception as e:  # scipy raises ValueError/TypeError/OSError/NotImplementedError
        raise DataError(f"cannot read {what} {path} as a MATLAB v5 .mat file ({e})", _FIX) from e


def _resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(hw[0]) + 0.5) * a.shape[0] / hw[0], a.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(hw[1]) + 0.5) * a.shape[1] / hw[1], a.shape[1] - 1).astype(int)
    return a[rows][:, cols]


def _field(rec: Any, name: str, path: Path, where: str) -> Any:
    names = rec.dtype.names or ()
    if name not in names:
        raise DataError(f"part annotation {path}: {where} has no field {name!r} "
                        f"(fields: {', '.join(names) or 'none'})", _FIX)
    return rec[name]


def _mat_str(a: Any) -> str:
    a = np.asarray(a)
    if a.dtype.kind == "O" and a.size == 1:
        return _mat_str(a.ravel()[0])
    return "".join(str(x) for x in a.ravel())


def read_parts(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """``human_parts/<id>.mat`` -> (H, W) uint8 parts map (see module docstring)."""
    m = _loadmat(path, "part annotation")
    if "anno" not in m:
        raise DataError(f"part annotation {path} has no key 'anno'", _FIX)
    anno = np.asarray(m["anno"]).ravel()
    if anno.size != 1 or anno.dtype.names is None:
        raise DataError(f"part annotation {path} key 'anno' is not a 1x1 struct", _FIX)
    objects = np.asarray(_field(anno[0], "objects", path, "anno")).ravel()
    target: np.ndarray | None = None
    for j, obj in enumerate(objects):
        if objects.dtype.names is None:
            raise DataError(f"part annotation {path}: anno.objects is not a struct array", _FIX)
        cls = np.asarray(_field(obj, "class_ind", path, f"anno.objects({j + 1})")).ravel()
        if cls.size != 1 or int(cls[0]) != PERSON_CLASS:
            continue
        parts = np.asarray(_field(obj, "parts", path, f"anno.objects({j + 1})")).ravel()
        if parts.size == 0 or parts.dtype.names is None:
            continue
        if target is None:
            target = np.zeros(hw, dtype=np.uint8)
        for q, part in enumerate(parts):
            where = f"anno.objects({j + 1}).parts({q + 1})"
            name = _mat_str(_field(part, "part_name", path, where))
            if name not in PART_GROUPS:
                raise DataError(f"part annotation {path}: {where} has unknown person part "
                                f"{name!r}", f"known parts: {', '.join(sorted(PART_GROUPS))}")
            mask = np.asarray(_field(part, "mask", path, where))
            if mask.ndim != 2:
                raise DataError(f"part annotation {path}: {where}.mask has shape {mask.shape}",
                                _FIX)
            if mask.shape != hw:
                mask = _resize_nearest(mask, hw)
            target[mask.astype(bool)] = PART_GROUPS[name]
    if target is None:
        return np.full(hw, IGNORE, dtype=np.uint8)
    return target


def read_label_map(path: Path) -> np.ndarray:
    """``pascal-context/trainval/<id>.mat`` -> ``LabelMap`` (H, W) int64."""
    m = _loadmat(path, "PASCAL-Context label file")
    if "LabelMap" not in m:
        keys = ", ".join(k for k in m if not k.startswith("__")) or "none"
        raise DataError(f"PASCAL-Context label file {path} has no key 'LabelMap' (keys: {keys})",
                        _FIX)
    lm = np.asarray(m["LabelMap"])
    if lm.ndim != 2 or lm.dtype.kind not in "uif":
        raise DataError(f"PASCAL-Context label file {path} key 'LabelMap' has shape {lm.shape} "
                        f"dtype {lm.dtype}, expected a 2-D integer map", _FIX)
    return lm.astype(np.int64)


def edges_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """Thinned ``|Laplacian(LabelMap)| > 0`` as (H, W) uint8 0/1 (MTL-PT's PASCAL edges)."""
    from scipy import ndimage
    from skimage.morphology import thin

    lap = ndimage.laplace(label_map.astype(np.float64), mode="mirror")
    return thin(np.abs(lap) > 0).astype(np.uint8)


def _index_of(sid: str, pos: int) -> int:
    m = _ID_RE.match(sid)
    return int(m.group(1) + m.group(2)) if m else pos


def _semseg_file(root: Path, sid: str) -> Path:
    for sub in ("VOC12", "pascal-context"):
        p = root / "semseg" / sub / f"{sid}.png"
        if p.is_file():
            return p
    raise DataError(f"no segmentation for {sid}: neither {root}/semseg/VOC12/{sid}.png nor "
                    f"{root}/semseg/pascal-context/{sid}.png exists", _FIX)


def pascal_sample(root: Path, sid: str) -> tuple[dict[str, np.ndarray], int]:
    """All maps of image ``sid`` at its own size; returns (sample, number of resized maps)."""
    image = read_rgb(require_file(root / "JPEGImages" / f"{sid}.jpg", "image", _FIX))
    hw = image.shape[:2]
    resized = 0

    def fit(a: np.ndarray, path: Path, what: str) -> np.ndarray:
        nonlocal resized
        if a.shape[:2] == hw:
            return a
        if a.ndim not in (2, 3) or min(a.shape[:2]) == 0:
            raise DataError(f"{what} {path} has shape {a.shape}", _FIX)
        resized += 1
        return _resize_nearest(a, hw)

    f_seg = _semseg_file(root, sid)
    seg = read_png(f_seg)
    if seg.ndim != 2:
        raise DataError(f"segmentation {f_seg} has shape {seg.shape}, expected a single-channel "
                        "(palette or grey) class-index PNG", _FIX)
    seg = fit(seg, f_seg, "segmentation").astype(np.int64)
    bad = (seg > 20) & (seg != IGNORE)
    if bad.any():
        raise DataError(f"segmentation {f_seg} has class {int(seg[bad].max())}, expected 0..20 "
                        "or 255", _FIX)

    f_lm = require_file(root / "pascal-context" / "trainval" / f"{sid}.mat",
                        "PASCAL-Context label file", _FIX)
    label_map = fit(read_label_map(f_lm), f_lm, "PASCAL-Context label file")

    f_parts = require_file(root / "human_parts" / f"{sid}.mat", "part annotation", _FIX)
    parts = read_parts(f_parts, hw)

    f_nrm = require_file(root / "normals_distill" / f"{sid}.png", "normals", _FIX)
    nrm = read_png(f_nrm)
    if nrm.ndim != 3 or nrm.shape[2] not in (3, 4):
        raise DataError(f"normals {f_nrm} has shape {nrm.shape}, expected an RGB PNG", _FIX)
    nrm = fit(nrm[..., :3], f_nrm, "normals")
    normals = unit_normals(2.0 * nrm.astype(np.float64) / 255.0 - 1.0)
    keep = np.isin(label_map, np.fromiter(NORMALS_VALID_CONTEXT_IDS, dtype=np.int64))
    normals[~keep] = 0.0

    f_sal = require_file(root / "sal_distill" / f"{sid}.png", "saliency", _FIX)
    sal = read_png(f_sal)
    if sal.ndim == 3:
        sal = sal[..., 0]
    sal = fit(sal, f_sal, "saliency")

    sample = {"image": image, "semseg": seg.astype(np.uint8), "parts": parts,
              "normals": normals, "saliency": (sal.astype(np.float64) / 255.0 > 0.5)
              .astype(np.uint8), "edge": edges_from_label_map(label_map)}
    return sample, resized


def convert_pascal(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    pad: int = DEFAULT_PAD,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert MTL-PT's ``PASCAL_MT/`` folder into ``out`` (HDF5 layout of DESIGN.md).

    Args:
        root: the ``PASCAL_MT/`` folder.
        out: output ``.h5`` (written atomically; no file on error).
        pad: side of the square canvas every image is stored in (>= the largest image side).
        limit: keep only the first ``limit`` ids of each split (quick tries).
        progress: show a rich progress bar.

    Returns:
        summary ``{"out", "splits": {split: n}, "size": (pad, pad), "resized": n_maps}``.

    Raises:
        DataError: a missing folder/file/key, an undecodable file, bad labels, an image larger
            than ``pad``.
    """
    from mtlkit.data.h5 import H5Writer

    root = require_dir(root, "PASCAL_MT folder", _FIX)
    out = check_out_path(out)
    if pad < 1:
        raise ConfigError(f"--pad must be positive, got {pad}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    for sub in ("JPEGImages", "ImageSets/Context", "semseg", "human_parts", "normals_distill",
                "sal_distill", "pascal-context/trainval"):
        require_dir(root / sub, "PASCAL_MT sub-folder", _FIX)
    splits = read_split_lists(root / "ImageSets" / "Context", _FIX, limit)
    attrs = {
        "semseg_class_names": list(VOC_CLASS_NAMES),
        "normals_convention": "as provided by MTL-PT PASCAL_MT normals_distill (decoded 2v/255-1,"
                              " re-normalised); all-zero = invalid",
        "source": {"format": "MTL-PT PASCAL_MT", "root": str(root.resolve()), "pad": pad,
                   "limit": limit, "n": {k: len(v) for k, v in splits.items()},
                   "layout": "top-left in a pad x pad canvas; hw = valid size"},
    }
    total = sum(len(v) for v in splits.values())
    n_resized = 0
    with H5Writer(out, dataset="pascal", tasks=list(PASCAL_TASKS), size=(pad, pad),
                  attrs=attrs) as w, progress_bar(total, "PASCAL_MT -> HDF5", progress) as advance:
        for split, ids in splits.items():
            w.add_split(split, len(ids))
            for i, sid in enumerate(ids):
                sample, resized = pascal_sample(root, sid)
                n_resized += resized
                h, wd = sample["image"].shape[:2]
                if h > pad or wd > pad:
                    raise DataError(f"image {sid} of {root} is {h}x{wd}, larger than the "
                                    f"{pad}x{pad} canvas", f"pass --pad {max(h, wd)} or more")
                sample["index"] = _index_of(sid, i + 1)
                sample["hw"] = (h, wd)
                w.write(split, i, sample)
                advance()
    return {"out": str(out), "splits": {k: len(v) for k, v in splits.items()},
            "size": (pad, pad), "resized": n_resized}
