"""NYUD-v2 raw converter: tiny files in the exact raw layouts -> HDF5, every field checked.

The fixture ``.mat`` mimics ``nyu_depth_v2_labeled.mat`` as h5py sees a MATLAB v7.3 file (a
512-byte userblock holding the MATLAB header, then HDF5 with the axes reversed: images
(N, 3, W, H) uint8, depths / labels / instances (N, W, H)); ``splits.mat`` and
``classMapping40.mat`` are MATLAB v5 files with the real keys, dtypes and shapes.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io as sio

from mtlkit.data.geometry import boundaries
from mtlkit.data.nyud import (
    EIGEN_CROP,
    NYU_RGB_INTRINSICS,
    convert_nyud,
    nyu_intrinsics,
    read_class_mapping,
    read_splits,
)
from mtlkit.errors import ConfigError, DataError

H, W = 48, 64
N = 7
TRAIN = [3, 1, 6, 4]  # file order, deliberately unsorted
VAL = [7, 2]  # index 5 in no split
PLANE_N = np.array([0.3, -0.5, -0.8])  # plane normal facing the camera (z < 0)
PLANE_N = PLANE_N / np.linalg.norm(PLANE_N)
PLANE_D = -2.0  # plane n . P = d, d < 0 so that z > 0 in front of the camera


def _plane_depth(h: int, w: int, k) -> np.ndarray:
    u = (np.arange(w) - k.cx) / k.fx
    v = (np.arange(h) - k.cy) / k.fy
    ray_dot = PLANE_N[0] * u[None, :] + PLANE_N[1] * v[:, None] + PLANE_N[2]
    return (PLANE_D / ray_dot).astype(np.float32)


def make_raw(n: int = N, h: int = H, w: int = W, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw arrays in (H, W) orientation: images (n,h,w,3), depths, labels (0..894), instances."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    k, _ = nyu_intrinsics((h, w))
    depth = _plane_depth(h, w, k)
    depths = np.repeat(depth[None], n, axis=0)
    labels = np.zeros((n, h, w), np.uint16)
    instances = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        raw = rng.choice(np.arange(1, 895), size=4, replace=False)
        labels[i, : h // 2, : w // 2] = raw[0]
        labels[i, : h // 2, w // 2:] = raw[1]
        labels[i, h // 2:, : w // 2] = raw[2]
        labels[i, h // 2:, w // 2:] = raw[3]
        labels[i, h // 2 - 3: h // 2 + 3, :5] = 0  # an unlabelled strip
        labels[i, -1, -1] = 894  # the highest raw class
        instances[i, : h // 2] = 1
        instances[i, h // 2:] = 1
        instances[i, h // 2:, w // 2 + 8:] = 2  # a second object of the same raw class
    depths[:, :3, :3] = 0.0  # invalid depth corner
    return {"images": images, "depths": depths, "labels": labels, "instances": instances}


def write_mat73(path: Path, raw: dict[str, np.ndarray], **overrides) -> None:
    """Write ``raw`` as MATLAB v7.3 stores it: HDF5 after a 512-byte header, axes reversed."""
    arrays = {
        "images": raw["images"].transpose(0, 3, 2, 1),  # (N, 3, W, H)
        "depths": raw["depths"].transpose(0, 2, 1),
        "labels": raw["labels"].transpose(0, 2, 1),
        "instances": raw["instances"].transpose(0, 2, 1),
        "rawDepths": raw["depths"].transpose(0, 2, 1),
    }
    arrays.update(overrides)
    classes = {"uint8": "uint8", "uint16": "uint16", "float32": "single", "float64": "double"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, a in arrays.items():
            if a is None:
                continue
            a = np.ascontiguousarray(a)
            chunks = (1, *a.shape[1:]) if a.ndim >= 3 else None
            d = f.create_dataset(key, data=a, chunks=chunks,
                                 compression="gzip" if chunks else None)
            d.attrs["MATLAB_class"] = np.bytes_(classes.get(str(a.dtype), "double"))
    header = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
              b"HDF5 schema 1.00 .").ljust(116, b" ")
    with open(path, "r+b") as fh:
        fh.write(header + b"\x00" * 8 + b"\x00\x02" + b"IM")


def write_splits(path: Path, train=TRAIN, test=VAL, **extra) -> None:
    d = {"trainNdxs": train, "testNdxs": test, **extra}
    sio.savemat(path, {k: np.array(v, np.uint16).reshape(-1, 1) for k, v in d.items()
                       if v is not None})


def make_mapping(seed: int = 1) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    map_class = rng.integers(1, 41, size=894).astype(np.uint8)
    names = [f"class{i}" for i in range(40)]
    names[23] = "refridgerator"
    return map_class, names


def write_mapping(path: Path, map_class: np.ndarray, names: list[str]) -> None:
    cell = np.empty((1, len(names)), dtype=object)
    for i, nm in enumerate(names):
        cell[0, i] = nm
    sio.savemat(path, {"mapClass": map_class.reshape(1, -1), "className": cell,
                       "mapToNYUSuperClass": np.ones((1, len(names)), np.uint8)})


@pytest.fixture()
def raw_files(tmp_path: Path):
    raw = make_raw()
    map_class, names = make_mapping()
    mat, splits, mapping = tmp_path / "labeled.mat", tmp_path / "splits.mat", tmp_path / "map.mat"
    write_mat73(mat, raw)
    write_splits(splits)
    write_mapping(mapping, map_class, names)
    return {"raw": raw, "map_class": map_class, "names": names, "mat": mat, "splits": splits,
            "mapping": mapping, "out": tmp_path / "out" / "nyud.h5"}


def _expected_semseg(labels: np.ndarray, map_class: np.ndarray) -> np.ndarray:
    mapped = np.concatenate([[0], map_class.astype(np.int64)])[labels.astype(np.int64)]
    return np.where(mapped == 0, 255, mapped - 1)


# ---------------------------------------------------------------------------------------------
def test_fixture_is_a_matlab73_file(raw_files):
    with open(raw_files["mat"], "rb") as fh:
        assert fh.read(10) == b"MATLAB 7.3"
    with h5py.File(raw_files["mat"], "r") as f:
        assert f.userblock_size == 512
        assert f["images"].shape == (N, 3, W, H)
        assert f["labels"].shape == (N, W, H)


def test_intrinsics_scale_and_crop():
    fx, fy, cx, cy = NYU_RGB_INTRINSICS
    k, box = nyu_intrinsics((480, 640))
    assert box == (0, 480, 0, 640)
    assert (k.fx, k.fy) == (fx, fy)
    assert k.cx == pytest.approx(cx - 1) and k.cy == pytest.approx(cy - 1)
    ke, boxe = nyu_intrinsics((480, 640), "eigen")
    assert boxe == EIGEN_CROP
    assert ke.cx == pytest.approx(cx - 1 - 41) and ke.cy == pytest.approx(cy - 1 - 45)
    ks, _ = nyu_intrinsics((48, 64))
    assert ks.fx == pytest.approx(fx / 10) and ks.fy == pytest.approx(fy / 10)
    # pixel centres scale about the corner: centre of big pixel cx0 maps to (cx0 + .5)/10 - .5
    assert ks.cx == pytest.approx((cx - 1 + 0.5) / 10 - 0.5)
    with pytest.raises(ConfigError, match="crop"):
        nyu_intrinsics((48, 64), "center")


def test_convert_every_field(raw_files):
    import json

    raw, mc = raw_files["raw"], raw_files["map_class"]
    summary = convert_nyud(raw_files["mat"], raw_files["splits"], raw_files["mapping"],
                           raw_files["out"], progress=False)
    assert summary["splits"] == {"train": len(TRAIN), "val": len(VAL)}
    assert raw_files["out"].is_file()
    assert not Path(str(raw_files["out"]) + ".tmp").exists()
    k, _ = nyu_intrinsics((H, W))
    with h5py.File(raw_files["out"], "r") as f:
        assert f.attrs["dataset"] == "nyud"
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["semseg_class_names"]]
        assert names == raw_files["names"]
        assert json.loads(f.attrs["source"])["crop"] == "none"
        assert sorted(f.keys()) == ["train", "val"]
        for split, order in (("train", TRAIN), ("val", VAL)):
            g = f[split]
            assert g["index"][:].tolist() == order
            assert g["image"].shape == (len(order), H, W, 3)
            assert g["hw"][:].tolist() == [[H, W]] * len(order)
            for j, idx in enumerate(order):
                i = idx - 1
                np.testing.assert_array_equal(g["image"][j], raw["images"][i])  # orientation
                sem = g["semseg"][j]
                np.testing.assert_array_equal(sem, _expected_semseg(raw["labels"][i], mc))
                assert (sem[raw["labels"][i] == 0] == 255).all()
                assert sem[-1, -1] == mc[893] - 1
                np.testing.assert_array_equal(g["depth"][j], raw["depths"][i])
                # normals: unit, facing the camera, equal to the plane's, zero on invalid depth
                nrm = g["normals"][j]
                valid = np.linalg.norm(nrm, axis=-1) > 0
                assert not valid[:3, :3].any()
                assert valid.mean() > 0.9
                np.testing.assert_allclose(np.linalg.norm(nrm[valid], axis=-1), 1.0, atol=1e-5)
                far = np.ones((H, W), bool)
                far[:6, :6] = False  # the 5x5 window touches the invalid corner
                np.testing.assert_allclose(nrm[far], np.broadcast_to(PLANE_N, nrm[far].shape),
                                           atol=1e-4)
                u = (np.arange(W) - k.cx) / k.fx
                v = (np.arange(H) - k.cy) / k.fy
                rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), -1)
                assert ((nrm[valid] * rays[valid]).sum(-1) < 0).all()
                # edges: boundaries of the 40-class map and of the (raw, instance) objects
                edge = g["edge"][j]
                objects = raw["labels"][i].astype(np.int64) * 256 + raw["instances"][i]
                expect = boundaries([_expected_semseg(raw["labels"][i], mc), objects])
                expect[sem == 255] = 255
                np.testing.assert_array_equal(edge, expect)
                assert (edge[sem == 255] == 255).all()
                assert edge[H // 2 - 1, W // 2 + 8] == 1  # instance 1 | instance 2 boundary
                assert edge[H // 2 + 5, W // 2 + 8] == 1
                assert edge[5, 5] == 0 and edge[-5, 20] == 0  # region interiors


def test_crop_eigen_and_limit(raw_files, tmp_path):
    raw = raw_files["raw"]
    # a 480x640-like ratio at 1/8 scale: the box scales to rows 6:59, cols 5:75 of 60x80
    h, w = 60, 80
    big = make_raw(n=N, h=h, w=w, seed=3)
    mat = tmp_path / "big.mat"
    write_mat73(mat, big)
    out = tmp_path / "crop.h5"
    summary = convert_nyud(mat, raw_files["splits"], raw_files["mapping"], out, crop="eigen",
                           limit=2, progress=False)
    k, box = nyu_intrinsics((h, w), "eigen")
    assert box == (6, 59, 5, 75)
    assert summary["size"] == (53, 70)
    with h5py.File(out, "r") as f:
        assert f["train"]["index"][:].tolist() == TRAIN[:2]
        assert f["val"]["index"][:].tolist() == VAL[:2]
        g = f["train"]
        np.testing.assert_array_equal(g["image"][0], big["images"][TRAIN[0] - 1][6:59, 5:75])
        np.testing.assert_array_equal(g["depth"][1], big["depths"][TRAIN[1] - 1][6:59, 5:75])
        # normals of the cropped plane are right only with the shifted principal point
        nrm = g["normals"][0]
        valid = np.linalg.norm(nrm, axis=-1) > 0
        assert valid.all()
        np.testing.assert_allclose(nrm.reshape(-1, 3), np.broadcast_to(PLANE_N, (53 * 70, 3)),
                                   atol=1e-4)
    del raw


def test_normals_on_tilted_plane_of_known_orientation():
    """The method itself: a plane seen through the NYU camera gives its own normal back."""
    from mtlkit.data.geometry import normals_from_depth

    k, _ = nyu_intrinsics((480, 640))
    depth = _plane_depth(480, 640, k)
    assert (depth > 0).all()
    nrm = normals_from_depth(depth, k.fx, k.fy, k.cx, k.cy, smooth=2)
    np.testing.assert_allclose(nrm.reshape(-1, 3), np.broadcast_to(PLANE_N, (480 * 640, 3)),
                               atol=1e-4)


def test_read_real_layout_helpers(raw_files):
    s = read_splits(raw_files["splits"])
    assert s["train"].tolist() == TRAIN and s["val"].tolist() == VAL
    lut, names = read_class_mapping(raw_files["mapping"])
    assert lut.shape == (895,) and lut[0] == 255
    np.testing.assert_array_equal(lut[1:], raw_files["map_class"] - 1)
    assert names[23] == "refridgerator"


def test_memory_stays_bounded(tmp_path):
    """Peak Python-side memory of a conversion does not grow with the number of images."""
    map_class, names = make_mapping()
    mapping = tmp_path / "map.mat"
    write_mapping(mapping, map_class, names)
    peaks = []
    for n in (4, 16):
        raw = make_raw(n=n, h=96, w=128, seed=n)
        mat, splits = tmp_path / f"m{n}.mat", tmp_path / f"s{n}.mat"
        write_mat73(mat, raw)
        write_splits(splits, train=list(range(1, n, 2)), test=list(range(2, n + 1, 2)))
        del raw
        tracemalloc.start()
        convert_nyud(mat, splits, mapping, tmp_path / f"o{n}.h5", progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    one_image = 96 * 128 * (3 + 4 + 2 + 1)
    assert peaks[1] < peaks[0] * 1.25 + 4 * one_image, peaks


# ---------------------------------------------------------------------------------------------
# corrupt or incomplete inputs: one clear DataError naming file and key, no output file
# ---------------------------------------------------------------------------------------------
def _expect_error(raw_files, match: str, **paths) -> None:
    args = {k: raw_files[k] for k in ("mat", "splits", "mapping")}
    args.update(paths)
    with pytest.raises(DataError, match=match) as ei:
        convert_nyud(args["mat"], args["splits"], args["mapping"], raw_files["out"],
                     progress=False)
    assert "\n" not in str(ei.value)
    assert not raw_files["out"].exists()
    assert not Path(str(raw_files["out"]) + ".tmp").exists()


def test_missing_files(raw_files, tmp_path):
    _expect_error(raw_files, r"NYUD \.mat .*nope\.mat not found", mat=tmp_path / "nope.mat")
    _expect_error(raw_files, r"splits file .*nope\.mat not found", splits=tmp_path / "nope.mat")
    _expect_error(raw_files, r"class mapping .*nope\.mat not found",
                  mapping=tmp_path / "nope.mat")


def test_mat_not_hdf5(raw_files):
    # a MATLAB v5 file where the v7.3 one belongs
    _expect_error(raw_files, r"splits\.mat is not a MATLAB v7\.3 \(HDF5\)", mat=raw_files["splits"])


def test_truncated_mat(raw_files, tmp_path):
    bad = tmp_path / "trunc.mat"
    bad.write_bytes(raw_files["mat"].read_bytes()[:2000])
    _expect_error(raw_files, r"trunc\.mat", mat=bad)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"depths": None}, r"no dataset 'depths'"),
        ({"instances": None}, r"no dataset 'instances'"),
        ({"images": np.zeros((N, W, H), np.uint8)}, r"key 'images' has shape \(7, 64, 48\)"),
        ({"images": np.zeros((N, 3, W, H), np.float32)}, r"key 'images' .* float32"),
        ({"labels": np.zeros((N, H, W), np.uint16)}, r"key 'labels' has shape \(7, 48, 64\)"),
        ({"labels": np.zeros((N - 1, W, H), np.uint16)}, r"key 'labels' has shape \(6, 64, 48\)"),
        ({"depths": np.zeros((N, W, H), np.uint8)}, r"key 'depths' .* expected .* float"),
    ],
)
def test_bad_mat_keys(raw_files, tmp_path, override, match):
    bad = tmp_path / "bad.mat"
    write_mat73(bad, raw_files["raw"], **override)
    _expect_error(raw_files, r"bad\.mat.*" + match, mat=bad)


def test_raw_label_out_of_range(raw_files, tmp_path):
    raw = {k: v.copy() for k, v in raw_files["raw"].items()}
    raw["labels"][TRAIN[2] - 1, 0, 0] = 900
    bad = tmp_path / "bad.mat"
    write_mat73(bad, raw)
    _expect_error(raw_files, r"key 'labels' image 6: raw label 900", mat=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": [3, 1, 8]}, r"'trainNdxs' has index 8 but the \.mat holds 7"),
        ({"train": [0, 1]}, r"'trainNdxs' has index 0 < 1"),
        ({"test": [2, 3]}, r"trainNdxs and testNdxs overlap"),
        ({"train": [1, 3, 1]}, r"'trainNdxs' lists index 1 twice"),
        ({"test": None}, r"no key 'testNdxs'"),
    ],
)
def test_bad_splits(raw_files, tmp_path, kwargs, match):
    bad = tmp_path / "badsplits.mat"
    write_splits(bad, **{"train": TRAIN, "test": VAL, **kwargs})
    _expect_error(raw_files, r"badsplits\.mat.*" + match, splits=bad)


def test_bad_mapping(raw_files, tmp_path):
    mc, names = raw_files["map_class"], raw_files["names"]
    bad = tmp_path / "badmap.mat"
    write_mapping(bad, mc[:893], names)
    _expect_error(raw_files, r"badmap\.mat key 'mapClass' has 893 entries, expected 894",
                  mapping=bad)
    write_mapping(bad, mc, names[:39])
    _expect_error(raw_files, r"badmap\.mat: 'mapClass' values span 1\.\.40 but 'className' has "
                             r"39", mapping=bad)
    sio.savemat(bad, {"mapClass": mc.reshape(1, -1)})
    _expect_error(raw_files, r"badmap\.mat has no key 'className'", mapping=bad)


def test_bad_options(raw_files):
    with pytest.raises(ConfigError, match="crop"):
        convert_nyud(raw_files["mat"], raw_files["splits"], raw_files["mapping"],
                     raw_files["out"], crop="middle", progress=False)
    with pytest.raises(ConfigError, match="limit"):
        convert_nyud(raw_files["mat"], raw_files["splits"], raw_files["mapping"],
                     raw_files["out"], limit=0, progress=False)
    assert not raw_files["out"].exists()


def test_loader_reads_the_file(raw_files):
    from mtlkit.data.h5 import MultiTaskH5Dataset

    convert_nyud(raw_files["mat"], raw_files["splits"], raw_files["mapping"], raw_files["out"],
                 progress=False)
    ds = MultiTaskH5Dataset(raw_files["out"], "val")
    assert len(ds) == len(VAL)
    assert ds.num_classes == {"semseg": 40}
    s = ds[0]
    assert s["meta"]["index"] == VAL[0]
    assert tuple(s["image"].shape) == (3, H, W)
    assert tuple(s["normals"].shape) == (3, H, W)


# ---------------------------------------------------------------------------------------------
# the CLI: `mtlkit preprocess nyud`
# ---------------------------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, ["preprocess", "nyud", *[str(a) for a in args]],
                              catch_exceptions=False)


def test_cli_converts(raw_files):
    out = raw_files["out"]
    res = _cli("--mat", raw_files["mat"], "--splits", raw_files["splits"], "--mapping",
               raw_files["mapping"], "--out", out, "--limit", 2, "--crop", "none")
    assert res.exit_code == 0, res.output
    assert "2 train / 2 val" in " ".join(res.output.split())
    with h5py.File(out, "r") as f:
        assert f["train"]["index"][:].tolist() == TRAIN[:2]
        assert f["val"]["index"][:].tolist() == VAL[:2]


def test_cli_errors_are_one_line_exit_2(raw_files, tmp_path):
    out = raw_files["out"]
    res = _cli("--mat", tmp_path / "none.mat", "--splits", raw_files["splits"], "--mapping",
               raw_files["mapping"], "--out", out)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "none.mat not found" in lines[0], res.output
    assert "Traceback" not in res.output and not out.exists()
    res = _cli("--mat", raw_files["mat"], "--out", out)
    assert res.exit_code == 2 and "missing --splits, --mapping" in " ".join(res.output.split())
    res = _cli("--mat", raw_files["mat"], "--splits", raw_files["splits"], "--mapping",
               raw_files["mapping"], "--out", out, "--crop", "middle")
    assert res.exit_code == 2 and "unknown crop 'middle'" in " ".join(res.output.split())
    res = _cli("--from-folder", tmp_path, "--mat", raw_files["mat"], "--out", out)
    assert res.exit_code == 2 and "--from-folder cannot be combined" in " ".join(res.output.split())
    assert not out.exists()
