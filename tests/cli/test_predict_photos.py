"""``mtlkit predict`` on a user's own photos (issue 17, section 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlkit.engine.predict import STRIDE, prepare_photo
from mtlkit.viz import make_panel, palette
from tests.cli._helpers import invoke, one_line_error

# name, (height, width): portrait, landscape, tiny and odd sizes, every Pillow format we accept
PHOTOS = [("wide.jpg", (90, 200)), ("tall.png", (150, 70)), ("scan.tif", (41, 53)),
          ("icon.bmp", (33, 33)), ("web.webp", (64, 100)), ("wide.png", (20, 30))]


def _photos(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in PHOTOS:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return dict(PHOTOS)


@pytest.fixture(scope="module")
def predicted(trained_run: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, object, dict[str, tuple[int, int]]]:
    base = tmp_path_factory.mktemp("photos")
    sizes = _photos(base / "in")
    res = invoke("predict", "--checkpoint", trained_run / "last.pt", "--images", base / "in",
                 "--out", base / "out")
    return base / "out", res, sizes


def test_every_readable_photo_gets_its_files(predicted) -> None:
    out, res, sizes = predicted
    assert res.exit_code == 0, res.output
    names = {"wide_jpg": (90, 200), "wide_png": (20, 30), "tall": (150, 70), "scan": (41, 53),
             "icon": (33, 33), "web": (64, 100)}  # same stems keep distinct outputs
    for name, (h, w) in names.items():
        assert (out / f"{name}.png").is_file(), name
        sem = Image.open(out / f"{name}.semseg.png")
        assert sem.mode == "P" and sem.size == (w, h)  # indexed, at the photo's resolution
        assert max(np.asarray(sem).max(), 0) < 9
        assert tuple(sem.getpalette()[:3]) == tuple(int(c) for c in palette()[0])
        depth = np.load(out / f"{name}.depth.npy")
        assert depth.shape == (h, w) and depth.dtype == np.float32
        d_png = Image.open(out / f"{name}.depth.png")
        assert d_png.size[0] == w and d_png.size[1] > h  # the scale bar below the map
        assert Image.open(out / f"{name}.normals.png").size == (w, h)
        edge = Image.open(out / f"{name}.edge.png")
        assert edge.size == (w, h) and edge.mode == "L"
    assert len([p for p in out.glob("*.png") if "." not in p.stem]) == len(names)


def test_unreadable_photo_is_reported_and_skipped(predicted) -> None:
    out, res, _ = predicted
    text = " ".join(res.output.split())
    assert "skipped" in text and "broken.jpg" in text
    assert "Traceback" not in res.output
    assert not list(out.glob("broken*"))
    assert "wrote 6 panels" in text


def test_nothing_readable_is_an_error(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"garbage")
    res = invoke("predict", "--checkpoint", trained_run / "last.pt", "--images",
                 tmp_path / "in", "--out", tmp_path / "out")
    one_line_error(res, "none of the 1 image(s)")


@pytest.mark.parametrize(("hw", "train"), [((90, 200), (64, 80)), ((150, 70), (64, 80)),
                                           ((1000, 1000), (128, 160)), ((33, 33), (64, 80))])
def test_aspect_ratio_is_kept_and_padded_to_the_stride(hw: tuple[int, int],
                                                       train: tuple[int, int]) -> None:
    rgb = np.zeros((*hw, 3), dtype=np.uint8)
    x, (h, w) = prepare_photo(rgb, train)
    assert min(h, w) == min(train)  # the short side at the training scale
    assert abs(h / w - hw[0] / hw[1]) < 0.03
    assert x.shape[1] % STRIDE == 0 and x.shape[2] % STRIDE == 0
    assert x.shape[1] - h < STRIDE and x.shape[2] - w < STRIDE


def test_panel_has_a_class_legend_and_a_depth_colour_bar() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((3, 32, 40), dtype=np.float32)
    preds = {"semseg": np.full((32, 40), 3), "depth": rng.uniform(1, 4, (1, 32, 40))}
    plain = make_panel(image, {"normals": np.zeros((3, 32, 40))})
    panel = make_panel(image, preds, class_names={"semseg": [f"c{i}" for i in range(9)]})
    assert panel.height > plain.height + 20  # strips below the grid
    footer = np.asarray(panel)[32 + 14:]
    colours = {tuple(c) for c in footer.reshape(-1, 3)}
    assert tuple(int(v) for v in palette()[3]) in colours  # the swatch of class 3
    assert len(colours) > 50  # the colour ramp of the depth bar
