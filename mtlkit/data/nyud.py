"""NYUD-v2 raw files -> the mtlkit HDF5 layout (``mtlkit preprocess nyud``).

Inputs (``shared/SPEC-data-eval.md``), all validated before anything is written:

- ``nyu_depth_v2_labeled.mat``: MATLAB v7.3 = HDF5 (a 512-byte userblock, then HDF5). h5py sees
  the MATLAB axes reversed: ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) float metres,
  ``labels`` (N, W, H) uint (0 unlabelled, 1..894 raw classes), ``instances`` (N, W, H) uint
  (object number within its raw class). Real file: N = 1449, W = 640, H = 480; any N, H, W is
  accepted (tests use small files). It is read one image at a time (one hyperslab per key), so
  peak memory is a few images' worth whatever the file size.
- ``splits.mat`` (MATLAB v5): ``trainNdxs`` / ``testNdxs``, 1-based indices into the N images
  (795 / 654 in the real file); they must be integers in 1..N, unique and disjoint.
- ``classMapping40.mat`` (MATLAB v5): ``mapClass`` (1 x 894) with values 1..K and ``className``
  (1 x K cell, K = 40).

Output: groups ``train`` (``trainNdxs``, in file order) and ``val`` (``testNdxs``); per sample

- ``image`` (H, W, 3) RGB = ``images[i].transpose(2, 1, 0)``; ``index`` = the 1-based index i;
- ``semseg``: ``label40 = ([0] + mapClass)[labels]``, then 0 -> 255 and 1..40 -> 0..39;
- ``depth``: ``depths`` in metres; non-finite or <= 0 -> 0 (invalid);
- ``normals``: from depth by :func:`mtlkit.data.geometry.normals_from_depth` (back-projection with
  the NYU RGB intrinsics, local least-squares plane fit over a 5x5 window, cross product of the
  two tangents, oriented towards the camera), all-zero where the depth or its window is invalid;
- ``edge``: :func:`mtlkit.data.geometry.boundaries` (4-neighbour label changes, both sides) of
  the 40-class map and of the object map; NYU numbers instances per raw class, so an object is
  the pair (raw class, instance) and the object map is ``labels * 256 + instances``; 255 where
  the pixel is unlabelled (semseg 255).

Intrinsics: NYU toolbox RGB camera (640 x 480) ``fx 518.8579, fy 519.4696, cx 325.5824,
cy 253.7362``, given for MATLAB's 1-based pixel coordinates; mtlkit uses 0-based pixel centres,
so ``cx0 = cx - 1``, ``cy0 = cy - 1``. For a file of another size (H, W) the camera is scaled:
``fx' = fx * W / 640``, ``fy' = fy * H / 480``, ``cx0' = (cx0 + 0.5) * W / 640 - 0.5`` (same for
y: pixel centres scale about the image corner). ``crop="eigen"`` keeps rows 45:471 and columns
41:601 of a 480 x 640 image (426 x 560; scaled by H / 480, W / 640 and rounded for other sizes)
and shifts the principal point by the crop's top-left corner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mtlkit.data.folders import (
    IGNORE,
    NYUD_TASKS,
    check_out_path,
    clean_depth,
    file_digest,
    progress_bar,
    require_file,
)
from mtlkit.errors import ConfigError, DataError

#: NYU toolbox RGB intrinsics (fx, fy, cx, cy) of 640 x 480 frames, 1-based pixel coordinates.
NYU_RGB_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)
NYU_SIZE = (480, 640)
#: The common valid crop (rows 45:471, cols 41:601) of a 480 x 640 NYU image.
EIGEN_CROP = (45, 471, 41, 601)
NUM_RAW_CLASSES = 894
CROPS = ("none", "eigen")
MAT_KEYS = ("images", "depths", "labels", "instances")
NORMALS_SMOOTH = 2

_FIX_MAT = ("pass nyu_depth_v2_labeled.mat (MATLAB v7.3) from "
            "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html")
_FIX_META = "pass the standard splits.mat / classMapping40.mat (see the README)"


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera in pixels with 0-based pixel centres (pixel (u, v) has centre (u, v))."""

    fx: float
    fy: float
    cx: float
    cy: float


