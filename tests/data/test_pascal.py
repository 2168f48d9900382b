"""PASCAL_MT converter: a tiny folder in MTL-PT's exact layout -> HDF5, every field checked.

Part annotations mimic the PASCAL-Part ``anno`` struct as ``scipy.io.loadmat`` returns it
(``anno.imname``, ``anno.objects(i).{class, class_ind, mask, parts}``,
``parts(j).{part_name, mask}``, ``parts = []`` for an object without parts), with the real
person part names; edges come from PASCAL-Context ``trainval/<id>.mat`` files with ``LabelMap``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from mtlkit.data.pascal import (
    NORMALS_VALID_CONTEXT_IDS,
    PART_GROUPS,
    VOC_CLASS_NAMES,
    convert_pascal,
    edges_from_label_map,
)
from mtlkit.errors import DataError

PAD = 64
TRAIN = {"2008_000002": (40, 50), "2008_000003": (36, 60), "2009_000010": (50, 44)}
VAL = {"2010_000001": (30, 30), "2010_000005": (48, 64)}
WALL, SKY, PERSON_CTX, TV = 440, 360, 284, 427  # PASCAL-Context LabelMap ids

PERSON_PARTS = ["hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow",
                "reye", "neck", "torso", "luarm", "ruarm", "lhand", "llarm", "rhand", "rlarm",
                "luleg", "ruleg", "lfoot", "llleg", "rfoot", "rlleg"]


def _obj(cls: str, ind: int, mask: np.ndarray, parts: list[tuple[str, np.ndarray]]) -> tuple:
    if parts:
        p = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
        for j, (name, m) in enumerate(parts):
            p[0, j]["part_name"] = name
            p[0, j]["mask"] = m.astype(np.uint8)
    else:
        p = np.zeros((0, 0))  # MATLAB's [] for an object without parts
    return cls, np.array([[ind]], np.uint8), mask.astype(np.uint8), p


def write_anno(path: Path, sid: str, objects: list[tuple]) -> None:
    objs = np.zeros((1, len(objects)),
                    dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for j, (cls, ind, mask, parts) in enumerate(objects):
        objs[0, j]["class"] = cls
        objs[0, j]["class_ind"] = ind
        objs[0, j]["mask"] = mask
        objs[0, j]["parts"] = parts
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = sid
    anno[0, 0]["objects"] = objs
    sio.savemat(path, {"anno": anno})


def save_palette_png(path: Path, labels: np.ndarray) -> None:
    """A class-index PNG as VOC stores it: mode P with a full 256-colour palette."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _box(hw: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[r0:r1, c0:c1] = True
    return m


