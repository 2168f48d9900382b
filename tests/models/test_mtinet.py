"""MTI-Net (paper 004): shapes at every scale for every task set and with auxiliary tasks, the
Feature Propagation Module (softmax over tasks, per-task SE residual), the ablations (scales,
w/o FPM), kwargs validation, the presets, and a short training run with auxiliary tasks on
synthetic data that lowers the loss."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtlkit.config import load_config
from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.mtinet import FeaturePropagation, MTINet
from mtlkit.registry import ARCHS
from tests.models._arch_helpers import (
    check_short_run_lowers_loss,
    config_presets,
    single_thread,
)

TASK_SETS = {
    "nyud": ({"semseg": 40, "depth": 1, "normals": 3, "edge": 1}, None),
    "seg+depth": ({"semseg": 40, "depth": 1}, None),
    "seg+depth+aux": ({"semseg": 40, "depth": 1, "normals": 3, "edge": 1}, ["normals", "edge"]),
    "pascal": ({"semseg": 21, "parts": 7, "saliency": 1, "normals": 3, "edge": 1}, None),
}
CONFIGS = config_presets("mtinet")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.mark.parametrize("task_set", list(TASK_SETS))
def test_forward_backward_shapes(task_set: str) -> None:
    torch.manual_seed(0)
    tasks, aux = TASK_SETS[task_set]
    model = ARCHS.get("mtinet")(tasks, backbone="tiny", aux_tasks=aux)
    main = {t: c for t, c in tasks.items() if t not in (aux or [])}
    out = model(torch.randn(2, 3, 64, 80))
    assert {t: tuple(v.shape) for t, v in out["final"].items()} == {
        t: (2, c, 64, 80) for t, c in main.items()
    }
    assert len(out["aux"]) == 4  # initial predictions at 1/4, 1/8, 1/16, 1/32
    for aux_out, s in zip(out["aux"], [4, 8, 16, 32], strict=True):
        assert {t: tuple(v.shape) for t, v in aux_out.items()} == {
            t: (2, c, math.ceil(64 / s), math.ceil(80 / s)) for t, c in tasks.items()
        }
    loss = sum(v.mean() for v in out["final"].values())
    loss = loss + sum(v.mean() for a in out["aux"] for v in a.values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.aux_weight == 1.0


def test_fpm_harmonization_and_residual() -> None:
    """With f's last conv zeroed the task mask is uniform (softmax over N tasks -> 1/N), so the
    shared representation is reduce(F / N); each output is F_k + SE_k(shared)."""
    torch.manual_seed(4)
    fpm = FeaturePropagation(["a", "b", "c"], 8).eval()
    feats = {t: torch.randn(2, 8, 5, 6) for t in "abc"}
    with torch.no_grad():
        fpm.harmonize[-1].weight.zero_()
        fpm.harmonize[-1].bias.zero_()
        stacked = torch.cat([feats[t] for t in "abc"], dim=1)
        shared = fpm.reduce(stacked / 3)
        torch.testing.assert_close(fpm.shared(feats), shared)
        out = fpm(feats)
        for t in "abc":
            torch.testing.assert_close(out[t], feats[t] + fpm.se[t](shared))
        # a large logit on one task's chunk selects that task's features
        fpm.harmonize[-1].bias[8:16] = 50.0  # chunk of task "b"
        mask_b = fpm.reduce(torch.cat([0 * feats["a"], feats["b"], 0 * feats["c"]], 1))
        torch.testing.assert_close(fpm.shared(feats), mask_b, atol=1e-5, rtol=1e-5)


def test_se_and_distillation_as_mtlpt() -> None:
    """MTL-PT: SE hidden width C // 16 (HRNet-18 FPM scales 36, 72, 144 -> 2, 4, 9), the SE
    squeezes by the spatial mean only; distillation convs (SABlock) without bias."""
    torch.manual_seed(0)
    model = create_model("mtinet", {"semseg": 9, "depth": 1}, channels=[18, 36, 72, 144])
    for s, hidden in [(1, 2), (2, 4), (3, 9)]:
        for se in model.fpm[s].se.values():
            assert se.hidden == hidden
            w1, w2 = se.squeeze[0], se.squeeze[2]
            assert (w1.in_features, w1.out_features, w2.out_features) == (
                model.channels[s], hidden, model.channels[s])
    se = model.fpm[1].se["semseg"]
    x = torch.randn(2, 36, 5, 6)
    with torch.no_grad():
        w1, w2 = se.squeeze[0], se.squeeze[2]
        gate = torch.sigmoid(w2(torch.relu(w1(x.mean(dim=(2, 3))))))
        torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert create_model("mtinet", {"depth": 1}, channels=8).fpm[1].se["depth"].hidden == 1
    for d in model.distill:
        assert all(m.bias is None for m in [*d.attn.values(), *d.feat.values()])


@pytest.mark.parametrize(("scales", "fpm"), [(1, True), (2, False), (3, True), (4, False)])
def test_ablations(scales: int, fpm: bool) -> None:
    model = create_model("mtinet", {"semseg": 9, "depth": 1}, scales=scales, fpm=fpm, channels=8)
    out = model(torch.randn(2, 3, 64, 80))
    assert len(out["aux"]) == scales
    assert out["final"]["semseg"].shape == (2, 9, 64, 80)
    assert sum(isinstance(m, FeaturePropagation) for m in model.fpm) == (scales - 1 if fpm else 0)


def test_channels_and_validation() -> None:
    tasks = {"semseg": 9, "depth": 1}
    m = create_model("mtinet", tasks, channels=None, head_channels=None)
    assert isinstance(m, MTINet) and m.channels == m.backbone.channels
    assert create_model("mtinet", tasks, channels=12).channels == [12] * 4
    with pytest.raises(ConfigError, match="fmp"):
        create_model("mtinet", tasks, fmp=False)
    with pytest.raises(ConfigError, match="scales"):
        create_model("mtinet", tasks, scales=5)
    with pytest.raises(ConfigError, match="channels"):
        create_model("mtinet", tasks, channels=[8, 8])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.arch == "mtinet" and cfg.model.backbone.startswith("timm:hrnet")
    assert cfg.train.optimizer == "adam" and cfg.train.lr == 1e-4 and cfg.train.batch_size == 8
    tasks = {t: 2 for t in cfg.data.tasks + cfg.data.aux_tasks}
    kw = {**cfg.model.kwargs, "channels": 8, "aux_tasks": cfg.data.aux_tasks}
    model = create_model("mtinet", tasks, "tiny", **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert list(out["final"]) == cfg.data.tasks and len(out["aux"]) == 4


def test_training_lowers_loss_with_aux_tasks(tiny_h5: Path) -> None:
    """Normals and edge as auxiliary (intermediate-only) tasks: training still lowers the loss
    and the final outputs are the two main tasks."""
    out = check_short_run_lowers_loss("mtinet", tiny_h5, aux_tasks=["normals", "edge"])
    assert set(out["final"]) == {"semseg", "depth"}
