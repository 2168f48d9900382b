"""Check a preprocessed HDF5 file against a run's configuration, before the first step.

Two checks, both raising :class:`~mtlkit.errors.DataError` with the file, split, task and
sample at fault:

- :func:`check_attrs` (cheap, every time): the file's attrs against the configured dataset:
  which dataset the file holds (``dataset`` attr: ``synthetic``, ``nyud`` or ``pascal``), its
  task list, the class count of every segmentation-like task, and that the ``size`` attr is the
  (H, W) of every split's images.
- :func:`scan_file` (the whole file, once): every label map of every split against the DESIGN
  contract: dtype (uint8 labels, float32 depth/normals), class ids ``< K`` or 255, boundary and
  saliency maps in {0, 1, 255}, depth finite and ``>= 0``, normals finite with components in
  [-1, 1]. It reads ``CHUNK`` samples at a time and tests them with whole-array numpy
  operations, so the 1000-image synthetic file takes about a second. Its result is remembered
  in ``<cache>/checked-files.json`` keyed by the file's absolute path, size and mtime
  (``<cache>`` = ``$MTLKIT_CACHE`` or ``~/.cache/mtlkit``), so a file is scanned once.

:func:`check_data` runs both for the tasks and splits of a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mtlkit.data.h5 import _TASK_LAYOUT, ALL_TASKS, IGNORE, LABEL_TASKS, _decode_attr, read_attrs
from mtlkit.errors import DataError

#: Samples read per step of the scan.
CHUNK = 64
#: Bump when the scan checks something new, so remembered results are re-computed.
SCAN_VERSION = 1
_CACHE_NAME = "checked-files.json"
_CACHE_ENTRIES = 64
_FIX = "re-create the file with `mtlkit preprocess ...` (or fix it at the source)"


def check_data(path: str | os.PathLike[str], dataset: str, tasks: Sequence[str],
               splits: Sequence[str] = ("train", "val"), *, progress: bool = True,
               console: Any = None) -> None:
    """:func:`check_attrs` and the remembered :func:`scan_file` result for ``tasks`` in
    ``splits``; DataError on the first problem."""
    p = Path(path)
    attrs = read_attrs(p)
    check_attrs(p, attrs, dataset, tasks)
    result = scan_cached(p, progress=progress, console=console)
    problems = [result.get(s, {}).get(t) for s in splits for t in tasks]
    problems = [m for m in problems if m]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more, _FIX)


def check_attrs(path: Path, attrs: dict[str, Any], dataset: str, tasks: Sequence[str]) -> None:
    """The file's attrs against the configured ``dataset`` and ``tasks``."""
    from mtlkit.data import DATASET_INFO, dataset_info

    info = dataset_info(dataset)
    family = info["preprocess"]
    held = str(attrs.get("dataset", "") or "")
    classes = {t: len(attrs.get(f"{t}_class_names") or []) for t in LABEL_TASKS
               if f"{t}_class_names" in attrs}
    if held and held != family:
        fits = sorted(n for n, i in DATASET_INFO.items() if i["preprocess"] == held)
        have = ", ".join(f"{t}: {k} classes" for t, k in classes.items())
        want = ", ".join(f"{t}: {k} classes" for t, k in info.get("num_classes", {}).items())
        raise DataError(
            f"{path} holds the {held!r} dataset{f' ({have})' if have else ''}, not {dataset!r}"
            f"{f' ({want})' if want else ''}",
            (f"use --dataset {' or '.join(fits)} with this file" if fits else
             "pass a file of that dataset") + f", or pass the file written by "
            f"`mtlkit preprocess {family}`")
    file_tasks = [t for t in attrs.get("tasks") or [] if t in ALL_TASKS]
    missing = [t for t in tasks if file_tasks and t not in file_tasks]
    if missing:
        raise DataError(f"{path} has no task(s) {', '.join(missing)} (it has: "
                        f"{', '.join(file_tasks)})", "choose tasks the file has")
    for t, k in info.get("num_classes", {}).items():
        if t in tasks and t in classes and classes[t] != k:
            raise DataError(f"{path} has {classes[t]} {t} classes but {dataset} has {k}",
                            f"pass the {dataset} file, or the --dataset this file was made for")
    size = attrs.get("size")
    if size is not None:
        with h5py.File(path, "r") as f:
            for split in (k for k in f if isinstance(f[k], h5py.Group) and "image" in f[k]):
                hw = tuple(int(v) for v in f[split]["image"].shape[1:3])
                if hw != tuple(int(v) for v in size):
                    raise DataError(f"{path} says its images are {size[0]}x{size[1]} (size "
                                    f"attr) but {split}/image holds {hw[0]}x{hw[1]}", _FIX)