def nyu_intrinsics(size: tuple[int, int], crop: str = "none") -> tuple[Intrinsics, tuple[int, ...]]:
    """NYU RGB intrinsics for a file of ``size`` (H, W) and the crop box (r0, r1, c0, c1).

    See the module docstring for the scaling and crop rules.
    """
    if crop not in CROPS:
        raise ConfigError(f"unknown crop {crop!r}", f"choose one of: {', '.join(CROPS)}")
    h, w = size
    sy, sx = h / NYU_SIZE[0], w / NYU_SIZE[1]
    fx, fy, cx, cy = NYU_RGB_INTRINSICS
    k = Intrinsics(fx * sx, fy * sy, (cx - 1 + 0.5) * sx - 0.5, (cy - 1 + 0.5) * sy - 0.5)
    if crop == "none":
        return k, (0, h, 0, w)
    r0, r1, c0, c1 = EIGEN_CROP
    box = (round(r0 * sy), round(r1 * sy), round(c0 * sx), round(c1 * sx))
    if box[1] - box[0] < 1 or box[3] - box[2] < 1:
        raise ConfigError(f"--crop eigen leaves nothing of a {h}x{w} image", "use --crop none")
    return Intrinsics(k.fx, k.fy, k.cx - box[2], k.cy - box[0]), box


# ---------------------------------------------------------------------------------------------
# MATLAB v5 metadata
# ---------------------------------------------------------------------------------------------
def _loadmat(path: Path, what: str) -> dict[str, Any]:
    import scipy.io as sio

    require_file(path, what, _FIX_META)
    try:
        return sio.loadmat(str(path))
    except NotImplementedError as e:  # v7.3 files
        raise DataError(f"{what} {path} is a MATLAB v7.3 file, expected MATLAB v5",
                        _FIX_META) from e
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on garbage
        raise DataError(f"cannot read {what} {path} as a MATLAB .mat file ({e})",
                        _FIX_META) from e


def _int_vector(m: dict[str, Any], key: str, path: Path, what: str) -> np.ndarray:
    if key not in m:
        keys = ", ".join(k for k in m if not k.startswith("__")) or "none"
        raise DataError(f"{what} {path} has no key {key!r} (keys: {keys})", _FIX_META)
    a = np.asarray(m[key])
    if a.dtype.kind not in "uif" or a.size == 0 or sum(d > 1 for d in a.shape) > 1:
        raise DataError(f"{what} {path} key {key!r} must be a non-empty numeric vector, got "
                        f"shape {a.shape} dtype {a.dtype}", _FIX_META)
    v = a.ravel()
    if a.dtype.kind == "f" and not (np.isfinite(v).all() and (v == np.round(v)).all()):
        raise DataError(f"{what} {path} key {key!r} holds non-integer values", _FIX_META)
    return v.astype(np.int64)


