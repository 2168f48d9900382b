"""PAD-Net (single-scale case of MTI-Net, paper 004): shapes for every task set and with auxiliary
tasks, the spatial-attention distillation against eq. 1 restated by hand, task-set resolution,
kwargs validation, the presets, and a short training run on synthetic data that lowers the loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlkit.config import load_config
from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.padnet import (
    HighResolutionFuse,
    SharedExtractor,
    SpatialAttentionDistillation,
    fuse_scales,
    resolve_tasks,
)
from tests.models._arch_helpers import (
    TASK_SETS,
    backward_reaches_every_parameter,
    check_short_run_lowers_loss,
    config_presets,
    forward_with_quarter_aux,
    single_thread,
)

CONFIGS = config_presets("padnet")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.mark.parametrize("task_set", list(TASK_SETS))
def test_forward_backward_shapes(task_set: str) -> None:
    model, out, _ = forward_with_quarter_aux("padnet", task_set)
    backward_reaches_every_parameter(model, out)
    assert model.aux_weight == 1.0


def test_aux_tasks_front_end_only() -> None:
    """PAD-Net (N+E): auxiliary tasks are predicted and distilled from, never output as final."""
    model = create_model("padnet", {"semseg": 40, "depth": 1}, aux_tasks=["normals", "edge"])
    assert model.tasks == {"semseg": 40, "depth": 1} and model.aux_tasks == ["normals", "edge"]
    out = model(torch.randn(2, 3, 64, 80))
    assert set(out["final"]) == {"semseg", "depth"}
    assert {t: v.shape[1] for t, v in out["aux"][0].items()} == {
        "semseg": 40, "depth": 1, "normals": 3, "edge": 1
    }
    assert set(model.distill.feat) == {"semseg", "depth", "normals", "edge"}


def test_resolve_tasks() -> None:
    main, front = resolve_tasks({"semseg": 9, "depth": 1, "edge": 1}, ["edge", "normals"],
                                {"normals": 4})
    assert main == {"semseg": 9, "depth": 1}
    assert front == {"semseg": 9, "depth": 1, "edge": 1, "normals": 4}
    assert resolve_tasks({"semseg": 9}, ["normals"])[1]["normals"] == 3  # mtlkit.tasks default
    with pytest.raises(ConfigError):
        resolve_tasks({"edge": 1}, ["edge"])
    with pytest.raises(ConfigError):
        resolve_tasks({})


def test_distillation_matches_eq1() -> None:
    """F_k^o = F_k + sum_{l != k} sigmoid(W_{k,l} F_l) * (W'_{k,l} F_l), restated per pair with
    each pair's own slice of the per-source convolutions."""
    torch.manual_seed(3)
    c = 5
    targets, sources = ["a", "b"], ["a", "b", "c"]
    mod = SpatialAttentionDistillation(targets, sources, c).double()
    feats = {t: torch.randn(2, c, 6, 7, dtype=torch.float64) for t in sources}
    with torch.no_grad():
        out = mod(feats)
        for k in targets:
            want = feats[k].clone()
            for s in sources:
                if s == k:
                    continue
                j = mod.routes[s].index(k)
                sl = slice(j * c, (j + 1) * c)
                w_feat = mod.feat[s].weight[sl]
                att = torch.sigmoid(F.conv2d(feats[s], mod.attn[s].weight[sl], padding=1))
                want += att * F.conv2d(feats[s], w_feat, padding=1)
            torch.testing.assert_close(out[k], want)
    assert mod.routes == {"a": ["b"], "b": ["a"], "c": ["a", "b"]}
    # both convs of MTL-PT's SABlock have no bias
    assert all(m.bias is None for m in [*mod.attn.values(), *mod.feat.values()])


def test_kwargs_validation() -> None:
    tasks = {"semseg": 9, "depth": 1}
    with pytest.raises(ConfigError, match="head_blok"):
        create_model("padnet", tasks, head_blok=1)
    with pytest.raises(ConfigError, match="block"):
        create_model("padnet", tasks, block="dense")
    with pytest.raises(ConfigError):
        create_model("padnet", tasks, channels=0)
    m = create_model("padnet", tasks, channels=8, fuse_channels=None, block="bottleneck",
                     head_blocks=0, front_blocks=1)
    assert m(torch.randn(1, 3, 32, 40))["final"]["depth"].shape == (1, 1, 32, 40)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.arch == "padnet" and cfg.model.backbone.startswith("timm:hrnet")
    assert cfg.train.optimizer == "adam" and cfg.train.lr == 1e-4 and cfg.train.batch_size == 8
    tasks = {t: 2 for t in cfg.data.tasks}
    model = create_model("padnet", tasks, "tiny", **{**cfg.model.kwargs, "channels": 8}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["final"].keys() == tasks.keys()


def check_hrnet_fuse(extractor: SharedExtractor) -> None:
    """MTL-PT's HighResolutionFuse: concat of the upsampled scales, then a 1x1 conv that keeps the
    concatenated width (270 -> 270 on HRNet-18), BN and ReLU."""
    cin = sum(extractor.backbone.channels)
    assert isinstance(extractor.fuse, HighResolutionFuse) and extractor.out_channels == cin
    conv, bn, relu = extractor.fuse.conv
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    assert (conv.in_channels, conv.out_channels) == (cin, cin)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    feats = [torch.randn(1, c, 8 // 2**i, 10 // 2**i) for i, c in enumerate(
        extractor.backbone.channels)]
    with torch.no_grad():
        torch.testing.assert_close(extractor.fuse.eval()(feats),
                                   torch.relu(bn(conv(fuse_scales(feats)))))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets_fuse_hrnet_as_mtlpt(path: Path) -> None:
    """The presets fuse the HRNet pyramid as MTL-PT (``fuse_hrnet: True``), not by concat only."""
    cfg = load_config(path)
    tasks = {t: 2 for t in cfg.data.tasks}
    check_hrnet_fuse(create_model("padnet", tasks, "tiny", **cfg.model.kwargs).extractor)


def test_fuse_options() -> None:
    tasks = {"semseg": 9, "depth": 1}
    ex = create_model("padnet", tasks, fuse_channels=None, fuse_conv=False).extractor
    assert isinstance(ex.fuse.conv, torch.nn.Identity)
    assert ex.out_channels == sum(ex.backbone.channels)
    ex = create_model("padnet", tasks).extractor  # CPU default: reduce to 32
    assert ex.out_channels == 32 and ex.fuse.conv[0].out_channels == 32
    with pytest.raises(ConfigError, match="fuse"):
        create_model("padnet", tasks, fuse_channels=32, fuse_conv=False)


def test_training_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("padnet", tiny_h5)