def _bad_rows(task: str, a: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, str]:
    """Per sample of chunk ``a`` (n, H, W[, 3]): whether it breaks the contract, and how."""
    flat = a.reshape(a.shape[0], -1)
    if task in LABEL_TASKS:
        k = num_classes or 0
        bad = (flat >= k) & (flat != IGNORE)
        return bad.any(axis=1), f"class ids >= {k} (it has {k} classes; 255 = ignore)"
    if task in ("edge", "saliency"):
        return ((flat > 1) & (flat != IGNORE)).any(axis=1), "values other than 0, 1 and 255"
    if task == "depth":
        return (~np.isfinite(flat) | (flat < 0)).any(axis=1), "negative, NaN or inf depth"
    if task == "normals":
        return (~np.isfinite(flat) | (np.abs(flat) > 1.0 + 1e-3)).any(axis=1), \
            "NaN, inf or components outside [-1, 1]"
    return np.zeros(a.shape[0], dtype=bool), ""


def scan_file(path: str | os.PathLike[str], *, progress: bool = True,
              console: Any = None) -> dict[str, dict[str, str | None]]:
    """``{split: {task: None (fine) or the first problem}}`` over every sample of the file."""
    from mtlkit.utils import progress_bar

    p = Path(path)
    out: dict[str, dict[str, str | None]] = {}
    try:
        with h5py.File(p, "r") as f:
            classes = {t: len(_decode_attr(f.attrs.get(f"{t}_class_names", [])) or [])
                       for t in LABEL_TASKS}
            splits = [k for k in f if isinstance(f[k], h5py.Group) and "image" in f[k]]
            total = sum(int(f[s]["image"].shape[0]) for s in splits)
            with progress_bar(total, f"checking {p.name}", progress, console) as advance:
                for split in splits:
                    out[split] = _scan_split(p, f[split], split, classes, advance)
    except OSError as e:
        raise DataError(f"cannot read {p} ({e}); the file is corrupt or truncated", _FIX) from e
    return out


def _scan_split(path: Path, g: h5py.Group, split: str, classes: dict[str, int],
                advance: Any) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    n = int(g["image"].shape[0])
    live = []
    for t in [t for t in ALL_TASKS if t in g]:
        want = np.dtype(_TASK_LAYOUT[t][1])
        if g[t].dtype != want:
            result[t] = f"{path} {split}/{t} is {g[t].dtype}, not {want} as the layout requires"
        else:
            result[t] = None
            live.append(t)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        for t in list(live):
            bad, what = _bad_rows(t, g[t][lo:hi], classes.get(t))
            if bad.any():
                rows = lo + np.flatnonzero(bad)
                first = ", ".join(str(int(i)) for i in rows[:3])
                result[t] = (f"{path} {split}/{t} has {what} in sample {first}"
                             + (" ..." if rows.size > 3 else ""))
                live.remove(t)
        advance(hi - lo)
    return result


def _cache_file() -> Path:
    from mtlkit.data.synthetic import cache_dir

    return cache_dir() / _CACHE_NAME


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"v{SCAN_VERSION}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def scan_cached(path: Path, *, progress: bool = True,
                console: Any = None) -> dict[str, dict[str, str | None]]:
    """:func:`scan_file`, remembered per (path, size, mtime); the cache is best effort (an
    unwritable or corrupt cache only means scanning again)."""
    key = _file_key(path)
    cache = _read_cache()
    if key in cache and isinstance(cache[key], dict):
        return cache[key]
    result = scan_file(path, progress=progress, console=console)
    cache[key] = result
    while len(cache) > _CACHE_ENTRIES:
        cache.pop(next(iter(cache)))
    try:
        from mtlkit.utils import atomic_write_json

        atomic_write_json(_cache_file(), cache)
    except Exception:  # noqa: BLE001 - remembering the result is an optimisation only
        pass
    return result


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
