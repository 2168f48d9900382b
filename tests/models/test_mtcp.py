"""MT-CP (paper 003): shapes for every task set and odd sizes, backward, the coherence loss in
``extra_losses`` (training mode only), the LPS default, trace-back structure, kwargs validation and
a short training run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.mtcp import CoherenceFusion, pixel_affinity, pixel_merge
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
    # intermediate SRM predictions of decoder stages 3 and 2 (1/16, 1/8); stage 1 (1/4) is final
    assert len(out["aux"]) == 2
    for aux, s in zip(out["aux"], [16, 8], strict=True):
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


def test_authors_layout_and_deep_supervision() -> None:
    """Decoder stage 1 stays at 1/4 with the shared representation, the CFM works there, the
    trace-back ends at stage 1 (final), K - 1 intermediate outputs weighted 0.5 (eq. 7 with the
    authors' weight); no extra head on X_t."""
    torch.manual_seed(0)
    tasks = {"semseg": 9, "depth": 1, "normals": 3}
    model = create_model("mtcp", tasks, "tiny")
    assert model.aux_weight == 0.5
    assert not hasattr(model, "initial")
    assert all(len(model.srm[t]) == 3 for t in tasks)  # one SRM per decoder stage, none on R
    seen: dict[str, Any] = {}
    hooks = [
        model.pixel_decoder.register_forward_hook(lambda m, i, o: seen.update(r=o.shape)),
        model.decoders["depth"].register_forward_hook(
            lambda m, i, o: seen.update(x=o[0].shape, stages=[s.shape for s in o[1]])),
        model.cfm["depth"].register_forward_hook(lambda m, i, o: seen.update(h=o[0].shape)),
        model.srm["depth"][0].register_forward_hook(lambda m, i, o: seen.update(p1=o[1])),
    ]
    out = model(torch.randn(2, 3, 64, 80))
    for h in hooks:
        h.remove()
    assert seen["r"][-2:] == (16, 20)
    assert [s[-2:] for s in seen["stages"]] == [(16, 20), (8, 10), (4, 5)]
    assert [s[1] for s in seen["stages"]] == [32, 64, 128]
    assert seen["x"][-2:] == seen["h"][-2:] == (16, 20)  # X_t and H_t at 1/4
    assert seen["p1"].shape[-2:] == (16, 20)  # the final prediction comes from the stage-1 SRM
    final = torch.nn.functional.interpolate(seen["p1"], size=(64, 80), mode="bilinear",
                                            align_corners=False)
    torch.testing.assert_close(out["final"]["depth"], final)
    assert [a["depth"].shape[-2:] for a in out["aux"]] == [(4, 5), (8, 10)]
    assert create_model("mtcp", tasks, "tiny", aux_weight=1.0).aux_weight == 1.0


def test_pixel_merge_is_default_and_applies_aux_affinity_to_main() -> None:
    """The authors' CFM: A = softmax_row(X'_aux^T X''_aux) over the N = h w pixels (N x N), then
    H_t = BN(CBAM(Conv1x1(X'_t A^T))), no residual."""
    torch.manual_seed(0)
    cfm = CoherenceFusion(8, n_aux=2).eval()
    assert cfm.merge == "pixel"
    x, aux = torch.randn(2, 8, 6, 7), [torch.randn(2, 8, 6, 7), torch.randn(2, 8, 6, 7)]
    with torch.no_grad():
        a = cfm.affinity(x, aux)
        assert a.shape == (2, 42, 42)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 42))
        main, q, k = cfm.branches(x, aux)
        assert k is not None and q.shape == k.shape == main.shape
        torch.testing.assert_close(a, torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2),
                                                    dim=-1))
        merged = (main.flatten(2) @ a.transpose(1, 2)).reshape(2, 8, 6, 7)
        h, _ = cfm(x, aux)
        torch.testing.assert_close(h, cfm.out(merged), atol=1e-5, rtol=1e-4)
        # the affinity is a function of the auxiliary features only: it resamples the main ones
        x2 = torch.randn(2, 8, 6, 7)
        torch.testing.assert_close(cfm.affinity(x2, aux), a)


