"""MT-CP (paper 003): shapes for every task set and odd sizes, backward, the coherence loss in
``extra_losses`` (training mode only), the LPS default, trace-back structure, kwargs validation and
a short training run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.mtcp import CoherenceFusion
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
    model = ARCHS.get("mtcp")(tasks, backbone="tiny")
    assert model.default_weighting == "lps"
    out = model(torch.randn(2, 3, *size))
    assert set(out["final"]) == set(tasks)
    for t, c in tasks.items():
        assert out["final"][t].shape == (2, c, *size)
    # initial prediction (1/8) + SRM predictions of stages 3, 2, 1 (1/32, 1/16, 1/8)
    assert len(out["aux"]) == 4
    for aux, s in zip(out["aux"], [8, 32, 16, 8], strict=True):
        assert set(aux) == set(tasks)
        for t, c in tasks.items():
            assert aux[t].shape[:2] == (2, c)
            assert aux[t].shape[-2:] == (-(-size[0] // s), -(-size[1] // s))
    coh = out["extra_losses"]["coherence"]
    assert coh.dim() == 0 and 0.0 <= coh.item() <= 2.0
    loss = sum(v.mean() for v in out["final"].values()) + coh
    loss = loss + sum(v.mean() for a in out["aux"] for v in a.values())
    loss.backward()
    for t in tasks:  # every decoder stage is on the path (trace-back through all SRMs)
        for stage in model.decoders[t].stages:
            assert all(p.grad is not None and torch.isfinite(p.grad).all()
                       for p in stage.parameters())
    model.eval()
    with torch.no_grad():
        assert "extra_losses" not in model(torch.randn(1, 3, *size))


def test_coherence_loss() -> None:
    """1 - cosine similarity of the main and auxiliary branches: zero when they are parallel."""
    torch.manual_seed(0)
    cfm = CoherenceFusion(8, n_aux=2)
    x = torch.randn(2, 8, 6, 7)
    h, coh = cfm(x, [torch.randn(2, 8, 6, 7), torch.randn(2, 8, 6, 7)])
    assert h.shape == x.shape and 0.0 <= coh.item() <= 2.0
    coh.backward()
    assert cfm.gates[0].weight.grad.abs().sum() > 0  # the loss trains the gates and branches
    cfm.main = cfm.aux = torch.nn.Identity()
    cfm.n_aux = 1
    cfm.gates = torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 1)])
    torch.nn.init.zeros_(cfm.gates[0].weight)
    torch.nn.init.constant_(cfm.gates[0].bias, 50.0)  # gate = 1: X_aux = X_main
    _, coh = cfm(x, [x])
    assert coh.item() < 1e-5
    single = CoherenceFusion(8, n_aux=0)
    h, coh = single(x, [])
    assert h.shape == x.shape and coh.item() == 0.0


def test_coherence_weight_scales_extra_loss() -> None:
    tasks = {"semseg": 9, "depth": 1}
    x = torch.randn(2, 3, 64, 80)
    outs = []
    for w in (1.0, 0.25):
        torch.manual_seed(0)
        outs.append(create_model("mtcp", tasks, "tiny", coherence_weight=w)(x))
    c1, c2 = (o["extra_losses"]["coherence"] for o in outs)
    torch.testing.assert_close(c2, 0.25 * c1)


def test_single_task_and_two_stages() -> None:
    model = create_model("mtcp", {"depth": 1}, "tiny", stages=2, depths=[1, 1])
    out = model(torch.randn(1, 3, 72, 88))
    assert out["final"]["depth"].shape == (1, 1, 72, 88) and len(out["aux"]) == 3
    assert out["extra_losses"]["coherence"].item() == 0.0


@pytest.mark.parametrize("kwargs", [
    {"stages": 0}, {"depths": [1, 2]}, {"coherence_weight": -1.0}, {"chanels": 32},
    {"aux_tasks": ["edge"]},
])
def test_bad_kwargs(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        create_model("mtcp", {"semseg": 9, "depth": 1}, "tiny", **kwargs)


CONFIGS = config_presets("mtcp")


def test_config_presets_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_presets_build(path: Path) -> None:
    """Every preset loads and its model kwargs build (tiny backbone, narrow width, for speed)."""
    cfg, model = build_preset("mtcp", path)
    assert cfg.train.weighting == model.default_weighting == "lps"


# ----------------------------------------------------------------------------- short training
def test_short_run_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("mtcp", tiny_h5)
