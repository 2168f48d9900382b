"""Every registered arch x task set: forward shapes, backward, one optimizer step (CPU)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.models import create_model
from mtlkit.registry import ARCHS
from mtlkit.tasks import get_task

TASK_SETS = {
    "nyud4": ["semseg", "depth", "normals", "edge"],
    "segdepth": ["semseg", "depth"],
    "pascal5": ["semseg", "parts", "saliency", "normals", "edge"],
}
SIZE = (64, 80)


def _targets(tasks: list[str], b: int) -> dict[str, torch.Tensor]:
    h, w = SIZE
    out: dict[str, torch.Tensor] = {}
    for t in tasks:
        if t in ("semseg", "parts"):
            out[t] = torch.randint(0, 7, (b, h, w))
        elif t == "depth":
            out[t] = torch.rand(b, 1, h, w) + 0.5
        elif t == "normals":
            out[t] = torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1)
        else:
            out[t] = (torch.rand(b, 1, h, w) > 0.8).float()
    return out


@pytest.mark.parametrize("set_name", sorted(TASK_SETS))
@pytest.mark.parametrize("arch", ARCHS.names())
def test_arch_forward_backward_step(arch: str, set_name: str) -> None:
    torch.manual_seed(0)
    tasks = TASK_SETS[set_name]
    if arch == "single":
        tasks = tasks[:1]
    specs = {t: get_task(t, 7) for t in tasks}
    model = create_model(arch, {t: s.out_channels for t, s in specs.items()})
    x = torch.randn(2, 3, *SIZE)
    out = model(x)
    assert set(out["final"]) == set(tasks)
    for t, pred in out["final"].items():
        assert pred.shape == (2, specs[t].out_channels, *SIZE), (t, pred.shape)
        assert torch.isfinite(pred).all()
    for aux in out["aux"]:
        for t, pred in aux.items():
            assert t in specs and pred.shape[:2] == (2, specs[t].out_channels)
    targets = _targets(tasks, 2)
    loss = sum(specs[t].loss(p, targets[t]) for t, p in out["final"].items())
    for aux in out["aux"]:
        loss = loss + sum(specs[t].loss(p, targets[t]) for t, p in aux.items())
    for extra in out.get("extra_losses", {}).values():
        loss = loss + extra
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
