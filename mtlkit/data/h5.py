"""The preprocessed HDF5 layout: :class:`H5Writer` writes it, :class:`MultiTaskH5Dataset` reads it.

Layout (``shared/DESIGN.md``): groups ``train`` / ``val``; in each, datasets of equal length N:
``image`` (N, H, W, 3) uint8, ``semseg`` (N, H, W) uint8 (255 = ignore), ``depth`` (N, H, W)
float32 metres (0 = invalid), ``normals`` (N, H, W, 3) float32 (camera frame x right, y down,
z forward, facing the camera; all-zero = invalid), ``edge`` / ``parts`` / ``saliency`` (N, H, W)
uint8 (255 = ignore), ``index`` (N,) int64 and ``hw`` (N, 2) int32 (the valid, unpadded size of
each sample; everything outside it is padding: image 0, labels 255, depth/normals 0).
Every dataset is chunked one sample per chunk and compressed. File attrs: ``dataset``, ``tasks``,
``<task>_class_names`` (semseg, parts), ``normals_convention``, ``source`` (JSON string),
``mtlkit_version``, ``format_version`` (= 1), ``size`` (H, W).

Writers write ``<path>.tmp`` and rename it on success, so a crash never leaves a half file that
looks whole. HDF5 writes through a Python file object (:class:`_GuardedFile`) that records the
first failed write (full disk, file size limit, ...) and ignores later ones, so HDF5 never sees
an I/O error (it reports those from destructors, as tracebacks that cannot be caught, and may
crash on close); the writer then stops with one :class:`~mtlkit.errors.OutputError` and
removes the tmp file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from torch.utils.data import Dataset

from mtlkit.data.transforms import pad_to, to_tensors
from mtlkit.errors import DataError, OutputError

FORMAT_VERSION = 1
NORMALS_CONVENTION = "camera: x right, y down, z forward; towards camera"
ALL_TASKS = ("semseg", "depth", "normals", "edge", "parts", "saliency")
LABEL_TASKS = ("semseg", "parts")
PARTS_CLASS_NAMES = (
    "background", "head", "torso", "upper_arms", "lower_arms", "upper_legs", "lower_legs",
)
IGNORE = 255

# per task: (per-sample trailing shape after (H, W), numpy dtype, padding value)
_TASK_LAYOUT: dict[str, tuple[tuple[int, ...], type, float]] = {
    "image": ((3,), np.uint8, 0),
    "semseg": ((), np.uint8, IGNORE),
    "parts": ((), np.uint8, IGNORE),
    "edge": ((), np.uint8, IGNORE),
    "saliency": ((), np.uint8, IGNORE),
    "depth": ((), np.float32, 0.0),
    "normals": ((3,), np.float32, 0.0),
}


def mtlkit_version() -> str:
    """The installed mtlkit version (``"unknown"`` when neither the package nor metadata has it)."""
    try:
        from mtlkit import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("mtlkit")
    except (ImportError, PackageNotFoundError):
        return "unknown"


def _encode_attr(value: Any) -> Any:
    """Python value -> something h5py stores portably (dicts become JSON strings)."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return np.array(list(value), dtype=h5py.string_dtype())
    if isinstance(value, (list, tuple)) and not value:
        return np.array([], dtype=h5py.string_dtype())
    return value


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file attrs of a preprocessed HDF5 file as plain Python values.

    String arrays become ``list[str]``, numeric arrays lists, ``source`` stays a (JSON) string.
    Raises :class:`DataError` when the file is missing or not HDF5.
    """
    path = Path(path)
    _check_file(path)
    try:
        with h5py.File(path, "r") as f:
            return {k: _decode_attr(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise DataError(f"cannot read {path} ({e})",
                        "re-create it with `mtlkit preprocess ...`") from e


class H5Writer:
    """Write a dataset in the mtlkit HDF5 layout, atomically.

    Usage::

        with H5Writer(out, dataset="nyud", tasks=["semseg", "depth"], size=(480, 640),
                      attrs={"semseg_class_names": names, "source": {...}}) as w:
            w.add_split("train", 795)
            for i, s in enumerate(samples):
                w.write("train", i, s)   # s: {"image": (h,w,3) uint8, "semseg": (h,w), ...}

    The file is written to ``<path>.tmp`` and renamed to ``path`` when the ``with`` block ends
    without an exception and every sample of every split has been written; otherwise the tmp file
    is deleted and no file appears at ``path``.

    Args:
        path: final file path.
        dataset: dataset name stored in the ``dataset`` attr.
        tasks: task names (subset of ``semseg, depth, normals, edge, parts, saliency``).
        size: (H, W) shared by all samples; smaller samples are padded (bottom/right) and their
            ``hw`` records the valid size.
        attrs: extra file attrs; must contain ``semseg_class_names`` when ``semseg`` is a task
            (``parts_class_names`` defaults to the 7 PASCAL part groups). ``source`` may be a dict
            (stored as JSON).
        compression: h5py compression filter (``"gzip"`` level 1 or ``"lzf"``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dataset: str,
        tasks: Sequence[str],
        size: tuple[int, int],
        attrs: dict[str, Any] | None = None,
        compression: str = "gzip",
    ) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.dataset = dataset
        self.tasks = list(tasks)
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"bad task list {self.tasks}; tasks are {ALL_TASKS}")
        self.size = (int(size[0]), int(size[1]))
        self.attrs = dict(attrs or {})
        if "parts" in self.tasks:
            self.attrs.setdefault("parts_class_names", list(PARTS_CLASS_NAMES))
        for t in LABEL_TASKS:
            if t in self.tasks and not self.attrs.get(f"{t}_class_names"):
                raise ValueError(f"attrs must contain {t}_class_names for task {t}")
        self.num_classes = {t: len(self.attrs[f"{t}_class_names"]) for t in LABEL_TASKS
                            if t in self.tasks}
        self.compression = compression
        self._f: h5py.File | None = None
        self._written: dict[str, np.ndarray] = {}
        self._dsets: dict[str, dict[str, h5py.Dataset]] = {}
        self._fobj: _GuardedFile | None = None

    # context manager -------------------------------------------------------------------------
    def __enter__(self) -> H5Writer:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fobj = _GuardedFile(self.tmp_path)
            self._f = h5py.File(self._fobj, "w")
            self._write_attrs()
            self._raise_io_error()
        except BaseException as e:
            f, self._f = self._f, None
            self._remove_tmp(f)
            err = self._io_error() or _as_os_error(e)
            if err is not None:
                raise OutputError.from_os_error(self.path, err) from None
            raise
        return self

    def _write_attrs(self) -> None:
        assert self._f is not None
        attrs: dict[str, Any] = {
            "dataset": self.dataset,
            "tasks": self.tasks,
            "normals_convention": NORMALS_CONVENTION,
            "source": "",
            "mtlkit_version": mtlkit_version(),
            "format_version": FORMAT_VERSION,
            "size": np.array(self.size, dtype=np.int32),
        }
        attrs.update(self.attrs)
        for k, v in attrs.items():
            self._f.attrs[k] = _encode_attr(v)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        f, self._f = self._f, None
        self._dsets = {}
        if exc_type is not None:
            self._remove_tmp(f)
            return
        try:
            missing = {s: int((~w).sum()) for s, w in self._written.items() if not w.all()}
            if missing:
                raise RuntimeError(f"H5Writer: samples never written (split: count): {missing}")
            if f is not None:
                f.close()
            if self._fobj is not None:
                self._fobj.close()
            self._raise_io_error()
            os.replace(self.tmp_path, self.path)
        except BaseException as e:
            self._remove_tmp(f)
            err = self._io_error() or _as_os_error(e)
            if err is not None:
                raise OutputError.from_os_error(self.path, err) from None
            raise

    def _remove_tmp(self, f: h5py.File | None) -> None:
        for close in (getattr(f, "close", None), getattr(self._fobj, "close", None)):
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort cleanup
                    pass
        try:
            self.tmp_path.unlink(missing_ok=True)
        except OSError:
            pass

    def _io_error(self) -> OSError | None:
        return self._fobj.error if self._fobj is not None else None

    def _raise_io_error(self) -> None:
        err = self._io_error()
        if err is not None:
            raise OutputError.from_os_error(self.path, err)

    # writing ---------------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._f is None:
            raise RuntimeError("H5Writer must be used as a context manager (`with H5Writer(...)`)")
        return self._f

    def add_split(self, name: str, n: int) -> None:
        """Create the datasets of split ``name`` holding ``n`` samples."""
        f = self._file()
        if name in f:
            raise ValueError(f"split {name!r} added twice")
        g = f.create_group(name)
        h, w = self.size
        opts: dict[str, Any] = {"compression": self.compression}
        if self.compression == "gzip":
            opts["compression_opts"] = 1
        for key in ["image", *self.tasks]:
            trail, dtype, fill = _TASK_LAYOUT[key]
            shape = (n, h, w, *trail)
            g.create_dataset(key, shape=shape, dtype=dtype, chunks=(1, h, w, *trail),
                             fillvalue=fill, shuffle=dtype == np.float32, **opts)
        g.create_dataset("index", shape=(n,), dtype=np.int64)
        g.create_dataset("hw", shape=(n, 2), dtype=np.int32)
        self._written[name] = np.zeros(n, dtype=bool)
        self._dsets[name] = {k: g[k] for k in ["image", *self.tasks, "index", "hw"]}

    def write(self, split: str, i: int, sample: dict[str, Any]) -> None:
        """Write sample ``i`` of ``split``.

        ``sample``: ``image`` (h, w, 3) uint8, each task in its DESIGN dtype/shape at (h, w)
        with h <= H, w <= W, optional ``index`` (int, default i) and ``hw`` (default (h, w));
        smaller samples are padded bottom/right with 0 (image, depth, normals) or 255 (labels).
        """
        self._file()
        if split not in self._dsets:
            raise KeyError(f"split {split!r} not added; call add_split first")
        g = self._dsets[split]
        n = len(self._written[split])
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range for split {split!r} of size {n}")
        image = np.asarray(sample["image"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        H, W = self.size
        if h > H or w > W:
            raise ValueError(f"sample {i} of size {(h, w)} larger than the file size {self.size}")
        for key in ["image", *self.tasks]:
            if key not in sample:
                raise KeyError(f"sample {i} of {split!r} lacks {key!r}")
            trail, dtype, fill = _TASK_LAYOUT[key]
            arr = np.asarray(sample[key])
            if arr.shape != (h, w, *trail):
                raise ValueError(f"{key} of sample {i} has shape {arr.shape}, "
                                 f"expected {(h, w, *trail)}")
            if dtype == np.uint8:
                if arr.dtype.kind not in "ub" and not (arr.dtype.kind == "i" and arr.min() >= 0):
                    raise ValueError(f"{key} must be a non-negative integer map, got {arr.dtype}")
                if arr.size and arr.max() > 255:
                    raise ValueError(f"{key} of sample {i} has values > 255")
                arr = arr.astype(np.uint8, copy=False)
                if key in self.num_classes:
                    bad = (arr >= self.num_classes[key]) & (arr != IGNORE)
                    if bad.any():
                        raise ValueError(f"{key} of sample {i} has ids >= "
                                         f"{self.num_classes[key]} other than {IGNORE}")
                if key in ("edge", "saliency") and not ((arr <= 1) | (arr == IGNORE)).all():
                    raise ValueError(f"{key} of sample {i} must hold only 0, 1 or 255")
            else:
                arr = arr.astype(dtype, copy=False)
                if not np.isfinite(arr).all():
                    raise ValueError(f"{key} of sample {i} has non-finite values")
            if (h, w) != (H, W):
                full = np.full((H, W, *trail), fill, dtype=dtype)
                full[:h, :w] = arr
                arr = full
            try:
                g[key][i] = arr
            except (OSError, RuntimeError) as e:
                err = self._io_error() or _as_os_error(e)
                if err is None:
                    raise
                raise OutputError.from_os_error(self.path, err) from None
        g["index"][i] = int(sample.get("index", i))
        hw = sample.get("hw", (h, w))
        g["hw"][i] = np.asarray(hw, dtype=np.int32)
        self._written[split][i] = True
        self._raise_io_error()


class _GuardedFile:
    """A binary file for h5py's ``fileobj`` driver that never raises on writing.

    The first failed write, flush or truncate is kept in :attr:`error`; from then on writes
    are dropped (the file is discarded anyway). Reads pass through.
    """

    def __init__(self, path: Path) -> None:
        # unbuffered: a failing write raises in write(), never later in seek() or close()
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def _guard(self, op: Callable[[], Any], default: Any) -> Any:
        if self.error is not None:
            return default
        try:
            return op()
        except OSError as e:
            self.error = e
            return default

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")

        def write_all() -> int:
            done = 0
            while done < len(view):  # a raw write may be partial
                done += self._f.write(view[done:]) or 0
            return done

        return self._guard(write_all, len(view))

    def truncate(self, size: int | None = None) -> int:
        return self._guard(lambda: self._f.truncate(size), size or 0)

    def flush(self) -> None:
        self._guard(self._f.flush, None)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, buf: Any) -> int:
        return self._f.readinto(buf)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._guard(lambda: self._f.seek(offset, whence), offset)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        if not self._f.closed:
            self._guard(self._f.close, None)


def _as_os_error(e: BaseException) -> OSError | None:
    """The ``OSError`` behind an exception of a failed HDF5 write, else None.

    h5py raises ``OSError`` with the errno for driver write failures, and ``RuntimeError``
    with ``errno = N`` in its message for failed flushes.
    """
    if isinstance(e, OSError) and e.errno:
        return OSError(e.errno, os.strerror(e.errno))
    m = re.search(r"errno = (\d+)", str(e))
    if isinstance(e, (OSError, RuntimeError)) and m and int(m.group(1)):
        n = int(m.group(1))
        return OSError(n, os.strerror(n))
    return None


# reading ---------------------------------------------------------------------------------------
def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"dataset file {path} not found",
                        "create it with `mtlkit preprocess <synthetic|nyud|pascal>` "
                        "or pass the right --path")
    if path.is_dir():
        raise DataError(f"dataset path {path} is a directory, not an HDF5 file",
                        "pass the .h5 file written by `mtlkit preprocess`")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an HDF5 file (corrupt or wrong file)",
                        "re-create it with `mtlkit preprocess ...`")


