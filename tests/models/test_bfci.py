"""BFCI (paper 000): shapes for every task set and odd sizes, backward, BFE padding, TFR sizes,
kwargs validation, and a short training run that lowers the loss; the layout of the authors'
code (BridgeNet): prediction at 1/4, one intermediate prediction fed back, top-down task path,
BFE cascade, LayerNorm before K/V, per-task TFR blocks that start near the identity, the paper's
TFR parameter counts, and the presets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import create_model
from mtlkit.models.bfci import (
    BFCI,
    TFR_SIZES,
    BridgeFeatureExtractor,
    TaskFeatureRefiner,
    pad_to_multiple,
)
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
    assert len(out["aux"]) == 1  # one intermediate prediction, at stride 32
    aux = out["aux"][0]
    assert set(aux) == set(tasks)
    for t, c in tasks.items():
        h, w = aux[t].shape[-2:]
        assert aux[t].shape[:2] == (2, c) and h == -(-size[0] // 32) and w == -(-size[1] // 32)
    loss = sum(v.mean() for v in out["final"].values())
    loss = loss + sum(v.mean() for a in out["aux"] for v in a.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.tpp.mix_weight.grad.abs().sum() > 0  # TPP is on the path to the outputs


@pytest.mark.parametrize("size", [(33, 47), (128, 160)])
def test_four_scales_any_size(size: tuple[int, int]) -> None:
    """HRNet setting: 4 scales with pools [2, 4, 8, 16]; tiny inputs become one token per task."""
    model = create_model("bfci", {"semseg": 9, "depth": 1}, "tiny", channels=32, scales=4,
                         tfr="large")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out["final"]["semseg"].shape == (1, 9, *size)
    assert len(out["aux"]) == 1
    assert model.config["kv_pools"] == [2, 4, 8, 16]
    assert model.config["widths"] == [32, 16, 8, 4]


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
    normed = bfe.kv_norm(p.movedim(2, -1)).movedim(-1, 2)  # LayerNorm over the channels
    feats = pad_to_multiple(normed.reshape(6, 8, 5, 7), 4).reshape(2, 3, 8, 8, 8)
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
        for t in m.tfr:  # per task: M layers of three dilated blocks
            assert len(t.layers) == len(tasks)
            assert all(len(per_task) == layers for per_task in t.layers)
            assert all([b.dilation for b in layer.blocks] == [1, 2, 5]
                       for per_task in t.layers for layer in per_task)
        sizes[name] = _count(m)
    assert sizes["base"] < sizes["large"] < sizes["huge"]
    assert BFCI(tasks, "tiny", tfr=0).config["tfr_layers"] == 0


def test_default_widths_are_the_backbones() -> None:
    """Authors' HRNet-w18 config: decoder widths [144, 72, 36, 18] = the backbone's widths; the
    default C_0 is the backbone's coarsest width (rounded to heads x 2^(scales-1)), 4 scales."""
    from mtlkit.models.bfci import default_channels

    tasks = {"semseg": 9, "depth": 1}
    model = create_model("bfci", tasks, "tiny")  # tiny: widths 24, 48, 96, 160
    assert model.config["scales"] == 4 and model.config["widths"] == [160, 80, 40, 20]
    assert default_channels(144, 2, 4) == 144  # HRNet-w18: [144, 72, 36, 18]
    assert default_channels(384, 2, 4) == 384  # HRNet-w48
    assert default_channels(150, 2, 4) == 144 and default_channels(8, 2, 4) == 16
    assert default_channels(768, 3, 3) == 768
    three = create_model("bfci", tasks, "tiny", scales=3)
    assert three.config["widths"] == [160, 80, 40]
    assert create_model("bfci", tasks, "tiny", heads=3).config["channels"] == 144  # 160 -> 24k


