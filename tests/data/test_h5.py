"""H5Writer / MultiTaskH5Dataset round trip, atomic writes, DataError cases, dataset registry."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlkit.data import (
    build_dataset,
    collate,
    dataset_info,
)
from mtlkit.data.h5 import (
    NORMALS_CONVENTION,
    H5Writer,
    MultiTaskH5Dataset,
    read_attrs,
)
from mtlkit.data.transforms import EvalTransform, TrainTransform, denormalize_image
from mtlkit.errors import ConfigError, DataError, UnknownNameError

TASKS = ["semseg", "depth", "normals", "edge", "parts", "saliency"]
NAMES = ["floor", "wall", "thing"]


def _random_sample(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    sem = rng.integers(0, 3, (h, w)).astype(np.uint8)
    sem[0, 0] = 255
    return {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "semseg": sem,
        "depth": rng.uniform(0.5, 5.0, (h, w)).astype(np.float32),
        "normals": n,
        "edge": rng.integers(0, 2, (h, w)).astype(np.uint8),
        "parts": rng.integers(0, 7, (h, w)).astype(np.uint8),
        "saliency": rng.integers(0, 2, (h, w)).astype(np.uint8),
    }


def _write(path: Path, samples: dict[str, list[dict[str, np.ndarray]]], size=(16, 20),
           tasks=TASKS) -> Path:
    with H5Writer(path, dataset="toy", tasks=tasks, size=size,
                  attrs={"semseg_class_names": NAMES, "source": {"made": "by test"}}) as w:
        for split, ss in samples.items():
            w.add_split(split, len(ss))
            for i, s in enumerate(ss):
                w.write(split, i, {**s, "index": 100 + i})
    return path


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, dict[str, list[dict[str, np.ndarray]]]]:
    rng = np.random.default_rng(0)
    samples = {"train": [_random_sample(rng, 16, 20), _random_sample(rng, 11, 17),
                         _random_sample(rng, 16, 20)],
               "val": [_random_sample(rng, 16, 20)]}
    return _write(tmp_path / "toy.h5", samples), samples


def test_round_trip(toy) -> None:
    path, samples = toy
    assert not Path(str(path) + ".tmp").exists()
    ds = MultiTaskH5Dataset(path, "train")
    assert len(ds) == 3 and ds.tasks == TASKS and ds.size == (16, 20)
    assert ds.num_classes == {"semseg": 3, "parts": 7}
    for i, src in enumerate(samples["train"]):
        s = ds[i]
        h, w = src["semseg"].shape
        assert s["meta"] == {"index": 100 + i, "hw": (h, w), "split": "train"}
        assert s["image"].shape == (3, 16, 20) and s["image"].dtype == torch.float32
        np.testing.assert_array_equal(denormalize_image(s["image"])[:h, :w], src["image"])
        np.testing.assert_array_equal(s["semseg"][:h, :w].numpy(), src["semseg"])
        assert s["semseg"].dtype == torch.int64 and s["parts"].dtype == torch.int64
        np.testing.assert_array_equal(s["parts"][:h, :w].numpy(), src["parts"])
        np.testing.assert_array_equal(s["depth"][0, :h, :w].numpy(), src["depth"])
        np.testing.assert_array_equal(s["normals"][:, :h, :w].permute(1, 2, 0).numpy(),
                                      src["normals"])
        np.testing.assert_array_equal(s["edge"][0, :h, :w].numpy(), src["edge"])
        np.testing.assert_array_equal(s["saliency"][0, :h, :w].numpy(), src["saliency"])
        if (h, w) != (16, 20):  # padding outside hw
            assert (s["semseg"][h:] == 255).all() and (s["semseg"][:, w:] == 255).all()
            assert (s["edge"][0, h:] == 255).all() and (s["saliency"][0, :, w:] == 255).all()
            assert (s["depth"][0, h:] == 0).all() and (s["normals"][:, :, w:] == 0).all()


def test_layout_and_attrs(toy) -> None:
    path, _ = toy
    a = read_attrs(path)
    assert a["dataset"] == "toy" and a["tasks"] == TASKS
    assert a["semseg_class_names"] == NAMES and len(a["parts_class_names"]) == 7
    assert a["normals_convention"] == NORMALS_CONVENTION
    assert a["format_version"] == 1 and isinstance(a["mtlkit_version"], str)
    assert json.loads(a["source"]) == {"made": "by test"}
    with h5py.File(path, "r") as f:
        g = f["train"]
        assert g["image"].shape == (3, 16, 20, 3) and g["image"].dtype == np.uint8
        assert g["image"].chunks == (1, 16, 20, 3) and g["image"].compression is not None
        assert g["normals"].chunks == (1, 16, 20, 3) and g["depth"].dtype == np.float32
        assert g["semseg"].dtype == np.uint8 and g["index"].dtype == np.int64
        assert g["hw"].dtype == np.int32 and g["hw"][1].tolist() == [11, 17]
        assert g["hw"][0].tolist() == [16, 20]


def test_tasks_subset_and_transform(toy) -> None:
    path, _ = toy
    ds = MultiTaskH5Dataset(path, "val", tasks=["depth"], transform=EvalTransform((24, 24)))
    s = ds[0]
    assert set(s) == {"image", "depth", "meta"}
    assert s["depth"].shape == (1, 24, 24) and ds.size == (24, 24)
    assert s["meta"]["hw"] == (16, 20)


def test_exception_removes_tmp_and_no_final_file(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    rng = np.random.default_rng(1)
    with pytest.raises(RuntimeError, match="boom"):
        with H5Writer(out, dataset="toy", tasks=TASKS, size=(16, 20),
                      attrs={"semseg_class_names": NAMES}) as w:
            w.add_split("train", 2)
            w.write("train", 0, _random_sample(rng, 16, 20))
            assert Path(str(out) + ".tmp").exists() and not out.exists()
            raise RuntimeError("boom")
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_incomplete_split_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError, match="never written"):
        with H5Writer(out, dataset="toy", tasks=["depth"], size=(4, 4)) as w:
            w.add_split("train", 2)
            w.write("train", 0, {"image": np.zeros((4, 4, 3), np.uint8),
                                 "depth": np.ones((4, 4), np.float32)})
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_writer_rejects_bad_samples(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError):
        H5Writer(tmp_path / "a.h5", dataset="t", tasks=["semseg"], size=(4, 4))  # no names
    with pytest.raises(ValueError, match="ids >= 3"):
        with H5Writer(tmp_path / "b.h5", dataset="t", tasks=TASKS, size=(16, 20),
                      attrs={"semseg_class_names": NAMES}) as w:
            w.add_split("train", 1)
            s = _random_sample(rng, 16, 20)
            s["semseg"][3, 3] = 7
            w.write("train", 0, s)
    with pytest.raises(ValueError, match="shape"):
        with H5Writer(tmp_path / "c.h5", dataset="t", tasks=TASKS, size=(16, 20),
                      attrs={"semseg_class_names": NAMES}) as w:
            w.add_split("train", 1)
            s = _random_sample(rng, 16, 20)
            s["depth"] = s["depth"][:, :-1]
            w.write("train", 0, s)
    with pytest.raises(ValueError, match="larger"):
        with H5Writer(tmp_path / "d.h5", dataset="t", tasks=["depth"], size=(4, 4)) as w:
            w.add_split("train", 1)
            w.write("train", 0, {"image": np.zeros((5, 4, 3), np.uint8),
                                 "depth": np.ones((5, 4), np.float32)})
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.tmp"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mtlkit preprocess"):
        MultiTaskH5Dataset(tmp_path / "nope.h5", "train")


def test_garbage_file(tmp_path: Path) -> None:
    p = tmp_path / "garbage.h5"
    p.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DataError, match="not an HDF5 file"):
        MultiTaskH5Dataset(p, "train")
    with pytest.raises(DataError):
        read_attrs(p)


def test_truncated_file(toy, tmp_path: Path) -> None:
    path, _ = toy
    data = path.read_bytes()
    p = tmp_path / "trunc.h5"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError):
        MultiTaskH5Dataset(p, "train")


def test_missing_split_and_task(toy, tmp_path: Path) -> None:
    path, samples = toy
    with pytest.raises(DataError, match="no split 'test'"):
        MultiTaskH5Dataset(path, "test")
    p = _write(tmp_path / "small.h5", {"train": samples["train"][:1]}, tasks=["semseg"])
    with pytest.raises(DataError, match="no task 'depth'"):
        MultiTaskH5Dataset(p, "train", tasks=["semseg", "depth"])


def _tamper(path: Path, fn) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


def test_inconsistent_lengths(toy) -> None:
    path, _ = toy

    def shorten(f: h5py.File) -> None:
        del f["train/depth"]
        f["train"].create_dataset("depth", data=np.ones((2, 16, 20), np.float32))

    _tamper(path, shorten)
    with pytest.raises(DataError, match="inconsistent"):
        MultiTaskH5Dataset(path, "train")
    MultiTaskH5Dataset(path, "train", tasks=["semseg"])  # the other tasks are fine


def test_out_of_range_labels_detected(toy) -> None:
    path, _ = toy

    def corrupt(f: h5py.File) -> None:
        f["train/semseg"][0, 2, 2] = 9  # 3 classes

    _tamper(path, corrupt)
    with pytest.raises(DataError, match="class id 9"):
        MultiTaskH5Dataset(path, "train")


def test_bad_edge_values_detected(toy) -> None:
    path, _ = toy

    def corrupt(f: h5py.File) -> None:
        f["val/edge"][0, 1, 1] = 7

    _tamper(path, corrupt)
    with pytest.raises(DataError, match="edge"):
        MultiTaskH5Dataset(path, "val")


def test_pickle_drops_handle(toy) -> None:
    path, _ = toy
    ds = MultiTaskH5Dataset(path, "train")
    a = ds[0]
    assert ds._h5 is not None
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2._h5 is None
    b = ds2[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["semseg"], b["semseg"])


def test_dataloader_two_workers(toy) -> None:
    path, _ = toy
    ds = MultiTaskH5Dataset(path, "train", transform=TrainTransform((16, 20)))

    def run(workers: int) -> list[dict]:
        torch.manual_seed(0)
        dl = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
        return list(dl)

    batches = run(2)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (2, 3, 16, 20) and b["semseg"].shape == (2, 16, 20)
    assert b["depth"].shape == (2, 1, 16, 20)
    assert b["meta"]["index"] == [100, 101] and b["meta"]["split"] == ["train", "train"]
    assert len(b["meta"]["hw"]) == 2
    again = run(2)  # a fixed torch seed reproduces the augmentation with workers
    for x, y in zip(batches, again, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["depth"], y["depth"])


def test_registry_builders(toy, tmp_path: Path) -> None:
    path, _ = toy
    info = dataset_info("nyud")
    assert info["tasks"] == ["semseg", "depth", "normals", "edge"]
    assert info["default_size"] == (480, 640) and info["edge_max_dist"] == 0.011
    assert dataset_info("pascal")["edge_max_dist"] == 0.0075
    assert dataset_info("synthetic-pascal")["tasks"] == ["semseg", "parts", "saliency",
                                                        "normals", "edge"]
    with pytest.raises(UnknownNameError):
        dataset_info("imagenet")
    ds = build_dataset("pascal", path=path, split="train", size=(16, 20))
    assert ds.tasks == ["semseg", "parts", "saliency", "normals", "edge"]
    assert isinstance(ds.transform, EvalTransform)
    ds = build_dataset("nyud", path=str(path), split="val", train=True, size=(8, 10))
    assert ds.tasks == ["semseg", "depth", "normals", "edge"]
    assert isinstance(ds.transform, TrainTransform) and ds[0]["image"].shape == (3, 8, 10)
    with pytest.raises(ConfigError, match="no task parts"):
        build_dataset("nyud", path=path, tasks=["parts"])
    with pytest.raises(DataError, match="mtlkit preprocess nyud"):
        build_dataset("nyud", path=tmp_path / "missing.h5")
    with pytest.raises(DataError, match="mtlkit preprocess pascal"):
        build_dataset("pascal", path=None)
    with pytest.raises(DataError, match="mtlkit preprocess synthetic"):
        build_dataset("synthetic-nyud", path=tmp_path / "missing.h5")


def test_bad_hw_detected(toy) -> None:
    path, _ = toy

    def corrupt(f: h5py.File) -> None:
        f["train/hw"][1] = [40, 5]

    _tamper(path, corrupt)
    with pytest.raises(DataError, match="hw"):
        MultiTaskH5Dataset(path, "train")
