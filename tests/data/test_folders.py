"""Prepared NYUD folders: tiny MTL-PT ``NYUD_MT/`` and ATRC/InvPT ``NYUDv2/`` trees -> HDF5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mtlkit.data.folders import NYU40_CLASS_NAMES, convert_nyud_folder, detect_nyud_layout
from mtlkit.errors import ConfigError, DataError

H, W = 24, 32
TRAIN = ["0003", "0001", "0010"]
VAL = ["0002", "0007"]


def make_folder(root: Path, layout: str, seed: int = 0, train=TRAIN, val=VAL, h: int = H,
                w: int = W) -> dict:
    """Write a NYUD folder in ``layout`` (``mtlpt`` or ``atrc``); return the expected arrays."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "gt_sets" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(val) + "\n")
    expect = {}
    for n, sid in enumerate([*train, *val]):
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        seg = rng.integers(0, 41, size=(h, w)).astype(np.uint8)
        seg[0, 0], seg[0, 1] = 0, 40
        depth = rng.uniform(0.5, 10, size=(h, w)).astype(np.float32)
        depth[1, 1] = np.nan
        depth[1, 2] = -1
        nv = rng.normal(size=(h, w, 3))
        nv /= np.linalg.norm(nv, axis=-1, keepdims=True)
        edge = (rng.random((h, w)) > 0.8).astype(np.uint8)
        Image.fromarray(seg).save(root / "segmentation" / f"{sid}.png")
        if layout == "mtlpt":
            Image.fromarray(img).save(root / "images" / f"{sid}.jpg", quality=95)
            np.save(root / "depth" / f"{sid}.npy", depth)
            nv[2, 2] = 0  # MTL-PT's invalid normal
            np.save(root / "normals" / f"{sid}.npy", nv.astype(np.float32))
            np.save(root / "edge" / f"{sid}.npy", edge.astype(np.float32))
            exp_n = nv.copy()
            with Image.open(root / "images" / f"{sid}.jpg") as im:
                exp_img = np.asarray(im.convert("RGB"))
        else:
            Image.fromarray(img).save(root / "images" / f"{sid}.png")
            np.save(root / "depth" / f"{sid}.npy", depth[..., None] if n % 2 else depth)
            npng = np.round((nv + 1) / 2 * 255).astype(np.uint8)
            npng[2, 2] = 0  # decodes to (-1, -1, -1): invalid
            npng[2, 3] = 128  # decodes to ~0: invalid
            Image.fromarray(npng).save(root / "normals" / f"{sid}.png")
            Image.fromarray(edge * 255).save(root / "edge" / f"{sid}.png")
            exp_n = 2.0 * npng / 255 - 1
            exp_n /= np.linalg.norm(exp_n, axis=-1, keepdims=True)
            exp_n[2, 2:4] = 0
            exp_img = img
        exp_d = np.where(np.isfinite(depth) & (depth > 0), depth, 0)
        expect[sid] = {"image": exp_img, "semseg": np.where(seg == 0, 255, seg - 1),
                       "depth": exp_d, "normals": exp_n, "edge": edge}
    return expect


@pytest.mark.parametrize("layout", ["mtlpt", "atrc"])
def test_import_every_field(tmp_path, layout):
    root = tmp_path / ("NYUD_MT" if layout == "mtlpt" else "NYUDv2")
    expect = make_folder(root, layout)
    assert detect_nyud_layout(root) == layout
    out = tmp_path / "nyud.h5"
    summary = convert_nyud_folder(root, out, progress=False)
    assert summary["layout"] == layout and summary["size"] == (H, W)
    with h5py.File(out, "r") as f:
        assert f.attrs["dataset"] == "nyud"
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["semseg_class_names"]]
        assert names == list(NYU40_CLASS_NAMES)
        assert "as provided by" in str(f.attrs["normals_convention"])
        for split, ids in (("train", TRAIN), ("val", VAL)):
            g = f[split]
            assert g["index"][:].tolist() == [int(s) for s in ids]
            for j, sid in enumerate(ids):
                ex = expect[sid]
                np.testing.assert_array_equal(g["image"][j], ex["image"])
                np.testing.assert_array_equal(g["semseg"][j], ex["semseg"])
                assert g["semseg"][j][0, 0] == 255 and g["semseg"][j][0, 1] == 39
                np.testing.assert_allclose(g["depth"][j], ex["depth"], rtol=1e-6)
                np.testing.assert_allclose(g["normals"][j], ex["normals"], atol=1e-5)
                nrm = g["normals"][j]
                assert (nrm[2, 2] == 0).all()
                np.testing.assert_allclose(
                    np.linalg.norm(nrm.reshape(-1, 3), axis=1)[nrm.reshape(-1, 3).any(1)], 1,
                    atol=1e-5)
                np.testing.assert_array_equal(g["edge"][j], ex["edge"])


