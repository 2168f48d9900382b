"""TPIM (paper 002): shapes for every task set, the CIB equations (eq. 1-4) against a hand-written
restatement with the IFB variants A/B/C (eq. 6-8) run through ``mtlkit.ops.ifb``, identity of
the (t, t) pairs in the aggregation (eq. 5), kwargs validation, the presets, and a short
training run on synthetic data that lowers the loss."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlkit.config import load_config
from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.tpim import CrossTaskInteraction, TaskPairInteraction, TPIMNet
from tests.models._arch_helpers import (
    TASK_SETS,
    backward_reaches_every_parameter,
    check_short_run_lowers_loss,
    config_presets,
    forward_with_quarter_aux,
    single_thread,
)
from tests.models.test_padnet import check_hrnet_fuse

CONFIGS = config_presets("tpim")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.mark.parametrize("task_set", list(TASK_SETS))
def test_forward_backward_shapes(task_set: str) -> None:
    model, out, tasks = forward_with_quarter_aux("tpim", task_set)
    n = len(tasks)
    assert len(model.tpim.blocks) == n * (n - 1)  # N^2 CIBs minus the N identities
    backward_reaches_every_parameter(model, out)
    assert all(b.alpha.grad.abs() > 0 for b in model.tpim.blocks.values())
    assert model.aux_weight == 1.0


def test_aux_tasks_are_sources_only() -> None:
    model = create_model("tpim", {"semseg": 9, "depth": 1, "normals": 3, "edge": 1},
                         aux_tasks=["normals", "edge"])
    out = model(torch.randn(2, 3, 32, 48))
    assert set(out["final"]) == {"semseg", "depth"}
    assert set(out["aux"][0]) == {"semseg", "depth", "normals", "edge"}
    assert "normals_to_semseg" in model.tpim.blocks and "semseg_to_normals" not in model.tpim.blocks


def _hand_ifb(co: torch.Tensor, v: torch.Tensor, alpha: float, n: int,
              variant: str) -> torch.Tensor:
    """eq. 6-8 written out: V_{k+1} = C V_k (A), + V_k (B), alpha C V_k + (1-alpha) V_k (C)."""
    for _ in range(n):
        cv = torch.einsum("bij,bjc->bic", co, v)
        v = {"A": cv, "B": alpha * cv + v, "C": alpha * cv + (1 - alpha) * v}[variant]
    return v


@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("sc", [1, 2, 3])
def test_cib_matches_equations(variant: str, sc: int) -> None:
    """CIB output == eq. 4 restated by hand: self-attention (eq. 1) + upsampled IFB (eq. 2-3,
    6-8) with the affinity computed pixel by pixel, in float64 on tiny inputs."""
    torch.manual_seed(1)
    c, d, n_iter = 6, 4, 5
    cib = CrossTaskInteraction(c, d, sc=sc, n_iter=n_iter, variant=variant).double().eval()
    for m in cib.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    f_s, f_t = torch.randn(2, 2, c, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        got = cib(f_s, f_t)
        self_att = cib.f_s(f_s) * torch.sigmoid(cib.f_m(f_s))
        h, w = math.ceil(5 / sc), math.ceil(7 / sc)
        ds = F.adaptive_avg_pool2d(f_s, (h, w))
        dt = F.adaptive_avg_pool2d(f_t, (h, w))
        q, k, v = cib.p_q(dt), cib.p_k(ds), cib.p_v(ds)
        co = torch.empty(2, h * w, h * w, dtype=torch.float64)
        for i in range(h * w):  # target pixel i, source pixel j
            qi = q[:, :, i // w, i % w]
            logits = torch.stack([(qi * k[:, :, j // w, j % w]).sum(1) for j in range(h * w)], 1)
            co[:, i] = torch.softmax(logits / math.sqrt(d), dim=1)
        vv = v.flatten(2).transpose(1, 2)
        fused = _hand_ifb(co, vv, 0.3, n_iter, variant).transpose(1, 2).reshape(2, c, h, w)
        want = self_att + F.interpolate(fused, (5, 7), mode="bilinear", align_corners=False)
        co_model, v_model, _ = cib.affinity(f_s, f_t)
    torch.testing.assert_close(co_model, co)
    torch.testing.assert_close(v_model, vv)
    torch.testing.assert_close(got, want)


def test_ifb_variants_and_alpha() -> None:
    """alpha starts at 0.3, is a parameter for B and C only; n_iter=0 leaves V unchanged."""
    assert "alpha" not in dict(CrossTaskInteraction(4, 2, variant="A").named_parameters())
    for variant in "BC":
        cib = CrossTaskInteraction(4, 2, variant=variant)
        assert isinstance(cib.alpha, torch.nn.Parameter) and cib.alpha.item() == pytest.approx(0.3)
    cib = CrossTaskInteraction(4, 2, sc=1, n_iter=0).eval()
    f_s, f_t = torch.randn(2, 1, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(cib.global_attention(f_s, f_t), cib.p_v(f_s))


def test_identity_pairs_in_aggregation() -> None:
    """f_{t->t} = f_t (no CIB), and f^o_t = sum_s f_{s->t} (eq. 5)."""
    torch.manual_seed(2)
    tpim = TaskPairInteraction(["a", "b"], ["a", "b", "c"], 4, key_channels=2, sc=2, n_iter=3,
                               variant="C").eval()
    assert sorted(tpim.blocks) == ["a_to_b", "b_to_a", "c_to_a", "c_to_b"]
    feats = {t: torch.randn(2, 4, 6, 8) for t in "abc"}
    with torch.no_grad():
        out = tpim(feats)
        for t in "ab":
            assert tpim.pair(feats, t, t) is feats[t]
            want = sum(tpim.pair(feats, s, t) for s in "abc")
            torch.testing.assert_close(out[t], want)
    single = TaskPairInteraction(["a"], ["a"], 4, key_channels=2)
    assert len(single.blocks) == 0 and single({"a": feats["a"]})["a"] is feats["a"]


def test_kwargs_validation() -> None:
    tasks = {"semseg": 9, "depth": 1}
    with pytest.raises(ConfigError, match="chanels"):
        create_model("tpim", tasks, chanels=8)
    with pytest.raises(ConfigError, match="variant"):
        create_model("tpim", tasks, variant="D")
    with pytest.raises(ConfigError, match="sc"):
        create_model("tpim", tasks, sc=0)
    with pytest.raises(ConfigError):
        create_model("tpim", {})
    m = create_model("tpim", tasks, channels=8, key_channels=4, sc=1, n_iter=4, variant="B",
                     fuse_channels=None, block="bottleneck", head_blocks=0)
    assert isinstance(m, TPIMNet)
    assert m(torch.randn(1, 3, 32, 40))["final"]["semseg"].shape == (1, 9, 32, 40)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.arch == "tpim" and cfg.model.backbone.startswith("timm:hrnet")
    kw = cfg.model.kwargs
    assert kw["variant"] == "C" and kw["alpha_init"] == 0.3
    assert kw["n_iter"] == (18 if cfg.data.dataset == "nyud" else 4)
    tasks = {t: 2 for t in cfg.data.tasks}
    model = create_model("tpim", tasks, "tiny", **{**kw, "channels": 8, "key_channels": 4}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["final"].keys() == tasks.keys()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets_fuse_hrnet_as_mtlpt(path: Path) -> None:
    """TPIM builds on MTL-PT's PAD-Net framework: HighResolutionFuse (concat, 1x1 conv keeping
    the width, BN, ReLU) on the HRNet pyramid."""
    cfg = load_config(path)
    tasks = {t: 2 for t in cfg.data.tasks}
    model = create_model("tpim", tasks, "tiny", **{**cfg.model.kwargs, "channels": 8,
                                                   "key_channels": 4})
    check_hrnet_fuse(model.extractor)


def test_training_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("tpim", tiny_h5)
