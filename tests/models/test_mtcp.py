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


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("mtcp_*.yaml"))


def test_config_presets_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_presets_build(path: Path) -> None:
    """Every preset loads and its model kwargs build (tiny backbone, narrow width, for speed)."""
    from mtlkit.config import load_config

    cfg = load_config(path)
    assert cfg.model.arch == "mtcp"
    kwargs = dict(cfg.model.kwargs)
    kwargs.pop("backbone_kwargs", None)  # timm options; the tiny backbone stands in here
    kwargs["channels"] = 16
    tasks = {t: get_task(t, 9).out_channels for t in cfg.data.tasks}
    model = create_model("mtcp", tasks, "tiny", **kwargs)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 40, 56))
    assert set(out["final"]) == set(tasks)
    assert cfg.train.weighting == model.default_weighting == "lps"


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
    model = create_model("mtcp", {t: s.out_channels for t, s in specs.items()}, "tiny")
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
