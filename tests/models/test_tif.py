"""TIF (paper 001): shapes for every task set and odd sizes, backward, the affinity-upsampling
choice of eq. 11, SFD/LTHD shapes, kwargs validation, and a short training run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.tif import LTHD, SAFF, SFD, resize_to, upsample_affinity
from mtlkit.registry import ARCHS
from mtlkit.tasks import get_task

TASK_SETS = {
    "nyud": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "seg+depth": {"semseg": 40, "depth": 1},
    "pascal": {"semseg": 21, "parts": 7, "saliency": 1, "normals": 3, "edge": 1},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread avoids oversubscribing a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("size", [(64, 80), (72, 88)])
@pytest.mark.parametrize("task_set", list(TASK_SETS))
def test_forward_backward_shapes(task_set: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    tasks = TASK_SETS[task_set]
    model = ARCHS.get("tif")(tasks, backbone="tiny")
    out = model(torch.randn(2, 3, *size))
    assert set(out["final"]) == set(tasks) and out["aux"] == []
    for t, c in tasks.items():
        assert out["final"][t].shape == (2, c, *size)
    sum(v.mean() for v in out["final"].values()).backward()
    for t in tasks:  # both SFD scales feed the output (scale 3 also through the affinity)
        for sfd in model.sfd[t]:
            assert sfd.q.weight.grad is not None and sfd.q.weight.grad.abs().sum() > 0
            assert sfd.kv.grad is not None and sfd.kv.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _interp_matrix(src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """U: (N_dst, N_src), column n = the bilinear resize of the n-th one-hot map of ``src``."""
    n = src[0] * src[1]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *src)
    cols = F.interpolate(eye, size=dst, mode="bilinear", align_corners=False)
    return cols.reshape(n, -1).t()


@pytest.mark.parametrize("src,dst", [((2, 3), (4, 6)), ((3, 3), (5, 6)), ((4, 5), (4, 5))])
def test_upsample_affinity_is_U_A_Ut(src: tuple[int, int], dst: tuple[int, int]) -> None:
    """The documented choice for f_up (eq. 11): bilinear on the query and the key grids."""
    torch.manual_seed(0)
    n = src[0] * src[1]
    a = torch.randn(2, n, n, dtype=torch.float64)
    U = _interp_matrix(src, dst)
    expect = U @ a @ U.t()
    torch.testing.assert_close(upsample_affinity(a, src, dst), expect)
    if src == dst:
        torch.testing.assert_close(upsample_affinity(a, src, dst), a)


def test_upsample_affinity_properties() -> None:
    torch.manual_seed(0)
    src, dst = (3, 4), (6, 8)
    qa, kb = torch.randn(1, 12, 1), torch.randn(1, 12, 1)
    up = upsample_affinity(qa @ kb.transpose(1, 2), src, dst)
    U = _interp_matrix(src, dst).float()
    torch.testing.assert_close(up, (U @ qa) @ (U @ kb).transpose(1, 2))  # rank one stays rank one
    const = torch.full((1, 12, 12), 0.7)
    torch.testing.assert_close(upsample_affinity(const, src, dst), torch.full((1, 48, 48), 0.7))
    # a query's row is moved to the upsampled positions: the row of a fine query at the centre
    # of coarse cell (1, 1) equals the coarse row of that cell, resized on the key grid
    a = torch.randn(1, 12, 12)
    row = F.interpolate(a[:, 5].reshape(1, 1, 3, 4), size=dst, mode="bilinear",
                        align_corners=False).flatten()
    up = upsample_affinity(a, src, dst)
    fine = [r * 8 + c for r in (2, 3) for c in (2, 3)]  # the 2x2 fine cells inside coarse (1, 1)
    mix = up[0, fine].mean(0)
    assert torch.corrcoef(torch.stack([mix, row]))[0, 1] > 0.9


def test_sfd_and_lthd_shapes() -> None:
    torch.manual_seed(0)
    sfd = SFD(16, n_proj=3)
    rx, a = sfd(torch.randn(2, 16, 3, 5), torch.randn(2, 16, 3, 5))
    assert rx.shape == (2, 16, 3, 5) and a.shape == (2, 15, 15)
    lthd = LTHD(16)
    out = lthd(torch.randn(2, 16, 13, 19), torch.randn(2, 15, 15), (3, 5))
    assert out.shape == (2, 16, 13, 19)


def test_saff_aligns_every_scale() -> None:
    widths = (8, 12, 16, 20)
    feats = [torch.randn(1, c, 18 // 2**i + 1, 22 // 2**i + 1) for i, c in enumerate(widths)]
    for i in range(4):
        out = SAFF(list(widths), i, 10)(feats)
        assert out.shape == (1, 10, *feats[i].shape[-2:])
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert resize_to(x, (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # average pooling


@pytest.mark.parametrize("kwargs", [{"channels": 0}, {"chanels": 32}, {"aux_tasks": ["edge"]}])
def test_bad_kwargs(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        create_model("tif", {"semseg": 9, "depth": 1}, "tiny", **kwargs)


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("tif_*.yaml"))


def test_config_presets_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_presets_build(path: Path) -> None:
    """Every preset loads and its model kwargs build (tiny backbone, narrow width, for speed)."""
    from mtlkit.config import load_config

    cfg = load_config(path)
    assert cfg.model.arch == "tif"
    kwargs = dict(cfg.model.kwargs)
    kwargs.pop("backbone_kwargs", None)  # timm options; the tiny backbone stands in here
    kwargs["channels"] = 16
    tasks = {t: get_task(t, 9).out_channels for t in cfg.data.tasks}
    model = create_model("tif", tasks, "tiny", **kwargs)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 40, 56))
    assert set(out["final"]) == set(tasks)


# ----------------------------------------------------------------------------- short training
def _fixed_batch(num_classes: int, size: tuple[int, int], n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, w = size
    depth = 1 + torch.rand(n, 1, h, w, generator=g)
    normals = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    return {"image": torch.randn(n, 3, h, w, generator=g),
            "semseg": torch.randint(0, num_classes, (n, h, w), generator=g),
            "depth": depth, "normals": normals,
            "edge": (torch.rand(n, 1, h, w, generator=g) > 0.9).float()}


def _nyud_batch(basetemp: Path, size: tuple[int, int] = (64, 80)) -> tuple[dict, int]:
    """4 synthetic NYUD-like samples (rendered once per session); a fixed random batch when the
    data package is not available."""
    try:
        from mtlkit.data import build_dataset, collate, default_synthetic_path, ensure_synthetic
    except ImportError:
        return _fixed_batch(9, size), 9
    path = default_synthetic_path()
    if not path.exists():
        path = ensure_synthetic(basetemp / "arch2-synthetic.h5", train=4, val=0, size=size,
                                progress=False)
    ds = build_dataset("synthetic-nyud", path=str(path), split="train", size=size, train=False)
    return collate([ds[i] for i in range(4)]), ds.num_classes["semseg"]


def _total_loss(out: dict, batch: dict, specs: dict) -> torch.Tensor:
    total = torch.zeros(())
    for t, spec in specs.items():
        total = total + spec.weight * spec.loss(out["final"][t], batch[t])
        for aux in out["aux"]:
            if t in aux:
                total = total + spec.weight * spec.loss(aux[t], batch[t])
    for v in out.get("extra_losses", {}).values():
        total = total + v
    return total


def test_short_run_lowers_loss(tmp_path_factory: pytest.TempPathFactory) -> None:
    torch.manual_seed(0)
    batch, k = _nyud_batch(tmp_path_factory.getbasetemp())
    specs = {t: get_task(t, k if t == "semseg" else None)
             for t in ("semseg", "depth", "normals", "edge")}
    model = create_model("tif", {t: s.out_channels for t, s in specs.items()}, "tiny")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = _total_loss(model(batch["image"]), batch, specs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    model.eval()
    with torch.no_grad():
        out = model(batch["image"])
    assert out["final"]["semseg"].shape == (4, k, 64, 80)