def read_splits(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``splits.mat`` -> ``{"train": trainNdxs, "val": testNdxs}`` (1-based int64, file order).

    Checks: keys present, integer vectors, each unique, the two disjoint, all >= 1 (the upper
    bound is checked against the image count by :func:`check_splits`).
    """
    path = Path(path)
    m = _loadmat(path, "splits file")
    out = {"train": _int_vector(m, "trainNdxs", path, "splits file"),
           "val": _int_vector(m, "testNdxs", path, "splits file")}
    for split, key in (("train", "trainNdxs"), ("val", "testNdxs")):
        v = out[split]
        if v.min() < 1:
            raise DataError(f"splits file {path} key {key!r} has index {int(v.min())} < 1; "
                            "indices are 1-based", _FIX_META)
        uniq, counts = np.unique(v, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"splits file {path} key {key!r} lists index "
                            f"{int(uniq[counts > 1][0])} twice", _FIX_META)
    both = np.intersect1d(out["train"], out["val"])
    if both.size:
        raise DataError(f"splits file {path}: trainNdxs and testNdxs overlap ({both.size} "
                        f"indices, e.g. {int(both[0])})", _FIX_META)
    return out


def check_splits(splits: dict[str, np.ndarray], n: int, path: str | os.PathLike[str]) -> None:
    """:class:`DataError` when a split index exceeds the ``n`` images of the .mat."""
    for split, key in (("train", "trainNdxs"), ("val", "testNdxs")):
        v = splits[split]
        if v.max() > n:
            raise DataError(f"splits file {path} key {key!r} has index {int(v.max())} but the "
                            f".mat holds {n} images", "use the splits.mat of this .mat file")


def _cell_strings(a: Any) -> list[str]:
    """A MATLAB cell array of strings (as scipy.io.loadmat returns it) -> list of str."""
    out = []
    for c in np.asarray(a, dtype=object).ravel():
        c = np.asarray(c)
        if c.dtype.kind == "U":
            out.append("".join(str(x) for x in c.ravel()))
        elif c.dtype.kind == "O" and c.size == 1:
            out.extend(_cell_strings(c))
        else:
            raise ValueError(f"cell entry of dtype {c.dtype} is not a string")
    return out


def read_class_mapping(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """``classMapping40.mat`` -> (lut, class names).

    ``lut`` (895,) uint8 maps a raw NYU label (0..894) to 0..K-1, with 0 (unlabelled) -> 255:
    ``lut = concat([255], mapClass - 1)``. Checks: ``mapClass`` has 894 entries in 1..K,
    ``className`` has K strings.
    """
    path = Path(path)
    m = _loadmat(path, "class mapping")
    mp = _int_vector(m, "mapClass", path, "class mapping")
    if mp.size != NUM_RAW_CLASSES:
        raise DataError(f"class mapping {path} key 'mapClass' has {mp.size} entries, expected "
                        f"{NUM_RAW_CLASSES} (one per raw NYU class)", _FIX_META)
    if "className" not in m:
        raise DataError(f"class mapping {path} has no key 'className'", _FIX_META)
    try:
        names = _cell_strings(m["className"])
    except ValueError as e:
        raise DataError(f"class mapping {path} key 'className' is not a cell array of "
                        f"strings ({e})", _FIX_META) from e
    k = len(names)
    if not 1 <= k <= 255 or mp.min() < 1 or mp.max() > k:
        raise DataError(f"class mapping {path}: 'mapClass' values span {int(mp.min())}.."
                        f"{int(mp.max())} but 'className' has {k} names", _FIX_META)
    lut = np.concatenate([[IGNORE], mp - 1]).astype(np.uint8)
    return lut, names


# ---------------------------------------------------------------------------------------------
# the labelled .mat (HDF5)
# ---------------------------------------------------------------------------------------------
class NyuMat:
    """Read-only view of ``nyu_depth_v2_labeled.mat``, one image at a time.

    Use as a context manager. ``len()`` images of ``size`` (H, W); :meth:`read` returns the
    1-based image ``i`` in (H, W) orientation. The constructor validates keys, shapes and dtypes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = require_file(path, "NYUD .mat", _FIX_MAT)
        if not h5py.is_hdf5(self.path):
            raise DataError(f"NYUD .mat {self.path} is not a MATLAB v7.3 (HDF5) file "
                            "(corrupt, truncated, or a different file)", _FIX_MAT)
        try:
            # a 32 MB chunk cache: enough for one image of the real file whatever its chunking
            self._f = h5py.File(self.path, "r", rdcc_nbytes=32 << 20)
        except OSError as e:
            raise DataError(f"cannot open NYUD .mat {self.path} ({e})", _FIX_MAT) from e
        try:
            self._validate()
        except BaseException:
            self._f.close()
            raise

    def _validate(self) -> None:
        f, p = self._f, self.path
        for key in MAT_KEYS:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"NYUD .mat {p} has no dataset {key!r} "
                                f"(has: {', '.join(sorted(f.keys())) or 'none'})", _FIX_MAT)
        img = f["images"]
        if img.ndim != 4 or img.shape[1] != 3 or img.dtype != np.uint8:
            raise DataError(f"NYUD .mat {p} key 'images' has shape {img.shape} dtype "
                            f"{img.dtype}, expected (N, 3, W, H) uint8", _FIX_MAT)
        n, _, w, h = img.shape
        if n == 0 or w == 0 or h == 0:
            raise DataError(f"NYUD .mat {p} key 'images' is empty {img.shape}", _FIX_MAT)
        kinds = {"depths": "f", "labels": "ui", "instances": "ui"}
        for key, kind in kinds.items():
            d = f[key]
            if d.shape != (n, w, h) or d.dtype.kind not in kind:
                expect = "float" if kind == "f" else "unsigned integer"
                raise DataError(f"NYUD .mat {p} key {key!r} has shape {d.shape} dtype "
                                f"{d.dtype}, expected ({n}, {w}, {h}) {expect} (matching "
                                "'images')", _FIX_MAT)
        self.n = int(n)
        self.size = (int(h), int(w))

    def __len__(self) -> int:
        return self.n

    def __enter__(self) -> NyuMat:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def read(self, i: int) -> dict[str, np.ndarray]:
        """Image ``i`` (1-based): ``image`` (H, W, 3) uint8, ``depth`` (H, W) float32,
        ``labels`` / ``instances`` (H, W) int64."""
        if not 1 <= i <= self.n:
            raise IndexError(f"image {i} out of 1..{self.n}")
        f, j = self._f, i - 1
        try:
            return {
                "image": np.ascontiguousarray(f["images"][j].transpose(2, 1, 0)),
                "depth": np.ascontiguousarray(f["depths"][j].T, dtype=np.float32),
                "labels": f["labels"][j].T.astype(np.int64),
                "instances": f["instances"][j].T.astype(np.int64),
            }
        except OSError as e:
            raise DataError(f"cannot read image {i} of NYUD .mat {self.path} ({e}); the file "
                            "is corrupt or truncated", _FIX_MAT) from e