def test_non_numeric_ids_and_limit(tmp_path):
    root = tmp_path / "NYUD_MT"
    make_folder(root, "mtlpt", train=["img_a", "img_b"], val=["img_c"])
    out = tmp_path / "o.h5"
    convert_nyud_folder(root, out, limit=1, progress=False)
    with h5py.File(out, "r") as f:
        assert f["train"]["index"][:].tolist() == [1]
        assert f["val"]["index"][:].tolist() == [1]


def _expect_error(root: Path, out: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as ei:
        convert_nyud_folder(root, out, progress=False)
    assert "\n" not in str(ei.value)
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_errors(tmp_path):
    out = tmp_path / "o.h5"
    _expect_error(tmp_path / "missing", out, r"NYUD folder .*missing not found")
    root = tmp_path / "NYUD_MT"
    make_folder(root, "mtlpt")
    (root / "depth" / "0010.npy").unlink()
    _expect_error(root, out, r"depth .*depth/0010\.npy not found")
    make_folder(root, "mtlpt")
    np.save(root / "depth" / "0007.npy", np.zeros((H, W + 1), np.float32))
    _expect_error(root, out, r"depth .*0007\.npy has shape \(24, 33\), expected \(24, 32\)")
    make_folder(root, "mtlpt")
    Image.fromarray(np.full((H, W), 41, np.uint8)).save(root / "segmentation" / "0001.png")
    _expect_error(root, out, r"segmentation .*0001\.png has labels outside 0\.\.40")
    make_folder(root, "mtlpt")
    (root / "images" / "0003.jpg").unlink()
    _expect_error(root, out, r"cannot tell the layout")
    make_folder(root, "mtlpt")
    (root / "gt_sets" / "val.txt").write_text("0001\n")
    _expect_error(root, out, r"'0001' is in both train\.txt and val\.txt")
    make_folder(root, "mtlpt")
    (root / "normals" / "0002.npy").write_bytes(b"junk")
    _expect_error(root, out, r"cannot read array .*0002\.npy")
    make_folder(root, "mtlpt")
    import shutil

    shutil.rmtree(root / "edge")
    _expect_error(root, out, r"NYUD sub-folder .*edge not found")
    with pytest.raises(ConfigError, match="limit"):
        convert_nyud_folder(tmp_path, out, limit=0, progress=False)


def test_images_of_different_size(tmp_path):
    root = tmp_path / "NYUDv2"
    make_folder(root, "atrc")
    other = tmp_path / "other"
    make_folder(other, "atrc", train=["0002"], val=["0009"], h=H + 2)
    for sub in ("images", "segmentation", "depth", "normals", "edge"):
        for f in (other / sub).glob("0002.*"):
            f.replace(root / sub / f.name)
    _expect_error(root, tmp_path / "o.h5", r"image 0002 .* has size \(26, 32\), the first one")


def test_cli_from_folder(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    root = tmp_path / "NYUDv2"
    make_folder(root, "atrc")
    out = tmp_path / "o.h5"
    res = CliRunner().invoke(app, ["preprocess", "nyud", "--from-folder", str(root), "--out",
                                   str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "3 train / 2 val" in text and "atrc folder" in text
    res = CliRunner().invoke(app, ["preprocess", "nyud", "--from-folder", str(root), "--out",
                                   str(out), "--crop", "eigen"], catch_exceptions=False)
    assert res.exit_code == 2
    assert "--crop applies to the raw .mat only" in " ".join(res.output.split())