@pytest.mark.parametrize("kwargs", [
    {"tfr": "giant"}, {"tfr": -1}, {"tfr": 1.5}, {"scales": 2}, {"kv_pools": [2, 4]},
    {"channels": 33}, {"channels": 36}, {"channels": 24, "scales": 4},
    {"chanels": 32}, {"aux_tasks": ["edge"]}, {"aux_weight": -0.5}, {"aux_weight": "half"},
    {"aux_weight": True}, {"aux_weight": float("nan")},
])
def test_bad_kwargs(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        create_model("bfci", {"semseg": 9, "depth": 1}, "tiny", **kwargs)


CONFIGS = config_presets("bfci")


def test_config_presets_exist() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_presets_build(path: Path) -> None:
    """Every preset loads and its model kwargs build (tiny backbone, narrow width, for speed).

    The paper's presets follow InvPT/ATRC's augmentation (``atrc``), weight the intermediate
    prediction 0.5, and use the authors' TFR size per dataset (NYUD huge, PASCAL large)."""
    cfg, model = build_preset("bfci", path)
    if cfg.data.dataset.startswith("synthetic"):
        return
    assert cfg.data.augment == "atrc"
    assert cfg.model.kwargs["aux_weight"] == 0.5 and model.aux_weight == 0.5
    assert cfg.model.kwargs["tfr"] == ("huge" if cfg.data.dataset == "nyud" else "large")


def test_hrnet18_nyud_preset_parameter_count() -> None:
    """The HRNet-w18 NYUD preset builds with its timm backbone (random init, offline) and has the
    parameter count its comment states; its decoder widths halve from 144."""
    from mtlkit.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "bfci_nyud_hrnet18.yaml"
    cfg = load_config(path)
    tasks = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}
    model = create_model("bfci", tasks, cfg.model.backbone, **cfg.model.kwargs)
    assert model.config["widths"] == [144, 72, 36, 18]
    stated = re.search(r"mtlkit build at 480x640: ([\d.]+) M params", path.read_text())
    assert stated is not None
    assert _count(model) / 1e6 == pytest.approx(float(stated.group(1)), abs=0.005)


# ----------------------------------------------------------------------------- authors' layout
def _nyud_model(**kw: object) -> BFCI:
    """A small BFCI (C_0 = 32, 3 scales unless ``kw`` says otherwise) on the NYUD tasks."""
    torch.manual_seed(0)
    return BFCI(TASK_SETS["nyud"], "tiny", **{"channels": 32, "scales": 3, **kw})


@pytest.mark.parametrize("scales", [3, 4])
def test_final_prediction_at_stride_4(scales: int) -> None:
    """The heads run on the backbone's stride-4 grid for 3 and 4 stages (authors: 1/4)."""
    model = _nyud_model(scales=scales).eval()
    seen = {}
    for t, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, t=t: seen.__setitem__(t, tuple(i[0].shape)))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert seen == {t: (1, 32, 16, 24) for t in TASK_SETS["nyud"]}
    assert out["final"]["edge"].shape == (1, 1, 64, 96)


def test_one_intermediate_prediction_weighted_half_and_fed_back() -> None:
    model = _nyud_model()
    assert model.aux_weight == 0.5
    assert _nyud_model(aux_weight=0.3).aux_weight == 0.3
    out = model(torch.randn(2, 3, 64, 64))
    assert len(out["aux"]) == 1
    assert {t: v.shape[-2:] for t, v in out["aux"][0].items()} == {
        t: (2, 2) for t in TASK_SETS["nyud"]}
    # the intermediate prediction is an input of the task features: the final loss alone
    # reaches the intermediate heads
    sum(v.square().mean() for v in out["final"].values()).backward()
    for t, head in model.inter_heads.items():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, t


def test_tfr_starts_near_identity() -> None:
    """At init every TFR-huge (train mode, all stages, 18 blocks) returns its input to within 2 %
    (relative L2): each block's unnormalised pointwise conv starts at the authors' std 0.001."""
    model = _nyud_model(tfr="huge")
    for n, tfr in enumerate(model.tfr):
        c = model.embed[n][0].out_channels  # the stage's width
        s, p = torch.randn(2, c, 6, 8), torch.randn(2, 4, c, 6, 8)
        out = tfr(s, p)
        assert out.shape == p.shape
        rel = (out - p).norm() / p.norm()
        assert rel < 0.02, (n, rel)


