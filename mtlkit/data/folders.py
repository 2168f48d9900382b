"""Import prepared NYUD folders (MTL-PT ``NYUD_MT/``, ATRC/InvPT ``NYUDv2/``) + shared file helpers.

Two public folder layouts of NYUD-v2 (795 train / 654 val, ``shared/SPEC-data-eval.md``) are
imported unchanged into the HDF5 layout of ``shared/DESIGN.md``: their images, depth, normals and
edge maps are copied, only re-encoded:

===================  ===================================  =====================================
file                 MTL-PT ``NYUD_MT/``                  ATRC / InvPT ``NYUDv2/``
===================  ===================================  =====================================
split lists          ``gt_sets/{train,val}.txt`` (one id per line; ``val`` = the 654 test images)
image                ``images/<id>.jpg``                  ``images/<id>.png``
semseg               ``segmentation/<id>.png``: 0 = unlabelled -> 255, 1..40 -> 0..39
depth                ``depth/<id>.npy`` metres (H, W) or (H, W, 1); non-finite or <= 0 -> 0
normals              ``normals/<id>.npy`` float (H, W, 3)  ``normals/<id>.png``: 2 * v / 255 - 1
edge                 ``edge/<id>.npy`` binary              ``edge/<id>.png``: v / 255 > 0.5
===================  ===================================  =====================================

The layout is detected from the image and edge file types of the first training id. Normals are
re-normalised to unit length; a vector is invalid (stored all-zero) when its decoded length is
below 0.5 or above 1.5 (the all-zero vector of MTL-PT, and an encoded 0 or 128 byte triple in a
PNG: ``(-1, -1, -1)`` has length 1.73, ``(0, 0, 0)`` length 0). Their axis convention is the one of
the source files (recorded in the file attr ``normals_convention``). ``index`` is the id as an
integer when every id is numeric, else the 1-based position of the id in its split list.

Also holds the small helpers the raw converters (:mod:`mtlkit.data.nyud`,
:mod:`mtlkit.data.pascal`) share: input checks that raise :class:`DataError` naming the file,
image readers and the rich progress bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.errors import ConfigError, DataError

IGNORE = 255

#: NYUD-v2 40-class names (``className`` of ``classMapping40.mat``, with its spelling).
NYU40_CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)

NYUD_TASKS = ("semseg", "depth", "normals", "edge")

# layout name -> (image ext, normals ext, edge ext, human name)
_LAYOUTS: dict[str, tuple[str, str, str, str]] = {
    "mtlpt": (".jpg", ".npy", ".npy", "MTL-PT NYUD_MT"),
    "atrc": (".png", ".png", ".png", "ATRC/InvPT NYUDv2"),
}


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def require_file(path: str | os.PathLike[str], what: str, fix: str | None = None) -> Path:
    """``path`` as a Path; :class:`DataError` naming ``what`` when it is missing or a folder."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {p} not found", fix or "check the path")
    if p.is_dir():
        raise DataError(f"{what} {p} is a folder, expected a file", fix or "check the path")
    return p


def require_dir(path: str | os.PathLike[str], what: str, fix: str | None = None) -> Path:
    """``path`` as a Path; :class:`DataError` naming ``what`` when it is not a folder."""
    p = Path(path)
    if not p.is_dir():
        state = "is a file, expected a folder" if p.exists() else "not found"
        raise DataError(f"{what} {p} {state}", fix or "check the path")
    return p


def check_out_path(out: str | os.PathLike[str]) -> Path:
    """The output path, or :class:`ConfigError` when it is a folder."""
    p = Path(out)
    if p.is_dir():
        raise ConfigError(f"output {p} is a folder", "pass a file name such as data/nyud.h5")
    return p


def file_digest(path: Path, limit: int = 64 << 20) -> dict[str, Any]:
    """``{"name", "bytes", "sha256"}`` of a file (sha256 only for files up to ``limit`` bytes)."""
    size = path.stat().st_size
    info: dict[str, Any] = {"name": path.name, "bytes": size}
    if size <= limit:
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return info


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; :class:`DataError` when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({e})", "replace the corrupt file") from e


def read_png(path: Path) -> np.ndarray:
    """A PNG as stored: (H, W) for grey / palette images (palette indices), (H, W, C) else."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im).copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({e})", "replace the corrupt file") from e


def read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array; :class:`DataError` when it is corrupt."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read array {path} ({e})", "replace the corrupt file") from e


def read_id_list(path: Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a split list; :class:`DataError` when empty or duplicated."""
    ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise DataError(f"{what} {path} lists no images", "check the file")
    seen: set[str] = set()
    dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if dups:
        raise DataError(f"{what} {path} lists {dups[0]!r} twice", "remove the duplicate lines")
    return ids