def test_pixel_merge_function() -> None:
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5), torch.randn(2, 6, 3, 5)
    a = pixel_affinity(q, k)
    assert a.shape == (2, 15, 15)
    want = (v.flatten(2) @ a.transpose(1, 2)).reshape(2, 6, 3, 5)
    torch.testing.assert_close(pixel_merge(q, k, v), want)


def test_channel_merge_option() -> None:
    """cfm_merge="channel": a C x C affinity applied to the auxiliary features, plus X'_t."""
    torch.manual_seed(0)
    cfm = CoherenceFusion(8, n_aux=2, merge="channel").eval()
    assert cfm.aux_key is None
    x, aux = torch.randn(2, 8, 6, 7), [torch.randn(2, 8, 6, 7), torch.randn(2, 8, 6, 7)]
    with torch.no_grad():
        a = cfm.affinity(x, aux)
        assert a.shape == (2, 8, 8)
        main, q, _ = cfm.branches(x, aux)
        merged = (a @ q.flatten(2)).reshape(2, 8, 6, 7)
        torch.testing.assert_close(cfm(x, aux)[0], cfm.out(merged + main))
    model = create_model("mtcp", {"semseg": 9, "depth": 1}, "tiny", cfm_merge="channel")
    assert all(c.merge == "channel" for c in model.cfm.values())
    assert model(torch.randn(1, 3, 64, 80))["final"]["depth"].shape == (1, 1, 64, 80)


@pytest.mark.parametrize("merge", ["pixel", "channel"])
def test_coherence_loss(merge: str) -> None:
    """1 - cosine similarity of the main and auxiliary branches: zero when they are parallel."""
    torch.manual_seed(0)
    cfm = CoherenceFusion(8, n_aux=2, merge=merge)
    x = torch.randn(2, 8, 6, 7)
    h, coh = cfm(x, [torch.randn(2, 8, 6, 7), torch.randn(2, 8, 6, 7)])
    assert h.shape == x.shape and 0.0 <= coh.item() <= 2.0
    coh.backward()
    assert cfm.gates[0].weight.grad.abs().sum() > 0  # the loss trains the gates and branches
    cfm = CoherenceFusion(8, n_aux=1, merge=merge)
    cfm.main = cfm.aux = torch.nn.Identity()
    torch.nn.init.zeros_(cfm.gates[0].weight)
    torch.nn.init.constant_(cfm.gates[0].bias, 50.0)  # gate = 1: X_aux = X_main
    _, coh = cfm(x, [x])
    assert coh.item() < 1e-5
    single = CoherenceFusion(8, n_aux=0, merge=merge)
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
    assert out["final"]["depth"].shape == (1, 1, 72, 88) and len(out["aux"]) == 1
    assert out["aux"][0]["depth"].shape[-2:] == (9, 11)
    assert out["extra_losses"]["coherence"].item() == 0.0
    one = create_model("mtcp", {"depth": 1, "semseg": 9}, "tiny", stages=1, depths=[0])
    assert one(torch.randn(1, 3, 64, 80))["aux"] == []


@pytest.mark.parametrize("kwargs", [
    {"stages": 0}, {"depths": [1, 2]}, {"coherence_weight": -1.0}, {"chanels": 32},
    {"aux_tasks": ["edge"]}, {"aux_weight": -0.5}, {"cfm_merge": "spatial"},
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
    # the coherence loss and the intermediate losses are weighted in the config, as the paper /
    # the authors' code: coherence 1 (paper objective), intermediate 0.5 (authors' code)
    assert cfg.model.kwargs["coherence_weight"] == model.coherence_weight == 1.0
    assert cfg.model.kwargs["aux_weight"] == model.aux_weight == 0.5
    assert all(c.merge == "pixel" for c in model.cfm.values())


# ----------------------------------------------------------------------------- short training
def test_short_run_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("mtcp", tiny_h5)