def test_tfr_blocks_are_per_task() -> None:
    """Each task has its own TFR blocks: refining one task ignores the others' features and
    parameters, and a fourth task adds a third more TFR parameters than three."""
    torch.manual_seed(0)
    tfr = TaskFeatureRefiner(8, 2, tasks=3)
    with torch.no_grad():
        for p in tfr.parameters():
            p.normal_(0, 0.3)
    tfr.eval()
    s, p = torch.randn(1, 8, 5, 6), torch.randn(1, 3, 8, 5, 6)
    q = p.clone()
    q[:, 1:] = torch.randn_like(q[:, 1:])
    out_p, out_q = tfr(s, p), tfr(s, q)
    torch.testing.assert_close(out_p[:, 0], out_q[:, 0])
    assert not torch.allclose(out_p[:, 1], out_q[:, 1])
    assert not torch.allclose(out_p[:, 0], out_p[:, 1])  # different weights per task
    assert _count(TaskFeatureRefiner(8, 2, tasks=4)) * 3 == _count(tfr) * 4


@pytest.mark.parametrize(("size", "paper_m"), [("base", 15.9), ("large", 31.7), ("huge", 47.6)])
def test_tfr_parameters_match_paper_table5(size: str, paper_m: float) -> None:
    """Paper Table 5: TFR-base/large/huge add 15.9 / 31.7 / 47.6 M parameters (ViT-B, NYUD, 4
    tasks, the authors' widths [576, 288, 144]); per-task blocks give that within 0.5 %."""
    with torch.device("meta"):
        count = sum(_count(TaskFeatureRefiner(c, TFR_SIZES[size], tasks=4))
                    for c in (576, 288, 144))
    assert count / 1e6 == pytest.approx(paper_m, rel=5e-3)


def test_top_down_task_path_and_bfe_cascade() -> None:
    """Stage n > 0 refines the upsampled task features of stage n-1 (not the backbone's), and its
    bridge feature adds the previous one through a 1x1 conv that starts near zero."""
    model = _nyud_model().eval()
    rec: dict[str, object] = {}

    def keep(name: str):  # noqa: ANN202
        return lambda m, i, o: rec.__setitem__(name, (i, o))

    model.tfr[0].register_forward_hook(keep("tfr0"))
    model.task_up[0].register_forward_hook(keep("up0"))
    model.bfe[0].register_forward_hook(keep("bfe0"))
    model.bfe[1].register_forward_hook(keep("bfe1"))
    model.tfr[1].register_forward_hook(keep("tfr1"))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    refined0 = rec["tfr0"][1]  # (1, T, 32, 2, 2)
    up_in = rec["up0"][0][0]  # (1, T*32, 4, 4)
    expect = torch.nn.functional.interpolate(refined0.flatten(1, 2), size=(4, 4),
                                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(up_in, expect)
    bridge1 = rec["tfr1"][0][0]
    cascade = torch.nn.functional.interpolate(model.bridge_up[0](rec["bfe0"][1]), size=(4, 4),
                                              mode="bilinear", align_corners=False)
    torch.testing.assert_close(bridge1, rec["bfe1"][1] + cascade)
    assert model.bridge_up[0].weight.std() < 2e-3
    assert [layer.shape[-1] for layer in (rec["tfr0"][1], rec["tfr1"][1])] == [2, 4]
    assert rec["tfr1"][1].shape[2] == 16  # widths halve: 32 -> 16


def test_bfe_normalises_task_tokens_before_kv() -> None:
    """LayerNorm over channels before K/V: an affine change of every task token (a * x + b per
    token, a > 0) leaves the bridge feature unchanged."""
    torch.manual_seed(0)
    bfe = BridgeFeatureExtractor(8, pool=2, heads=2).eval()
    s, p = torch.randn(1, 8, 4, 6), torch.randn(1, 2, 8, 4, 6)
    a = torch.rand(1, 2, 1, 4, 6) + 0.5
    b = torch.randn(1, 2, 1, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(bfe(s, a * p + b), bfe(s, p), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- short training
def test_short_run_lowers_loss(tiny_h5: Path) -> None:
    check_short_run_lowers_loss("bfci", tiny_h5)