def read_split_lists(list_dir: Path, fix: str, limit: int | None = None) -> dict[str, list[str]]:
    """``train.txt`` and ``val.txt`` of ``list_dir`` (:func:`read_id_list`, first ``limit`` ids
    of each); :class:`DataError` when a file is missing or the two splits share an id."""
    splits: dict[str, list[str]] = {}
    for split in ("train", "val"):
        ids = read_id_list(require_file(list_dir / f"{split}.txt", "split list", fix), "split list")
        splits[split] = ids[:limit] if limit else ids
    overlap = set(splits["train"]) & set(splits["val"])
    if overlap:
        raise DataError(f"{list_dir}: id {sorted(overlap)[0]!r} is in both train.txt and val.txt",
                        "the splits must be disjoint")
    return splits


def check_shape(arr: np.ndarray, shape: tuple[int, ...], path: Path, what: str) -> None:
    """:class:`DataError` when ``arr.shape != shape``."""
    if arr.shape != shape:
        raise DataError(f"{what} {path} has shape {arr.shape}, expected {shape}",
                        "all files of one sample must have the image's size")


def labels_40(raw: np.ndarray, path: Path) -> np.ndarray:
    """NYUD 41-value label image (0 unlabelled, 1..40) -> 0..39 with 0 -> 255 (uint8)."""
    if raw.ndim == 3:
        raw = raw[..., 0]
    raw = raw.astype(np.int64)
    if raw.size and (raw.min() < 0 or raw.max() > 40):
        raise DataError(f"segmentation {path} has labels outside 0..40 (max {int(raw.max())})",
                        "expected the 40-class NYUD labels with 0 = unlabelled")
    return np.where(raw == 0, IGNORE, raw - 1).astype(np.uint8)


def unit_normals(n: np.ndarray) -> np.ndarray:
    """(H, W, 3) vectors -> unit float32; lengths outside [0.5, 1.5] or non-finite -> 0."""
    n = n.astype(np.float64)
    length = np.linalg.norm(n, axis=-1)
    ok = np.isfinite(length) & (length >= 0.5) & (length <= 1.5)
    out = np.zeros_like(n)
    out[ok] = n[ok] / length[ok][:, None]
    return out.astype(np.float32)


def clean_depth(d: np.ndarray) -> np.ndarray:
    """Depth in metres as float32 with non-finite and non-positive values set to 0 (invalid)."""
    d = d.astype(np.float32)
    return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Any]:
    """A progress bar on stderr (plain lines in logs); yields ``advance()`` (a no-op when
    ``enabled`` is False). See :func:`mtlkit.utils.progress_bar`."""
    from mtlkit.utils import progress_bar as _bar

    with _bar(total, description, enabled) as advance:
        yield advance


def numeric_index(ids: Sequence[str]) -> list[int]:
    """ids as integers when they all are digits, else their 1-based positions."""
    if all(i.isdigit() for i in ids):
        return [int(i) for i in ids]
    return list(range(1, len(ids) + 1))


# ---------------------------------------------------------------------------------------------
# NYUD prepared folders
# ---------------------------------------------------------------------------------------------
def detect_nyud_layout(root: Path) -> str:
    """``"mtlpt"`` (``NYUD_MT/``) or ``"atrc"`` (``NYUDv2/``) from the files under ``root``."""
    root = require_dir(root, "NYUD folder",
                       "pass the NYUD_MT/ (MTL-PT) or NYUDv2/ (ATRC/InvPT) folder")
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        require_dir(root / sub, "NYUD sub-folder",
                    "expected the MTL-PT NYUD_MT/ or ATRC/InvPT NYUDv2/ layout")
    train_list = require_file(root / "gt_sets" / "train.txt", "split list")
    first = read_id_list(train_list, "split list")[0]
    for name, (img_ext, _, edge_ext, _) in _LAYOUTS.items():
        if (root / "images" / f"{first}{img_ext}").is_file() and \
                (root / "edge" / f"{first}{edge_ext}").is_file():
            return name
    raise DataError(f"cannot tell the layout of {root}: neither images/{first}.jpg + "
                    f"edge/{first}.npy (MTL-PT NYUD_MT) nor images/{first}.png + "
                    f"edge/{first}.png (ATRC/InvPT NYUDv2) exist",
                    "pass one of those folders unchanged")


