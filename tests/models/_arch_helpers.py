"""Helpers shared by the architecture tests (BFCI, TIF, MT-CP, PAD-Net, TPIM, MTI-Net).

Plain functions, not tests: each runs the checks (``assert``) its callers used to repeat inline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mtlkit.models import create_model
from mtlkit.registry import ARCHS
from mtlkit.tasks import get_task

TASK_SETS = {
    "nyud": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "seg+depth": {"semseg": 40, "depth": 1},
    "pascal": {"semseg": 21, "parts": 7, "saliency": 1, "normals": 3, "edge": 1},
}

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def config_presets(arch: str) -> list[Path]:
    """The ``configs/<arch>_*.yaml`` presets, sorted."""
    return sorted(CONFIG_DIR.glob(f"{arch}_*.yaml"))


@contextmanager
def single_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread avoids oversubscribing a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- presets
def build_preset(arch: str, path: Path) -> tuple[Any, torch.nn.Module]:
    """Load a preset, check its arch, build its model kwargs (tiny backbone, narrow width, for
    speed) and check one forward pass; returns ``(cfg, model)`` for arch-specific checks."""
    from mtlkit.config import load_config

    cfg = load_config(path)
    assert cfg.model.arch == arch
    kwargs = dict(cfg.model.kwargs)
    kwargs.pop("backbone_kwargs", None)  # timm options; the tiny backbone stands in here
    kwargs["channels"] = 16
    tasks = {t: get_task(t, 9).out_channels for t in cfg.data.tasks}
    model = create_model(arch, tasks, "tiny", **kwargs)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 40, 56))
    assert set(out["final"]) == set(tasks)
    return cfg, model


# ----------------------------------------------------------------------------- short training
def check_short_run_lowers_loss(arch: str, tiny_h5: Path, **model_kw: Any) -> dict:
    """30 Adam steps on 4 synthetic NYUD-like samples through the trainer's loss (per-task
    ``compute_losses`` with the arch's aux weight, plus its ``extra_losses``): finite losses, the
    last three averaging below 70% of the first three, and the trained model still predicts
    full-size maps. ``model_kw`` go to ``create_model``; returns the trained model's output."""
    from mtlkit.data import build_dataset, collate
    from mtlkit.engine.trainer import compute_losses

    torch.manual_seed(0)
    tasks = ["semseg", "depth", "normals", "edge"]
    ds = build_dataset("synthetic-nyud", path=tiny_h5, split="train", tasks=tasks, size=(64, 80))
    batch = collate([ds[i] for i in range(4)])
    specs = {t: get_task(t, ds.num_classes.get(t)) for t in tasks}
    model = create_model(arch, {t: s.out_channels for t, s in specs.items()}, "tiny", **model_kw)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        out = model(batch["image"])
        losses = compute_losses(out, batch, specs, model.aux_weight)
        loss = sum(specs[t].weight * v for t, v in losses.items())
        loss = loss + sum(out.get("extra_losses", {}).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(x) for x in history)
    assert sum(history[-3:]) < 0.7 * sum(history[:3]), history
    model.eval()
    with torch.no_grad():
        out = model(batch["image"])
    assert out["final"]["semseg"].shape == (4, ds.num_classes["semseg"], 64, 80)
    return out


# ----------------------------------------------------------------------------- PAD-Net / TPIM
def forward_with_quarter_aux(arch: str, task_set: str) -> tuple[torch.nn.Module, dict, dict]:
    """Build ``arch`` on the tiny backbone, run a (2, 3, 64, 80) batch and check the final maps
    (full size) and the single set of intermediate predictions (1/4); returns (model, out,
    tasks)."""
    torch.manual_seed(0)
    tasks = TASK_SETS[task_set]
    model = ARCHS.get(arch)(tasks, backbone="tiny")
    out = model(torch.randn(2, 3, 64, 80))
    assert {t: tuple(v.shape) for t, v in out["final"].items()} == {
        t: (2, c, 64, 80) for t, c in tasks.items()
    }
    assert len(out["aux"]) == 1  # initial / intermediate predictions at 1/4
    assert {t: tuple(v.shape) for t, v in out["aux"][0].items()} == {
        t: (2, c, 16, 20) for t, c in tasks.items()
    }
    return model, out, tasks


def backward_reaches_every_parameter(model: torch.nn.Module, out: dict) -> None:
    """Backward through the final and the 1/4 predictions: every parameter gets a finite grad."""
    loss = sum(v.mean() for v in out["final"].values())
    loss = loss + sum(v.mean() for v in out["aux"][0].values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
