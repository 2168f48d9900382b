"""Datasets: the preprocessed HDF5 layout, joint transforms, geometry helpers, synthetic scenes.

Registered datasets (``mtlkit.registry.DATASETS``), each built by
``builder(path, split, tasks, size, train, augment=None) -> MultiTaskH5Dataset``:

- ``synthetic-nyud``: the built-in synthetic scenes with NYUD's tasks (semseg, depth, normals,
  edge); the file is rendered into the cache on first use when ``path`` is None.
- ``synthetic-pascal``: the same scenes with PASCAL's tasks (semseg, parts, saliency, normals,
  edge).
- ``nyud``: NYUD-v2 (``mtlkit preprocess nyud``), 480x640, 40 classes.
- ``pascal``: PASCAL-Context multi-task (``mtlkit preprocess pascal``), 512x512, samples padded
  to the file size with their valid size in ``hw``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import default_collate

from mtlkit.data.geometry import boundaries, normals_from_depth
from mtlkit.data.h5 import H5Writer, MultiTaskH5Dataset, read_attrs
from mtlkit.data.synthetic import (
    build_synthetic_h5,
    default_synthetic_path,
    ensure_synthetic,
    render_scene,
)
from mtlkit.data.transforms import EvalTransform, TrainTransform, build_transform
from mtlkit.errors import ConfigError, DataError, UnknownNameError
from mtlkit.registry import DATASETS

__all__ = [
    "DATASET_INFO", "EvalTransform", "H5Writer", "MultiTaskH5Dataset", "TrainTransform",
    "boundaries", "build_dataset", "build_synthetic_h5", "build_transform", "collate",
    "dataset_info", "default_synthetic_path", "ensure_synthetic", "normals_from_depth",
    "read_attrs", "render_scene",
]

_NYUD_TASKS = ["semseg", "depth", "normals", "edge"]
_PASCAL_TASKS = ["semseg", "parts", "saliency", "normals", "edge"]

#: Static facts per dataset: tasks, default (H, W), boundary tolerance (SEISM maxDist as a
#: fraction of the image diagonal), default augmentation preset, class counts, and the
#: ``mtlkit preprocess`` subcommand that creates its file.
DATASET_INFO: dict[str, dict[str, Any]] = {
    "synthetic-nyud": {"tasks": _NYUD_TASKS, "default_size": (128, 160),
                       "edge_max_dist": 0.011, "augment": "mtlpt",
                       "num_classes": {"semseg": 9}, "preprocess": "synthetic"},
    "synthetic-pascal": {"tasks": _PASCAL_TASKS, "default_size": (128, 160),
                         "edge_max_dist": 0.0075, "augment": "pascal",
                         "num_classes": {"semseg": 9, "parts": 7}, "preprocess": "synthetic"},
    "nyud": {"tasks": _NYUD_TASKS, "default_size": (480, 640), "edge_max_dist": 0.011,
             "augment": "mtlpt", "num_classes": {"semseg": 40}, "preprocess": "nyud"},
    "pascal": {"tasks": _PASCAL_TASKS, "default_size": (512, 512), "edge_max_dist": 0.0075,
               "augment": "pascal", "num_classes": {"semseg": 21, "parts": 7},
               "preprocess": "pascal"},
}


def dataset_info(name: str) -> dict[str, Any]:
    """A copy of :data:`DATASET_INFO` ``[name]``: ``tasks``, ``default_size`` (H, W),
    ``edge_max_dist``, ``augment``, ``num_classes``, ``preprocess``."""
    if name not in DATASET_INFO:
        raise UnknownNameError(f"unknown dataset {name!r}",
                               f"choose one of: {', '.join(sorted(DATASET_INFO))}")
    return copy.deepcopy(DATASET_INFO[name])


def _build(name: str, path: str | Path | None, split: str, tasks: Sequence[str] | None,
           size: Sequence[int] | None, train: bool, augment: str | None) -> MultiTaskH5Dataset:
    info = DATASET_INFO[name]
    tasks = list(tasks) if tasks else list(info["tasks"])
    bad = [t for t in tasks if t not in info["tasks"]]
    if bad:
        raise ConfigError(f"dataset {name} has no task {', '.join(bad)}",
                          f"choose tasks among: {', '.join(info['tasks'])}")
    hw = (int(size[0]), int(size[1])) if size else tuple(info["default_size"])
    transform = build_transform(augment or info["augment"], hw, train)
    cmd = f"mtlkit preprocess {info['preprocess']}"
    if path is None:
        if info["preprocess"] != "synthetic":
            raise DataError(f"dataset {name} needs the path of its preprocessed .h5 file",
                            f"create it with `{cmd}` and pass its path (data.path / --data-path)")
        path = ensure_synthetic()
    elif not Path(path).exists():
        raise DataError(f"dataset file {path} not found",
                        f"create it with `{cmd}` or fix the path")
    return MultiTaskH5Dataset(path, split, tasks, transform)


@DATASETS.register("synthetic-nyud")
def synthetic_nyud(path: str | Path | None = None, split: str = "train",
                   tasks: Sequence[str] | None = None, size: Sequence[int] | None = None,
                   train: bool = False, augment: str | None = None) -> MultiTaskH5Dataset:
    """Synthetic indoor scenes with NYUD's tasks (semseg 9 classes, depth, normals, edge)."""
    return _build("synthetic-nyud", path, split, tasks, size, train, augment)


@DATASETS.register("synthetic-pascal")
def synthetic_pascal(path: str | Path | None = None, split: str = "train",
                     tasks: Sequence[str] | None = None, size: Sequence[int] | None = None,
                     train: bool = False, augment: str | None = None) -> MultiTaskH5Dataset:
    """Synthetic scenes with PASCAL's tasks (semseg, parts, saliency, normals, edge)."""
    return _build("synthetic-pascal", path, split, tasks, size, train, augment)


@DATASETS.register("nyud")
def nyud(path: str | Path | None = None, split: str = "train",
         tasks: Sequence[str] | None = None, size: Sequence[int] | None = None,
         train: bool = False, augment: str | None = None) -> MultiTaskH5Dataset:
    """NYUD-v2 (795 train / 654 val), 40 classes, from `mtlkit preprocess nyud`."""
    return _build("nyud", path, split, tasks, size, train, augment)


@DATASETS.register("pascal")
def pascal(path: str | Path | None = None, split: str = "train",
           tasks: Sequence[str] | None = None, size: Sequence[int] | None = None,
           train: bool = False, augment: str | None = None) -> MultiTaskH5Dataset:
    """PASCAL-Context multi-task (4998 train / 5105 val), from `mtlkit preprocess pascal`."""
    return _build("pascal", path, split, tasks, size, train, augment)


def build_dataset(name: str, path: str | Path | None = None, split: str = "train",
                  tasks: Sequence[str] | None = None, size: Sequence[int] | None = None,
                  train: bool = False, augment: str | None = None) -> MultiTaskH5Dataset:
    """Build the registered dataset ``name`` (see the module docstring)."""
    return DATASETS.get(name)(path=path, split=split, tasks=tasks, size=size, train=train,
                              augment=augment)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Default-collate the tensors of a list of samples; ``meta`` becomes a dict of lists
    (``{"index": [int], "hw": [(h, w)], "split": [str]}``)."""
    metas = [b.get("meta", {}) for b in batch]
    out = default_collate([{k: v for k, v in b.items() if k != "meta"} for b in batch])
    out["meta"] = {k: [m[k] for m in metas] for k in (metas[0] if metas else {})}
    return out