def _validate(f: h5py.File, path: Path, split: str, tasks: list[str] | None,
              ) -> tuple[list[str], dict[str, int], tuple[int, int], int]:
    """Check layout and a few samples; return (tasks, num_classes, (H, W), N)."""
    fix = "re-create it with `mtlkit preprocess ...`"
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise DataError(f"{path} has format_version {version}, newer than this mtlkit reads "
                        f"({FORMAT_VERSION})", "upgrade mtlkit")
    file_tasks = [t for t in _decode_attr(f.attrs.get("tasks", [])) if t in ALL_TASKS]
    splits = sorted(k for k in f.keys() if isinstance(f[k], h5py.Group))
    if split not in f or not isinstance(f[split], h5py.Group):
        raise DataError(f"{path} has no split {split!r} (it has: {', '.join(splits) or 'none'})",
                        "use one of those splits")
    g = f[split]
    if tasks is None:
        tasks = file_tasks
    for t in tasks:
        if t not in ALL_TASKS:
            raise DataError(f"unknown task {t!r}", f"choose from: {', '.join(ALL_TASKS)}")
        if t not in g:
            raise DataError(f"{path} split {split!r} has no task {t!r} "
                            f"(it has: {', '.join(file_tasks) or 'none'})",
                            "choose tasks the file has or re-create it with that task")
    if "image" not in g:
        raise DataError(f"{path} split {split!r} has no image dataset", fix)
    img = g["image"]
    if img.ndim != 4 or img.shape[3] != 3:
        raise DataError(f"{path} {split}/image has shape {img.shape}, expected (N, H, W, 3)", fix)
    n, H, W = img.shape[:3]
    for key in [*tasks, "index", "hw"]:
        if key not in g:
            raise DataError(f"{path} split {split!r} lacks the {key!r} dataset", fix)
        d = g[key]
        if key == "index":
            expect: tuple[int, ...] = (n,)
        elif key == "hw":
            expect = (n, 2)
        else:
            expect = (n, H, W, *_TASK_LAYOUT[key][0])
        if d.shape != expect:
            raise DataError(f"{path} {split}/{key} has shape {d.shape} but {split}/image has "
                            f"{img.shape} (expected {expect}); lengths or sizes are inconsistent",
                            fix)
    num_classes: dict[str, int] = {}
    for t in tasks:
        if t in LABEL_TASKS:
            names = _decode_attr(f.attrs.get(f"{t}_class_names", []))
            if not names:
                if t == "parts":
                    names = list(PARTS_CLASS_NAMES)
                else:
                    raise DataError(f"{path} lacks the {t}_class_names attr", fix)
            num_classes[t] = len(names)
    hw = g["hw"][()]
    if n and ((hw < 1).any() or (hw[:, 0] > H).any() or (hw[:, 1] > W).any()):
        raise DataError(f"{path} {split}/hw holds sizes outside 1..{H} x 1..{W}", fix)
    # cheap value checks on a few samples
    for i in sorted({0, n // 2, n - 1} if n else set()):
        for t in tasks:
            a = g[t][i]
            if t in num_classes:
                bad = (a >= num_classes[t]) & (a != IGNORE)
                if bad.any():
                    raise DataError(f"{path} {split}/{t}[{i}] has class id {int(a[bad].max())} "
                                    f">= {num_classes[t]} classes (and not {IGNORE})", fix)
            elif t in ("edge", "saliency"):
                if not np.isin(a, (0, 1, IGNORE)).all():
                    raise DataError(f"{path} {split}/{t}[{i}] holds values other than 0/1/255",
                                    fix)
            elif t == "depth":
                if not np.isfinite(a).all() or (a < 0).any():
                    raise DataError(f"{path} {split}/depth[{i}] has negative or non-finite "
                                    "values", fix)
            elif t == "normals" and not np.isfinite(a).all():
                raise DataError(f"{path} {split}/normals[{i}] has non-finite values", fix)
    return list(tasks), num_classes, (int(H), int(W)), int(n)


Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class MultiTaskH5Dataset(Dataset):
    """A split of a preprocessed HDF5 file as a torch Dataset.

    The file is validated when the dataset is built (missing file, not HDF5, missing split or
    task, inconsistent lengths, out-of-range labels in a few samples -> :class:`DataError`); the
    h5py handle is opened lazily in the process that reads (so DataLoader workers each open
    their own) and is dropped when the dataset is pickled.

    A sample is ``{"image": float32 (3, H, W) ImageNet-normalised, "semseg"/"parts": int64 (H, W)
    255 = ignore, "depth": float32 (1, H, W) metres 0 = invalid, "normals": float32 (3, H, W)
    all-zero = invalid, "edge"/"saliency": float32 (1, H, W) 0/1/255, "meta": {"index": int,
    "hw": (h, w), "split": str}}``. ``meta["hw"]`` is the valid (unpadded) size in the returned
    tensors; outside it labels are 255, depth/normals 0.

    Args:
        path: HDF5 file written by :class:`H5Writer`.
        split: group name (``train`` / ``val``).
        tasks: tasks to return (default: all tasks of the file).
        transform: joint numpy transform (see :mod:`mtlkit.data.transforms`) mapping the sample
            cropped to its ``hw`` to a sample at the training size; ``None`` returns the stored
            (padded) arrays as they are.
    """

    def __init__(self, path: str | os.PathLike[str], split: str, tasks: Sequence[str] | None = None,
                 transform: Transform | None = None) -> None:
        self.path = Path(path)
        self.split = split
        _check_file(self.path)
        try:
            with h5py.File(self.path, "r") as f:
                self.tasks, self.num_classes, self.stored_size, self._n = _validate(
                    f, self.path, split, list(tasks) if tasks is not None else None)
                self.attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        except OSError as e:
            raise DataError(f"cannot read {self.path} ({e}); the file is corrupt or truncated",
                            "re-create it with `mtlkit preprocess ...`") from e
        self.transform = transform
        size = getattr(transform, "size", None)
        self.size: tuple[int, int] = tuple(size) if size is not None else self.stored_size
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._dsets: dict[str, h5py.Dataset] = {}

    @property
    def dataset_name(self) -> str:
        return str(self.attrs.get("dataset", ""))

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        state["_dsets"] = {}
        return state

    def _datasets(self) -> dict[str, h5py.Dataset]:
        """This process's open datasets of the split (opened on first use)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            g = self._h5[self.split]
            self._dsets = {k: g[k] for k in ["image", "hw", "index", *self.tasks]}
        return self._dsets

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next access)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._dsets = {}

    def read_numpy(self, i: int) -> tuple[dict[str, np.ndarray], int, tuple[int, int]]:
        """Raw stored arrays of sample ``i`` cropped to its ``hw``; returns (arrays, index, hw)."""
        if not -self._n <= i < self._n:
            raise IndexError(f"index {i} out of range for {self._n} samples")
        i = i % self._n
        g = self._datasets()
        h, w = (int(v) for v in g["hw"][i])
        out = {"image": g["image"][i, :h, :w]}
        for t in self.tasks:
            out[t] = g[t][i, :h, :w]
        return out, int(g["index"][i]), (h, w)

    def __getitem__(self, i: int) -> dict[str, Any]:
        arrays, index, hw = self.read_numpy(i)
        if self.transform is not None:
            arrays = self.transform(arrays)
            hw = tuple(int(v) for v in arrays.pop("hw", hw))
        else:
            arrays = pad_to(arrays, self.stored_size)
        sample = to_tensors(arrays)
        sample["meta"] = {"index": index, "hw": (int(hw[0]), int(hw[1])), "split": self.split}
        return sample

