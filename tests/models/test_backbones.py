"""Backbones: every advertised timm backbone builds (random init) and returns 4 maps with the
advertised channels and strides; local pretrained files load with a strict key check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlkit.errors import ConfigError, UnknownNameError
from mtlkit.models.backbones import build_backbone, input_size_hint

CASES = [
    ("tiny", [24, 48, 96, 160], [4, 8, 16, 32]),
    ("timm:hrnet_w18", [18, 36, 72, 144], [4, 8, 16, 32]),
    pytest.param("timm:hrnet_w48", [48, 96, 192, 384], [4, 8, 16, 32], marks=pytest.mark.slow),
    ("timm:resnet50", [256, 512, 1024, 2048], [4, 8, 16, 32]),
    ("timm:resnet50:output_stride=8", [256, 512, 1024, 2048], [4, 8, 8, 8]),
    ("timm:swin_tiny_patch4_window7_224", [96, 192, 384, 768], [4, 8, 16, 32]),
    ("timm:convnext_tiny", [96, 192, 384, 768], [4, 8, 16, 32]),
    pytest.param("timm:vit_base_patch16_224", [96, 192, 384, 768], [4, 8, 16, 32],
                 marks=pytest.mark.slow),  # 86 M parameters
]


@pytest.mark.parametrize("name,channels,strides", CASES,
                         ids=[getattr(c, "values", c)[0] for c in CASES])
def test_backbone_pyramid(name: str, channels: list[int], strides: list[int]) -> None:
    h, w = 32, 64  # the smallest inputs these models allow (stride 32, ViT patch 16)
    with input_size_hint((h, w)):
        net = build_backbone(name).eval()
    assert net.channels == channels and net.strides == strides
    with torch.no_grad():
        feats = net(torch.randn(1, 3, h, w))
    assert len(feats) == 4
    for f, c, s in zip(feats, channels, strides, strict=True):
        assert tuple(f.shape) == (1, c, h // s, w // s), (name, tuple(f.shape), c, s)
        assert torch.isfinite(f).all()


def test_vit_and_swin_follow_the_input_size_hint() -> None:
    with input_size_hint((48, 80)):
        net = build_backbone("timm:vit_tiny_patch16_224")
    assert tuple(net.model.model.patch_embed.img_size) == (48, 80)
    explicit = build_backbone("timm:swin_tiny_patch4_window7_224:img_size=[32,32]")
    assert tuple(explicit.model.patch_embed.img_size) == (32, 32)


def test_bad_names() -> None:
    with pytest.raises(UnknownNameError):
        build_backbone("timm:not_a_model")
    with pytest.raises(ConfigError, match="backbone options"):
        build_backbone("timm:resnet18:output_stride")
    with pytest.raises(ConfigError, match="reductions"):
        build_backbone("timm:resnet18:out_indices=[1,2]")


# ----------------------------------------------------------------------------- pretrained
def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return str(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_round_trip(tmp_path: Path, suffix: str) -> None:
    import timm

    torch.manual_seed(1)
    src = timm.create_model("resnet18")
    path = _save(src.state_dict(), tmp_path / f"r18{suffix}")
    net = build_backbone("timm:resnet18", pretrained=path)
    for k in ("conv1.weight", "layer4.1.conv2.weight", "layer2.0.bn1.running_var"):
        assert torch.equal(net.model.state_dict()[k], src.state_dict()[k]), k
    # the classifier head may be left out of the file (features_only drops it)
    headless = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    net2 = build_backbone("timm:resnet18", pretrained=_save(headless, tmp_path / f"h{suffix}"))
    assert torch.equal(net2.model.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])


def test_pretrained_vit_at_another_input_size(tmp_path: Path) -> None:
    import timm

    src = timm.create_model("vit_tiny_patch16_224")
    path = _save(src.state_dict(), tmp_path / "vit.safetensors")
    with input_size_hint((32, 48)):
        net = build_backbone("timm:vit_tiny_patch16_224", pretrained=path)
    got = net.model.model
    assert torch.equal(got.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert got.pos_embed.shape[1] == 1 + 2 * 3  # resampled from 14 x 14 to 2 x 3 tokens
    assert net(torch.randn(2, 3, 32, 48))[0].shape == (2, 24, 8, 12)


def test_pretrained_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build_backbone("timm:resnet18", pretrained=str(tmp_path / "none.safetensors"))
    msg = str(e.value)
    assert "not found" in msg and "timm.create_model('resnet18', pretrained=True)" in msg
    assert "save_file" in msg


def test_pretrained_wrong_keys_are_listed(tmp_path: Path) -> None:
    import timm

    state = timm.create_model("resnet18").state_dict()
    state["bogus.weight"] = state.pop("layer1.0.conv1.weight")
    with pytest.raises(ConfigError) as e:
        build_backbone("timm:resnet18", pretrained=_save(state, tmp_path / "bad.safetensors"))
    msg = str(e.value)
    assert "missing 1 key(s): layer1.0.conv1.weight" in msg
    assert "unexpected 1 key(s): bogus.weight" in msg
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable torch file"):
        build_backbone("timm:resnet18", pretrained=str(tmp_path / "junk.pth"))


def test_tiny_pretrained_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = build_backbone("tiny")
    path = _save(src.state_dict(), tmp_path / "tiny.safetensors")
    net = build_backbone("tiny", pretrained=path)
    for k, v in src.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    state = src.state_dict()
    state.pop("stem.0.0.weight")
    with pytest.raises(ConfigError, match="missing 1 key"):
        build_backbone("tiny", pretrained=_save(state, tmp_path / "t2.pth"))
