"""Procedural scenes: label consistency, determinism, files, registry builders, DataLoader."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlkit.data import build_dataset, collate
from mtlkit.data.geometry import normals_from_depth
from mtlkit.data.h5 import MultiTaskH5Dataset, read_attrs
from mtlkit.data.synthetic import (
    CLASS_NAMES,
    PERSON,
    ROOM_CLASSES,
    build_synthetic_h5,
    default_synthetic_path,
    ensure_synthetic,
    render_scene,
    scene_rng,
)

SIZE = (64, 80)


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    return [render_scene(scene_rng(0, "train", i), SIZE) for i in range(16)]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "syn.h5"
    return build_synthetic_h5(out, train=6, val=3, size=(48, 64), seed=5, progress=False)


def test_shapes_and_dtypes(scenes) -> None:
    s = scenes[0]
    h, w = SIZE
    assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.uint8
    for k in ("semseg", "edge", "parts", "saliency"):
        assert s[k].shape == (h, w) and s[k].dtype == np.uint8
    assert s["depth"].shape == (h, w) and s["depth"].dtype == np.float32
    assert s["normals"].shape == (h, w, 3) and s["normals"].dtype == np.float32
    assert len(CLASS_NAMES) >= 8


def test_depth_positive_and_normals_unit(scenes) -> None:
    for s in scenes:
        assert np.isfinite(s["depth"]).all() and (s["depth"] > 0).all()  # closed room
        assert s["depth"].max() < 20
        np.testing.assert_allclose(np.linalg.norm(s["normals"], axis=-1), 1.0, atol=1e-5)


def test_normals_face_the_camera(scenes) -> None:
    for s in scenes:
        fx, fy, cx, cy = s["intrinsics"]
        h, w = s["depth"].shape
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((h, w))], -1)
        assert ((s["normals"] * rays).sum(-1) < 1e-6).all()


def test_normals_agree_with_depth_geometry(scenes) -> None:
    """Normals re-derived from the rendered depth match the rendered normals on smooth parts."""
    for s in scenes[:6]:
        fx, fy, cx, cy = s["intrinsics"]
        est = normals_from_depth(s["depth"], fx, fy, cx, cy, smooth=1, max_rel_jump=0.2)
        from scipy import ndimage

        flat = ndimage.minimum_filter(s["edge"] == 0, size=5)
        ok = flat & (est != 0).any(-1)
        assert ok.mean() > 0.3
        cos = np.clip((est[ok] * s["normals"][ok]).sum(-1), -1, 1)
        assert np.median(np.degrees(np.arccos(cos))) < 2.0


def test_classes_in_range_and_diverse(scenes) -> None:
    seen = set()
    for s in scenes:
        assert s["semseg"].max() < len(CLASS_NAMES)
        seen |= set(np.unique(s["semseg"]).tolist())
    assert len(seen) >= 7  # floor, wall, ceiling, several object classes


def test_edges_lie_on_label_boundaries(scenes) -> None:
    for s in scenes:
        inst, sem, e = s["instance"], s["semseg"], s["edge"]
        assert set(np.unique(e)) <= {0, 1} and e.any()
        pad = np.pad(inst, 1, mode="edge")
        differs = np.zeros(inst.shape, bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            differs |= pad[dy:dy + inst.shape[0], dx:dx + inst.shape[1]] != inst
        np.testing.assert_array_equal(e.astype(bool), differs)
        # every semantic change is an edge
        sem_change = np.zeros(sem.shape, bool)
        sem_change[:, :-1] |= sem[:, :-1] != sem[:, 1:]
        sem_change[:-1, :] |= sem[:-1, :] != sem[1:, :]
        assert e[sem_change].all()


def test_parts_only_on_person(scenes) -> None:
    with_person = without = 0
    for s in scenes:
        person = s["semseg"] == PERSON
        if person.any():
            with_person += 1
            assert (s["parts"][~person] == 0).all()
            p = s["parts"][person]
            assert (p >= 1).all() and (p <= 6).all()
        else:
            without += 1
            assert (s["parts"] == 255).all()
    assert with_person > 0 and without > 0


def test_person_parts_layout() -> None:
    # head above torso above lower legs (image y grows downwards) when all are visible
    checked = 0
    for i in range(30):
        s = render_scene(scene_rng(1, "train", i), SIZE)
        rows = {k: np.nonzero(s["parts"] == k)[0] for k in (1, 2, 6)}
        if all(len(r) > 5 for r in rows.values()):
            assert rows[1].mean() < rows[2].mean() < rows[6].mean()
            checked += 1
    assert checked >= 2


def test_saliency_consistent_with_semseg(scenes) -> None:
    for s in scenes:
        objects = ~np.isin(s["semseg"], ROOM_CLASSES)
        np.testing.assert_array_equal(s["saliency"].astype(bool), objects)
        assert s["saliency"].any()


def test_classes_are_visually_distinct(scenes) -> None:
    """Mean colours of the object classes differ (a learnability smoke test)."""
    cols: dict[int, list[np.ndarray]] = {}
    for s in scenes:
        for c in (3, 4, 5):  # box, sphere, cylinder: red-ish, blue-ish, green-ish
            m = s["semseg"] == c
            if m.sum() > 20:
                cols.setdefault(c, []).append(s["image"][m].mean(0))
    means = {c: np.mean(v, 0) for c, v in cols.items()}
    assert len(means) == 3
    assert means[3][0] > means[3][2]  # boxes: more red than blue
    assert means[4][2] > means[4][0]  # spheres: more blue than red
    assert means[5][1] > means[5][2]  # cylinders: more green than blue


def test_deterministic_per_seed() -> None:
    a = render_scene(scene_rng(3, "train", 7), SIZE)
    b = render_scene(scene_rng(3, "train", 7), SIZE)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = render_scene(scene_rng(4, "train", 7), SIZE)
    d = render_scene(scene_rng(3, "val", 7), SIZE)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["image"], d["image"])


def test_build_file(small_file: Path) -> None:
    a = read_attrs(small_file)
    assert a["dataset"] == "synthetic"
    assert a["tasks"] == ["semseg", "depth", "normals", "edge", "parts", "saliency"]
    assert a["semseg_class_names"] == list(CLASS_NAMES)
    ds = MultiTaskH5Dataset(small_file, "val")
    assert len(ds) == 3 and ds.num_classes == {"semseg": len(CLASS_NAMES), "parts": 7}
    raw, index, hw = ds.read_numpy(2)
    ref = render_scene(scene_rng(5, "val", 2), (48, 64))
    assert index == 2 and hw == (48, 64)
    for k in ("image", "semseg", "depth", "normals", "edge", "parts", "saliency"):
        np.testing.assert_array_equal(raw[k], ref[k])


def test_registry_and_dataloader(small_file: Path) -> None:
    ds = build_dataset("synthetic-nyud", path=small_file, split="train", train=True,
                       size=(48, 64))
    assert ds.tasks == ["semseg", "depth", "normals", "edge"]
    dsp = build_dataset("synthetic-pascal", path=small_file, split="val")
    assert dsp.tasks == ["semseg", "parts", "saliency", "normals", "edge"]
    assert dsp[0]["parts"].dtype == torch.int64
    torch.manual_seed(0)
    dl = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate, shuffle=True)
    batches = list(dl)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (3, 3, 48, 64) and b["normals"].shape == (3, 3, 48, 64)
    assert b["edge"].shape == (3, 1, 48, 64) and b["semseg"].dtype == torch.int64
    valid = (b["normals"] != 0).any(1)
    assert torch.allclose(b["normals"].norm(dim=1)[valid], torch.ones(()), atol=1e-5)
    assert sorted(sum((x["meta"]["index"] for x in batches), [])) == list(range(6))


def _ensure_worker(cache: str, q) -> None:  # runs in a child process
    import os

    os.environ["MTLKIT_CACHE"] = cache
    from mtlkit.data.synthetic import ensure_synthetic

    q.put(str(ensure_synthetic(train=3, val=1, size=(24, 32), seed=9, progress=False)))


def test_ensure_synthetic_cache_and_race(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path))
    expect = default_synthetic_path(train=3, val=1, size=(24, 32), seed=9)
    assert expect.parent == tmp_path and "24x32" in expect.name
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ensure_worker, args=(str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert {q.get(), q.get()} == {str(expect)}
    assert len(MultiTaskH5Dataset(expect, "train")) == 3
    mtime = expect.stat().st_mtime_ns
    assert ensure_synthetic(train=3, val=1, size=(24, 32), seed=9, progress=False) == expect
    assert expect.stat().st_mtime_ns == mtime  # not rebuilt
    assert not list(tmp_path.glob("*.tmp"))
