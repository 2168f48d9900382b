"""BFCI (paper 000): shapes for every task set and odd sizes, backward, BFE padding, TFR sizes,
kwargs validation, and a short training run that lowers the loss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.bfci import BFCI, BridgeFeatureExtractor, pad_to_multiple
from mtlkit.ops import reference
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


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("size", [(64, 80), (72, 88)])
@pytest.mark.parametrize("task_set", list(TASK_SETS))
def test_forward_backward_shapes(task_set: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    tasks = TASK_SETS[task_set]
    model = ARCHS.get("bfci")(tasks, backbone="tiny")
    out = model(torch.randn(2, 3, *size))
    assert set(out["final"]) == set(tasks)
    for t, c in tasks.items():
        assert out["final"][t].shape == (2, c, *size)
    assert len(out["aux"]) == 3  # preliminary predictions at strides 32, 16, 8
    strides = [32, 16, 8]
    for aux, s in zip(out["aux"], strides, strict=True):
        assert set(aux) == set(tasks)
        for t, c in tasks.items():
            h, w = aux[t].shape[-2:]
            assert aux[t].shape[:2] == (2, c) and h == -(-size[0] // s) and w == -(-size[1] // s)
    loss = sum(v.mean() for v in out["final"].values())
    loss = loss + sum(v.mean() for a in out["aux"] for v in a.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.tpp.mix_weight.grad.abs().sum() > 0  # TPP is on the path to the outputs


@pytest.mark.parametrize("size", [(33, 47), (128, 160)])
def test_four_scales_any_size(size: tuple[int, int]) -> None:
    """HRNet setting: 4 scales with pools [2, 4, 8, 16]; tiny inputs become one token per task."""
    model = create_model("bfci", {"semseg": 9, "depth": 1}, "tiny", scales=4, tfr="large")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out["final"]["semseg"].shape == (1, 9, *size)
    assert len(out["aux"]) == 4
    assert model.config["kv_pools"] == [2, 4, 8, 16]


def test_pad_to_multiple_replicates_edges() -> None:
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 4, 8)
    assert torch.equal(y[..., :3, :5], x)
    assert torch.equal(y[..., 3, :5], x[..., 2, :])  # bottom row repeated
    assert torch.equal(y[..., :3, 7], x[..., :, 4])  # right column repeated
    assert pad_to_multiple(x, 1) is x


def test_bfe_matches_reference_on_padded_maps() -> None:
    """BFE pads the task maps (replicate) so the op's H % pool == 0 contract holds."""
    torch.manual_seed(0)
    bfe = BridgeFeatureExtractor(8, pool=4, heads=2).eval()
    s = torch.randn(2, 8, 5, 7)
    p = torch.randn(2, 3, 8, 5, 7)
    out = bfe(s, p)
    assert out.shape == s.shape
    # restate the attention part by hand on the padded maps with the reference op
    qmap = bfe.q_embed(s)
    q = bfe.q_proj(bfe.q_norm(qmap.flatten(2).transpose(1, 2)))
    feats = pad_to_multiple(p.reshape(6, 8, 5, 7), 4).reshape(2, 3, 8, 8, 8)
    x = reference.bfe_attention(q, feats, bfe.k_proj.weight, bfe.v_proj.weight, bfe.k_proj.bias,
                                bfe.v_proj.bias, pool=4, heads=2)
    x = bfe.out_proj(x).transpose(1, 2).reshape(2, 8, *qmap.shape[-2:])
    y = s + torch.nn.functional.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False)
    t = y.flatten(2).transpose(1, 2)
    expect = (t + bfe.ffn(t)).transpose(1, 2).reshape(2, 8, 5, 7)
    torch.testing.assert_close(out, expect)


def test_tfr_sizes() -> None:
    tasks = {"semseg": 9, "depth": 1}
    sizes = {}
    for name, layers in (("base", 2), ("large", 4), ("huge", 6)):
        m = BFCI(tasks, "tiny", tfr=name)
        assert all(len(t.layers) == layers for t in m.tfr)
        sizes[name] = _count(m)
    assert sizes["base"] < sizes["large"] < sizes["huge"]
    # one TFR layer per scale, shared by the tasks: adding a task does not add TFR parameters
    m3 = BFCI({"semseg": 9, "depth": 1, "edge": 1}, "tiny")
    assert _count(m3.tfr) == _count(BFCI(tasks, "tiny").tfr)


@pytest.mark.parametrize("kwargs", [
    {"tfr": "giant"}, {"scales": 2}, {"kv_pools": [2, 4]}, {"channels": 33}, {"chanels": 32},
    {"aux_tasks": ["edge"]},
])
def test_bad_kwargs(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        create_model("bfci", {"semseg": 9, "depth": 1}, "tiny", **kwargs)


CONFIGS = config_presets("bfci")


def test_config_presets_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_presets_build(path: Path) -> None:
    """Every preset loads and its model kwargs build (tiny backbone, narrow width, for speed)."""
    build_preset("bfci", path)


# ----------------------------------------------------------------------------- short training
def test_short_run_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("bfci", tiny_h5)
