"""mtlkit.data.check: the whole-file label scan and its remembered result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mtlkit.data import check
from mtlkit.data.h5 import H5Writer
from mtlkit.errors import DataError

N = 2 * check.CHUNK + 6  # three chunks, the last one partial


def _file(path: Path, bad: dict[str, tuple[int, float]] | None = None) -> Path:
    """``N`` train / 3 val samples of 4x5 pixels; ``bad``: {task: (train index, value)}."""
    rng = np.random.default_rng(0)
    with H5Writer(path, dataset="synthetic", tasks=["semseg", "depth", "normals", "edge"],
                  size=(4, 5), attrs={"semseg_class_names": [str(i) for i in range(9)]}) as w:
        for split, n in (("train", N), ("val", 3)):
            w.add_split(split, n)
            for i in range(n):
                nrm = rng.normal(size=(4, 5, 3)).astype(np.float32)
                nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
                w.write(split, i, {
                    "image": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
                    "semseg": rng.integers(0, 9, (4, 5)).astype(np.uint8),
                    "depth": rng.uniform(0.5, 5, (4, 5)).astype(np.float32),
                    "normals": nrm, "edge": rng.integers(0, 2, (4, 5)).astype(np.uint8)})
    if bad:
        import h5py

        with h5py.File(path, "r+") as f:
            for task, (i, v) in bad.items():
                a = f["train"][task][i]
                a.reshape(-1)[0] = v
                f["train"][task][i] = a
    return path


@pytest.mark.parametrize("index", [0, 1, check.CHUNK - 1, check.CHUNK, N - 1])
@pytest.mark.parametrize(("task", "value"), [("semseg", 9), ("depth", np.nan), ("edge", 5),
                                             ("normals", -np.inf)])
def test_scan_finds_a_bad_value_in_any_sample(tmp_path: Path, index: int, task: str,
                                              value: float) -> None:
    path = _file(tmp_path / "f.h5", {task: (index, value)})
    result = check.scan_file(path, progress=False)
    assert result["val"] == {"semseg": None, "depth": None, "normals": None, "edge": None}
    others = {t: m for t, m in result["train"].items() if t != task}
    assert others == {t: None for t in others}
    assert f"train/{task}" in result["train"][task] and f"sample {index}" in result["train"][task]


def test_scan_is_remembered_by_size_and_mtime(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))
    path = _file(tmp_path / "f.h5")
    calls = []
    real = check.scan_file
    monkeypatch.setattr(check, "scan_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        check.check_data(path, "synthetic-nyud", ["semseg", "depth"], progress=False)
    assert len(calls) == 1
    # a changed file is scanned again, and its new problem found
    _file(path, {"depth": (N - 1, -2.0)})
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=f"train/depth has .* in sample {N - 1}"):
        check.check_data(path, "synthetic-nyud", ["semseg", "depth"], progress=False)
    assert len(calls) == 2
    # the remembered problem is reported without scanning again; unused tasks do not matter
    with pytest.raises(DataError, match="train/depth"):
        check.check_data(path, "synthetic-nyud", ["depth"], progress=False)
    check.check_data(path, "synthetic-nyud", ["semseg"], progress=False)
    assert len(calls) == 2


def test_unwritable_cache_only_means_scanning_again(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MTLKIT_CACHE", str(blocker / "cache"))  # under a file: not creatable
    path = _file(tmp_path / "f.h5")
    check.check_data(path, "synthetic-nyud", ["semseg"], progress=False)