def make_pascal(root: Path, seed: int = 0) -> dict:
    """Write a PASCAL_MT/ folder; return the expected per-id arrays."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "ImageSets/Context", "semseg/VOC12", "semseg/pascal-context",
                "human_parts", "normals_distill", "sal_distill", "pascal-context/trainval"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Context/train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "ImageSets/Context/val.txt").write_text("\n".join(VAL) + "\n")
    expect: dict[str, dict[str, np.ndarray]] = {}
    for n, (sid, hw) in enumerate({**TRAIN, **VAL}.items()):
        h, w = hw
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
        sem = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
        sem[:2, :] = 255
        if n == 0:  # VOC12 wins over pascal-context
            save_palette_png(root / "semseg/VOC12" / f"{sid}.png", sem)
            save_palette_png(root / "semseg/pascal-context" / f"{sid}.png", np.zeros((h, w)))
        else:
            save_palette_png(root / "semseg/pascal-context" / f"{sid}.png", sem)
        lm = np.full((h, w), SKY, np.uint16)
        lm[h // 2:, :] = WALL
        lm[: h // 3, : w // 3] = PERSON_CTX
        lm[h - 8:, w - 8:] = TV
        sio.savemat(root / "pascal-context/trainval" / f"{sid}.mat", {"LabelMap": lm})
        nv = rng.normal(size=(h, w, 3))
        nv /= np.linalg.norm(nv, axis=-1, keepdims=True)
        npng = np.round((nv + 1) / 2 * 255).astype(np.uint8)
        Image.fromarray(npng).save(root / "normals_distill" / f"{sid}.png")
        sal = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        Image.fromarray(sal).save(root / "sal_distill" / f"{sid}.png")
        parts = np.full((h, w), 255, np.uint8)
        if n == 0:  # one person with parts + a dog with parts (ignored)
            objs = [_obj("person", 15, _box(hw, 0, 30, 0, 30), [
                ("hair", _box(hw, 0, 4, 0, 10)), ("head", _box(hw, 2, 8, 0, 10)),
                ("torso", _box(hw, 8, 18, 0, 10)), ("luarm", _box(hw, 8, 14, 10, 12)),
                ("rlarm", _box(hw, 14, 18, 10, 12)), ("ruleg", _box(hw, 18, 24, 0, 5)),
                ("lfoot", _box(hw, 24, 30, 0, 5))]),
                _obj("dog", 12, _box(hw, 30, 40, 30, 50), [("head", _box(hw, 30, 35, 30, 40))])]
            parts = np.zeros((h, w), np.uint8)
            parts[0:4, 0:10] = 1
            parts[2:8, 0:10] = 1
            parts[8:18, 0:10] = 2
            parts[8:14, 10:12] = 3
            parts[14:18, 10:12] = 4
            parts[18:24, 0:5] = 5
            parts[24:30, 0:5] = 6
        elif n == 1:  # no person: all ignore
            objs = [_obj("cat", 8, _box(hw, 0, 10, 0, 10), [])]
        elif n == 2:  # a person with all 24 part names, painted in order, + one without parts
            plist = [(nm, _box(hw, 2 * k, 2 * k + 2, 0, 20)) for k, nm in enumerate(PERSON_PARTS)]
            objs = [_obj("person", 15, _box(hw, 0, 48, 0, 20), plist),
                    _obj("person", 15, _box(hw, 0, 48, 30, 44), [])]
            parts = np.zeros((h, w), np.uint8)
            for k, nm in enumerate(PERSON_PARTS):
                parts[2 * k: 2 * k + 2, 0:20] = PART_GROUPS[nm]
        else:  # no objects with parts at all
            objs = [_obj("person", 15, _box(hw, 0, 5, 0, 5), [])]
        write_anno(root / "human_parts" / f"{sid}.mat", sid, objs)
        # expected values
        with Image.open(root / "JPEGImages" / f"{sid}.jpg") as im:
            img_dec = np.asarray(im.convert("RGB"))
        dec = 2.0 * npng.astype(np.float64) / 255 - 1
        dec /= np.linalg.norm(dec, axis=-1, keepdims=True)
        keep = np.isin(lm, list(NORMALS_VALID_CONTEXT_IDS))
        dec[~keep] = 0
        expect[sid] = {"image": img_dec, "semseg": sem, "parts": parts, "normals": dec,
                       "saliency": (sal / 255.0 > 0.5).astype(np.uint8), "label_map": lm}
    return expect


@pytest.fixture()
def pascal(tmp_path: Path):
    root = tmp_path / "PASCAL_MT"
    expect = make_pascal(root)
    return {"root": root, "expect": expect, "out": tmp_path / "pascal.h5"}


def test_shared_normal_classes():
    assert {WALL, PERSON_CTX, TV} <= NORMALS_VALID_CONTEXT_IDS
    assert SKY not in NORMALS_VALID_CONTEXT_IDS
    assert 431 not in NORMALS_VALID_CONTEXT_IDS  # "unknown"
    assert len(NORMALS_VALID_CONTEXT_IDS) == 170
    assert set(PART_GROUPS) == set(PERSON_PARTS)
    assert sorted(set(PART_GROUPS.values())) == [1, 2, 3, 4, 5, 6]


def test_edges_from_label_map_lie_on_label_changes():
    lm = np.zeros((20, 24), np.int64)
    lm[:, 12:] = 7
    lm[5:9, 3:6] = 3
    e = edges_from_label_map(lm)
    assert e.dtype == np.uint8 and set(np.unique(e)) <= {0, 1}
    change = np.zeros(lm.shape, bool)
    change[:, :-1] |= lm[:, :-1] != lm[:, 1:]
    change[:, 1:] |= lm[:, :-1] != lm[:, 1:]
    change[:-1] |= lm[:-1] != lm[1:]
    change[1:] |= lm[:-1] != lm[1:]
    assert (e.astype(bool) <= change).all()  # only next to a label change
    assert e[1:-1, 11:13].any(axis=1).all()  # the boundary is found (thinning eats the ends)
    assert e[0:4, 0:2].sum() == 0 and e[:, 16:].sum() == 0  # nothing inside regions
    # thinned: the 2-pixel-wide raw response becomes 1 pixel wide on the straight boundary
    assert (e[12:, 11:13].sum(axis=1) == 1).all()


def test_convert_every_field(pascal):
    summary = convert_pascal(pascal["root"], pascal["out"], pad=PAD, progress=False)
    assert summary["splits"] == {"train": 3, "val": 2}
    assert summary["resized"] == 0
    with h5py.File(pascal["out"], "r") as f:
        assert f.attrs["dataset"] == "pascal"
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["semseg_class_names"]]
        assert names == list(VOC_CLASS_NAMES)
        assert len(f.attrs["parts_class_names"]) == 7
        for split, ids in (("train", TRAIN), ("val", VAL)):
            g = f[split]
            assert g["image"].shape == (len(ids), PAD, PAD, 3)
            assert g["hw"][:].tolist() == [list(hw) for hw in ids.values()]
            assert g["index"][:].tolist() == [int(s.replace("_", "")) for s in ids]
            for j, (sid, (h, w)) in enumerate(ids.items()):
                ex = pascal["expect"][sid]
                np.testing.assert_array_equal(g["image"][j, :h, :w], ex["image"])
                np.testing.assert_array_equal(g["semseg"][j, :h, :w], ex["semseg"])
                np.testing.assert_array_equal(g["parts"][j, :h, :w], ex["parts"])
                np.testing.assert_allclose(g["normals"][j, :h, :w], ex["normals"], atol=1e-5)
                np.testing.assert_array_equal(g["saliency"][j, :h, :w], ex["saliency"])
                np.testing.assert_array_equal(g["edge"][j, :h, :w],
                                              edges_from_label_map(ex["label_map"]))
                # padding: image 0, labels 255, normals 0
                for key, fill in (("image", 0), ("semseg", 255), ("parts", 255),
                                  ("saliency", 255), ("edge", 255), ("normals", 0)):
                    a = g[key][j]
                    assert (a[h:] == fill).all() and (a[:, w:] == fill).all(), key
        # person parts: the VOC12 semseg was preferred, the dog's head ignored, no-person -> 255
        tr = f["train"]
        assert (tr["parts"][1, :36, :60] == 255).all()
        assert tr["parts"][0, 32, 32] == 0  # the dog's head is background
        assert (tr["parts"][2, :48, 30:44] == 0).all()  # a person without parts: background
        assert (f["val"]["parts"][0, :30, :30] == 255).all()
        nrm = tr["normals"][0, :40, :50]
        valid = np.linalg.norm(nrm, axis=-1) > 0
        np.testing.assert_allclose(np.linalg.norm(nrm[valid], axis=-1), 1, atol=1e-5)
        lm = pascal["expect"]["2008_000002"]["label_map"]
        assert not valid[lm == SKY].any() and valid[lm == WALL].all() and valid[lm == TV].all()


def test_loader_honours_hw(pascal):
    """The reader crops to hw and, untransformed, re-pads labels with 255 outside it."""
    from mtlkit.data.h5 import MultiTaskH5Dataset

    convert_pascal(pascal["root"], pascal["out"], pad=PAD, progress=False)
    ds = MultiTaskH5Dataset(pascal["out"], "train")
    assert ds.num_classes == {"semseg": 21, "parts": 7}
    arrays, index, hw = ds.read_numpy(1)
    assert hw == (36, 60) and index == 2008000003
    assert arrays["semseg"].shape == (36, 60)
    s = ds[1]
    assert s["meta"]["hw"] == (36, 60)
    assert tuple(s["semseg"].shape) == (PAD, PAD)
    assert (s["semseg"][36:] == 255).all() and (s["semseg"][:, 60:] == 255).all()
    assert (s["edge"][0, 36:] == 255).all() and (s["saliency"][0, :, 60:] == 255).all()
    assert (s["normals"][:, 36:] == 0).all()


def test_map_of_other_size_is_resized(pascal):
    sid, (h, w) = "2010_000005", VAL["2010_000005"]
    sal = pascal["expect"][sid]["saliency"] * 255
    Image.fromarray(sal[::2, ::2].astype(np.uint8)).save(pascal["root"] / "sal_distill" /
                                                        f"{sid}.png")
    summary = convert_pascal(pascal["root"], pascal["out"], pad=PAD, progress=False)
    assert summary["resized"] == 1
    with h5py.File(pascal["out"], "r") as f:
        np.testing.assert_array_equal(f["val"]["saliency"][1, :h:2, :w:2], sal[::2, ::2] // 255)


def test_limit_and_default_pad(pascal):
    convert_pascal(pascal["root"], pascal["out"], limit=1, progress=False)
    with h5py.File(pascal["out"], "r") as f:
        assert f["train"]["image"].shape == (1, 512, 512, 3)
        assert f["val"]["index"][:].tolist() == [2010000001]


# ---------------------------------------------------------------------------------------------
def _expect_error(pascal, match: str, **kw) -> None:
    with pytest.raises(DataError, match=match) as ei:
        convert_pascal(pascal["root"], pascal["out"], pad=kw.pop("pad", PAD), progress=False)
    assert "\n" not in str(ei.value)
    assert not pascal["out"].exists()
    assert not Path(str(pascal["out"]) + ".tmp").exists()


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="PASCAL_MT folder .*nothing not found"):
        convert_pascal(tmp_path / "nothing", tmp_path / "o.h5", progress=False)


def test_missing_pieces(pascal):
    root = pascal["root"]
    (root / "sal_distill" / "2009_000010.png").unlink()
    _expect_error(pascal, r"saliency .*sal_distill/2009_000010\.png not found")
    (root / "ImageSets/Context/val.txt").unlink()
    _expect_error(pascal, r"split list .*val\.txt not found")
    import shutil

    shutil.rmtree(root / "human_parts")
    _expect_error(pascal, r"PASCAL_MT sub-folder .*PASCAL_MT/human_parts not found")


def test_overlapping_splits(pascal):
    (pascal["root"] / "ImageSets/Context/val.txt").write_text("2008_000003\n")
    _expect_error(pascal, r"'2008_000003' is in both train\.txt and val\.txt")


def test_bad_annotations(pascal):
    root, sid = pascal["root"], "2010_000005"
    hw = VAL[sid]
    write_anno(root / "human_parts" / f"{sid}.mat", sid,
               [_obj("person", 15, _box(hw, 0, 5, 0, 5), [("tail", _box(hw, 0, 2, 0, 2))])])
    _expect_error(pascal, r"2010_000005\.mat: anno\.objects\(1\)\.parts\(1\) has unknown person "
                          r"part 'tail'")
    sio.savemat(root / "human_parts" / f"{sid}.mat", {"annotation": np.zeros(3)})
    _expect_error(pascal, r"part annotation .*2010_000005\.mat has no key 'anno'")
    (root / "human_parts" / f"{sid}.mat").write_bytes(b"garbage")
    _expect_error(pascal, r"cannot read part annotation .*2010_000005\.mat")


def test_bad_label_files(pascal):
    root, sid = pascal["root"], "2009_000010"
    sio.savemat(root / "pascal-context/trainval" / f"{sid}.mat", {"Labels": np.zeros((2, 2))})
    _expect_error(pascal, r"2009_000010\.mat has no key 'LabelMap'")


def test_bad_semseg_and_oversized(pascal):
    root, sid = pascal["root"], "2008_000003"
    save_palette_png(root / "semseg/pascal-context" / f"{sid}.png", np.full((36, 60), 30))
    _expect_error(pascal, r"segmentation .*2008_000003\.png has class 30")
    make_pascal(root)  # repair
    _expect_error(pascal, r"image 2008_000003 .* is 36x60, larger than the 55x55 canvas", pad=55)
    (root / "JPEGImages" / "2008_000002.jpg").write_bytes(b"not a jpeg")
    _expect_error(pascal, r"cannot read image .*2008_000002\.jpg")


def test_cli(pascal):
    from typer.testing import CliRunner

    from cli.main import app

    def cli(*args):
        return CliRunner().invoke(app, ["preprocess", "pascal", *[str(a) for a in args]],
                                  catch_exceptions=False)

    res = cli("--root", pascal["root"], "--out", pascal["out"], "--pad", PAD)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "3 train / 2 val" in text and f"{PAD}x{PAD}" in text
    with h5py.File(pascal["out"], "r") as f:
        assert f["train"]["hw"][:].tolist() == [list(hw) for hw in TRAIN.values()]
    pascal["out"].unlink()
    res = cli("--root", pascal["root"], "--out", pascal["out"], "--pad", 40)
    assert res.exit_code == 2, res.output
    assert "larger than the 40x40 canvas" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not pascal["out"].exists()