def _read_folder_sample(root: Path, layout: str, sid: str) -> dict[str, np.ndarray]:
    img_ext, nrm_ext, edge_ext, _ = _LAYOUTS[layout]
    f_img = require_file(root / "images" / f"{sid}{img_ext}", "image")
    image = read_rgb(f_img)
    h, w = image.shape[:2]

    f_seg = require_file(root / "segmentation" / f"{sid}.png", "segmentation")
    seg = read_png(f_seg)
    semseg = labels_40(seg, f_seg)
    check_shape(semseg, (h, w), f_seg, "segmentation")

    f_dep = require_file(root / "depth" / f"{sid}.npy", "depth")
    depth = read_npy(f_dep)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    check_shape(depth, (h, w), f_dep, "depth")

    f_nrm = require_file(root / "normals" / f"{sid}{nrm_ext}", "normals")
    if nrm_ext == ".npy":
        raw_n = read_npy(f_nrm).astype(np.float64)
    else:
        raw_n = read_png(f_nrm).astype(np.float64)
        if raw_n.ndim == 3 and raw_n.shape[-1] == 4:
            raw_n = raw_n[..., :3]
        raw_n = 2.0 * raw_n / 255.0 - 1.0
    check_shape(raw_n, (h, w, 3), f_nrm, "normals")

    f_edge = require_file(root / "edge" / f"{sid}{edge_ext}", "edge")
    if edge_ext == ".npy":
        e = read_npy(f_edge).astype(np.float64)
    else:
        e = read_png(f_edge).astype(np.float64) / 255.0
    if e.ndim == 3:
        e = e[..., 0]
    check_shape(e, (h, w), f_edge, "edge")

    return {"image": image, "semseg": semseg, "depth": clean_depth(depth),
            "normals": unit_normals(raw_n), "edge": (e > 0.5).astype(np.uint8)}


def convert_nyud_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import a prepared NYUD folder (``NYUD_MT/`` or ``NYUDv2/``, auto-detected) into ``out``.

    Args:
        root: the dataset folder (with ``images/``, ``segmentation/``, ``depth/``,
            ``normals/``, ``edge/``, ``gt_sets/``).
        out: output ``.h5`` (written atomically; no file on error).
        limit: keep only the first ``limit`` ids of each split list (quick tries).
        progress: show a rich progress bar.

    Returns:
        summary ``{"out", "layout", "splits": {split: n}, "size": (H, W)}``.

    Raises:
        DataError: missing folder/file, undecodable file, sizes that disagree, bad labels.
    """
    from mtlkit.data.h5 import H5Writer

    root = Path(root)
    out = check_out_path(out)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    layout = detect_nyud_layout(root)
    splits = read_split_lists(root / "gt_sets",
                              "the folder must hold gt_sets/train.txt and gt_sets/val.txt", limit)
    first = _read_folder_sample(root, layout, splits["train"][0])
    size = first["image"].shape[:2]
    convention = (f"as provided by {_LAYOUTS[layout][3]} (unchanged, re-normalised); "
                  "all-zero = invalid")
    attrs = {
        "semseg_class_names": list(NYU40_CLASS_NAMES),
        "normals_convention": convention,
        "source": {"format": _LAYOUTS[layout][3], "root": str(root.resolve()),
                   "limit": limit, "n": {k: len(v) for k, v in splits.items()}},
    }
    total = sum(len(v) for v in splits.values())
    with H5Writer(out, dataset="nyud", tasks=list(NYUD_TASKS), size=size, attrs=attrs) as w, \
            progress_bar(total, f"NYUD ({_LAYOUTS[layout][3]})", progress) as advance:
        for split, ids in splits.items():
            w.add_split(split, len(ids))
            for i, (sid, index) in enumerate(zip(ids, numeric_index(ids), strict=True)):
                s = first if (split == "train" and i == 0) else \
                    _read_folder_sample(root, layout, sid)
                if s["image"].shape[:2] != size:
                    raise DataError(f"image {sid} of {root} has size {s['image'].shape[:2]}, "
                                    f"the first one {size}",
                                    "all images of the folder must share one size")
                s["index"] = index
                w.write(split, i, s)
                advance()
    return {"out": str(out), "layout": layout, "splits": {k: len(v) for k, v in splits.items()},
            "size": tuple(size)}