def nyud_sample(raw: dict[str, np.ndarray], lut: np.ndarray, k: Intrinsics,
                box: tuple[int, ...]) -> dict[str, np.ndarray]:
    """One raw NYU image (from :meth:`NyuMat.read`) -> an HDF5 sample (see module docstring).

    Args:
        raw: ``image`` (H, W, 3), ``depth`` (H, W), ``labels`` / ``instances`` (H, W).
        lut: raw label -> 40-class lookup table from :func:`read_class_mapping`.
        k: intrinsics of the cropped image; box: crop (r0, r1, c0, c1).

    Raises:
        ValueError: a raw label exceeds the lookup table (the caller names the file).
    """
    from mtlkit.data.geometry import boundaries, normals_from_depth

    r0, r1, c0, c1 = box
    labels = raw["labels"][r0:r1, c0:c1]
    if labels.size and labels.max() >= lut.size:
        raise ValueError(f"raw label {int(labels.max())} > {lut.size - 1}")
    semseg = lut[labels]
    depth = clean_depth(raw["depth"][r0:r1, c0:c1])
    normals = normals_from_depth(depth, k.fx, k.fy, k.cx, k.cy, smooth=NORMALS_SMOOTH)
    objects = labels * 256 + raw["instances"][r0:r1, c0:c1]
    edge = boundaries([semseg, objects])
    edge[semseg == IGNORE] = IGNORE
    return {"image": np.ascontiguousarray(raw["image"][r0:r1, c0:c1]), "semseg": semseg,
            "depth": depth, "normals": normals, "edge": edge}


def convert_nyud(
    mat: str | os.PathLike[str],
    splits: str | os.PathLike[str],
    mapping: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    crop: str = "none",
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the raw NYUD-v2 files into ``out`` (HDF5 layout of DESIGN.md).

    Args:
        mat: ``nyu_depth_v2_labeled.mat``.
        splits: ``splits.mat`` (``trainNdxs`` -> ``train``, ``testNdxs`` -> ``val``).
        mapping: ``classMapping40.mat``.
        out: output ``.h5``; written to ``<out>.tmp`` and renamed at the end (no file on error).
        crop: ``"none"`` (full frame) or ``"eigen"`` (rows 45:471, cols 41:601).
        limit: keep only the first ``limit`` indices of each split (quick tries).
        progress: show a rich progress bar.

    Returns:
        summary ``{"out", "splits": {split: n}, "size": (H, W), "intrinsics": Intrinsics}``.

    Raises:
        DataError: a missing/corrupt input, key, shape, dtype, or an inconsistent split/mapping.
        ConfigError: a bad ``crop`` or ``limit``.
    """
    from mtlkit.data.h5 import H5Writer

    out = check_out_path(out)
    if crop not in CROPS:
        raise ConfigError(f"unknown crop {crop!r}", f"choose one of: {', '.join(CROPS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    split_idx = read_splits(splits)
    lut, names = read_class_mapping(mapping)
    with NyuMat(mat) as src:
        check_splits(split_idx, len(src), splits)
        k, box = nyu_intrinsics(src.size, crop)
        size = (box[1] - box[0], box[3] - box[2])
        if limit:
            split_idx = {s: v[:limit] for s, v in split_idx.items()}
        attrs = {
            "semseg_class_names": names,
            "source": {
                "format": "NYU Depth v2 labelled .mat",
                "mat": file_digest(src.path, limit=0),
                "splits": file_digest(Path(splits)),
                "mapping": file_digest(Path(mapping)),
                "crop": crop, "crop_box": list(box), "limit": limit,
                "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
                               "pixel_origin": "0-based pixel centres"},
                "normals": f"normals_from_depth plane fit, window {2 * NORMALS_SMOOTH + 1}",
                "edge": "boundaries of 40-class map and (raw class, instance) map; "
                        "255 where unlabelled",
                "n_mat": len(src),
            },
        }
        total = int(sum(v.size for v in split_idx.values()))
        with H5Writer(out, dataset="nyud", tasks=list(NYUD_TASKS), size=size, attrs=attrs) as w, \
                progress_bar(total, "NYUD-v2 .mat -> HDF5", progress) as advance:
            for split in ("train", "val"):
                idx = split_idx[split]
                w.add_split(split, int(idx.size))
                for i, index in enumerate(idx.tolist()):
                    raw = src.read(index)
                    try:
                        sample = nyud_sample(raw, lut, k, box)
                    except ValueError as e:
                        raise DataError(f"NYUD .mat {src.path} key 'labels' image {index}: {e} "
                                        f"but class mapping {mapping} 'mapClass' has "
                                        f"{lut.size - 1} entries",
                                        "use the classMapping40.mat of this dataset") from e
                    sample["index"] = index
                    w.write(split, i, sample)
                    advance()
    return {"out": str(out), "splits": {s: int(v.size) for s, v in split_idx.items()},
            "size": size, "intrinsics": k}
