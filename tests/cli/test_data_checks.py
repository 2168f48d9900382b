"""Data is checked against the config before the first step (issue 17, section 2).

Every corruption sits in a sample the dataset's cheap build-time check does not read (it looks
at samples 0, N/2 and N-1 only), so only a check of the whole file finds it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli._helpers import TRAIN_ARGS, invoke, one_line_error


def _corrupt(src: Path, dest: Path, split: str, task: str, index: int, value: float) -> Path:
    shutil.copy(src, dest)
    with h5py.File(dest, "r+") as f:
        d = f[split][task]
        a = d[index]
        a.reshape(-1)[a.size // 2] = value
        d[index] = a
    return dest


# (split, task, sample, value): train N = 24 (cheaply read: 0, 12, 23), val N = 8 (0, 4, 7)
CORRUPTIONS = [
    ("train", "semseg", 10, 77),      # class id beyond the 9 classes
    ("val", "semseg", 5, 40),
    ("train", "depth", 7, np.nan),
    ("train", "depth", 9, np.inf),
    ("val", "depth", 3, -1.0),
    ("train", "normals", 11, np.nan),
    ("train", "normals", 13, 5.0),    # not a unit-vector component
    ("train", "edge", 5, 7),          # boundary maps hold 0, 1, 255
    ("val", "edge", 6, 2),
    ("train", "parts", 4, 9),         # 7 part classes (PASCAL tasks)
    ("train", "saliency", 6, 3),
]


@pytest.mark.parametrize(("split", "task", "index", "value"), CORRUPTIONS,
                         ids=[f"{s}-{t}-{i}" for s, t, i, _ in CORRUPTIONS])
def test_bad_labels_anywhere_stop_train_before_the_first_step(
        tiny_h5: Path, tmp_path: Path, split: str, task: str, index: int, value: float) -> None:
    bad = _corrupt(tiny_h5, tmp_path / "bad.h5", split, task, index, value)
    dataset = "synthetic-pascal" if task in ("parts", "saliency") else "synthetic-nyud"
    out = tmp_path / "run"
    res = invoke("train", *TRAIN_ARGS, "--dataset", dataset, "--data", bad, "--steps", 1,
                 "--out", out)
    one_line_error(res, str(bad), f"{split}/{task}", f"sample {index}")
    assert not out.exists()


def test_float_semseg_is_refused(tiny_h5: Path, tmp_path: Path) -> None:
    bad = tmp_path / "float.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "r+") as f:
        labels = f["train"]["semseg"][()].astype(np.float32)
        del f["train"]["semseg"]
        f["train"].create_dataset("semseg", data=labels, chunks=(1, *labels.shape[1:]))
    res = invoke("train", *TRAIN_ARGS, "--data", bad, "--steps", 1, "--out", tmp_path / "run")
    one_line_error(res, "train/semseg", "float32", "uint8")


def test_evaluate_checks_the_val_split(trained_run: Path, tiny_h5: Path, tmp_path: Path) -> None:
    bad = _corrupt(tiny_h5, tmp_path / "bad.h5", "val", "semseg", 5, 77)
    res = invoke("evaluate", "--checkpoint", trained_run / "last.pt", "--data", bad)
    one_line_error(res, "val/semseg", "sample 5")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--dataset", "nyud"], "holds the 'synthetic' dataset"),
        (["--dataset", "pascal", "--tasks", "semseg"], "holds the 'synthetic' dataset"),
        (["--config", "configs/tpim_nyud_hrnet18.yaml"], "not 'nyud' (semseg: 40 classes)"),
    ],
)
def test_dataset_of_the_file_must_match_the_config(
        tiny_h5: Path, tmp_path: Path, options: list[str], needle: str) -> None:
    out = tmp_path / "run"
    res = invoke("train", *options, "--data", tiny_h5, "--steps", 1, "--out", out, "--quiet")
    one_line_error(res, needle)
    assert not out.exists()


def test_class_count_of_the_file_must_match_the_dataset(tiny_h5: Path, tmp_path: Path) -> None:
    bad = tmp_path / "nyud9.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["dataset"] = "nyud"  # says NYUD, holds the synthetic 9 classes
    res = invoke("train", *TRAIN_ARGS, "--dataset", "nyud", "--data", bad, "--steps", 1,
                 "--out", tmp_path / "run")
    one_line_error(res, "9 semseg classes but nyud has 40")


def test_size_attr_must_match_the_images(tiny_h5: Path, tmp_path: Path) -> None:
    bad = tmp_path / "size.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["size"] = np.array([128, 160], dtype=np.int32)
    res = invoke("train", *TRAIN_ARGS, "--data", bad, "--steps", 1, "--out", tmp_path / "run")
    one_line_error(res, "128x160", "64x80")
