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
from tests.models._arch_helpers import (
    TASK_SETS,
    build_preset,
    check_short_run_lowers_loss,
    config_presets,
    single_thread,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


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


CONFIGS = config_presets("tif")


def test_config_presets_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_presets_build(path: Path) -> None:
    """Every preset loads and its model kwargs build (tiny backbone, narrow width, for speed); the
    paper's presets use ATRC's augmentation ("identical experimental settings as" ATRC)."""
    cfg, _ = build_preset("tif", path)
    if not cfg.data.dataset.startswith("synthetic"):
        assert cfg.data.augment == "atrc"


# ----------------------------------------------------------------------------- short training
def test_short_run_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("tif", tiny_h5)
