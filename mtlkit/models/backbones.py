"""Backbones: 4-scale feature pyramids, by default at strides 4, 8, 16, 32.

- ``tiny``: a small residual CNN, fast on CPU (the default for demos and tests).
- ``timm:<name>``: a timm model with ``features_only=True``; the last four feature levels of
  stride >= 4 form the pyramid. Tested names and their pyramids (channels @ strides):

  ============================== ================================ =====================
  name                           channels                         strides
  ============================== ================================ =====================
  ``timm:hrnet_w18``             18, 36, 72, 144                  4, 8, 16, 32
  ``timm:hrnet_w48``             48, 96, 192, 384                 4, 8, 16, 32
  ``timm:resnet50``              256, 512, 1024, 2048             4, 8, 16, 32
  ``timm:resnet50:output_stride=8``  256, 512, 1024, 2048         4, 8, 8, 8 (dilated)
  ``timm:convnext_tiny``         96, 192, 384, 768                4, 8, 16, 32
  ``timm:swin_tiny_patch4_window7_224``  96, 192, 384, 768        4, 8, 16, 32
  ``timm:vit_base_patch16_224``  96, 192, 384, 768                4, 8, 16, 32 (neck)
  ============================== ================================ =====================

  HRNet gives its raw branch outputs (timm ``feature_location=""``, as MTI-Net / MTL-PT use
  them), not the classification "incre" features. A dilated ResNet (``output_stride=8``) keeps
  stages 3-4 at stride 8: the pyramid is ``[f4, f8, f8', f8'']`` and ``strides`` says so
  (decoders that upsample every scale to the finest one, like ``baseline``, work unchanged).
  Swin and ViT are built for the dataset input size (``img_size``, from
  :func:`input_size_hint`, which the trainer sets; 224 x 224 otherwise).

  ViT (single scale, stride 16) becomes a pyramid as in InvPT / BFCI: the token maps of four
  evenly spaced blocks (3, 6, 9, 12 of 12) are reshaped to ``(B, E, H/16, W/16)`` and resampled
  by (de)convolutions - two 2x2 stride-2 transposed convs to stride 4 (E/8 channels), one to
  stride 8 (E/4), a 1x1 conv at stride 16 (E/2), a 3x3 stride-2 conv to stride 32 (E). This
  neck is initialised randomly (it is not part of the pretrained ViT).

- Extra timm keyword arguments go after a second colon, YAML values:
  ``timm:resnet50:output_stride=8``, ``timm:swin_tiny_patch4_window7_224:img_size=[480,640]``.

Pretrained weights come only from a local file (``pretrained=PATH``, ``.safetensors`` or
``.pth``), never from a download at run time. The file must hold the state dict of the plain
timm model (``timm.create_model(name).state_dict()`` keys); keys are checked strictly (missing
keys other than the classifier head, and unexpected keys, are errors listing the keys).

Contract: ``forward(x: (B, 3, H, W)) -> [f_0, .., f_3]`` with
``f_i: (B, channels[i], H/strides[i], W/strides[i])``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError, UnknownNameError
from mtlkit.models.blocks import BasicResBlock, ConvBNReLU
from mtlkit.registry import BACKBONES

STRIDES = [4, 8, 16, 32]
_INPUT_SIZE: list[tuple[int, int] | None] = [None]


@contextlib.contextmanager
def input_size_hint(size: tuple[int, int] | list[int] | None) -> Iterator[None]:
    """Within the block, backbones that need a fixed input size (ViT, Swin) are built for
    ``size`` (H, W) unless their name gives ``img_size`` explicitly."""
    old = _INPUT_SIZE[0]
    _INPUT_SIZE[0] = None if size is None else (int(size[0]), int(size[1]))
    try:
        yield
    finally:
        _INPUT_SIZE[0] = old


class TinyBackbone(nn.Module):
    """Stem (stride 4) + 4 stages of basic residual blocks; widths ``channels``."""

    def __init__(self, channels: tuple[int, ...] = (24, 48, 96, 160)) -> None:
        super().__init__()
        self.channels = list(channels)
        self.strides = STRIDES
        c0 = channels[0]
        self.stem = nn.Sequential(ConvBNReLU(3, c0, 3, 2), ConvBNReLU(c0, c0, 3, 2))
        stages = []
        cin = c0
        for i, c in enumerate(channels):
            first = BasicResBlock(cin, c, 1 if i == 0 else 2)
            stages.append(nn.Sequential(first, BasicResBlock(c, c)))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@BACKBONES.register("tiny")
def tiny(**kwargs: object) -> nn.Module:
    """Small residual CNN (about 1.4 M params), 4 scales 1/4..1/32; CPU default."""
    return TinyBackbone(**kwargs)  # type: ignore[arg-type]


class ViTPyramid(nn.Module):
    """Four (B, E, h, w) token maps at stride 16 -> strides 4, 8, 16, 32 (E/8, E/4, E/2, E)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        c = [dim // 8, dim // 4, dim // 2, dim]
        self.channels = c
        self.levels = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.BatchNorm2d(dim // 2),
                          nn.GELU(), nn.ConvTranspose2d(dim // 2, c[0], 2, 2)),
            nn.ConvTranspose2d(dim, c[1], 2, 2),
            nn.Conv2d(dim, c[2], 1),
            nn.Conv2d(dim, c[3], 3, stride=2, padding=1),
        ])

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [level(f) for level, f in zip(self.levels, feats, strict=True)]


def parse_timm_name(spec: str) -> tuple[str, dict[str, Any]]:
    """``"resnet50:output_stride=8,img_size=[64,64]"`` -> ``("resnet50", {...})``."""
    import yaml

    name, _, rest = spec.partition(":")
    if not rest:
        return name, {}
    try:
        kwargs = yaml.safe_load("{" + rest.replace("=", ": ") + "}")
    except yaml.YAMLError:
        kwargs = None
    if not isinstance(kwargs, dict) or any(v is None for v in kwargs.values()):
        raise ConfigError(f"bad backbone options {rest!r} in 'timm:{spec}'",
                          "write timm:<name>:key=value,key=value, "
                          "e.g. timm:resnet50:output_stride=8")
    return name, kwargs


def _is_vit(model_name: str) -> bool:
    return model_name.startswith(("vit_", "deit_", "deit3_"))


class TimmBackbone(nn.Module):
    """Adapter around ``timm.create_model(name, features_only=True)`` (see the module docstring).

    Models whose features are channels-last (Swin) are permuted to NCHW.
    """

    def __init__(self, name: str, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:  # pragma: no cover - timm is a dependency
            raise ConfigError("timm is not installed", "pip install timm") from e
        name, spec_kwargs = parse_timm_name(name)
        kwargs = {**spec_kwargs, **kwargs}
        if name not in timm.list_models():
            raise UnknownNameError(f"unknown timm model {name!r}", "see timm.list_models()")
        self.name = name
        vit = _is_vit(name)
        if name.startswith("hrnet"):
            kwargs.setdefault("feature_location", "")
        if (vit or name.startswith("swin")) and _INPUT_SIZE[0] is not None:
            kwargs.setdefault("img_size", _INPUT_SIZE[0])
        if vit:
            kwargs.setdefault("dynamic_img_size", True)
            if "out_indices" not in kwargs:
                depth = len(_meta_model(name, kwargs).blocks)
                kwargs["out_indices"] = tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))
        file_kwargs: dict[str, Any] = {}
        if pretrained:
            check_pretrained_file(name, pretrained, kwargs)
            file_kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(pretrained)}}
        try:
            self.model = timm.create_model(name, features_only=True, **file_kwargs, **kwargs)
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:
            what = "load pretrained weights into" if pretrained else "build"
            raise ConfigError(f"cannot {what} timm model {name!r} with {kwargs} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                              "check the backbone options, input size and weights file") from e
        info = self.model.feature_info
        reductions, channels = info.reduction(), info.channels()
        if vit:
            self.index = list(range(len(reductions)))[-4:]
            self.neck: nn.Module | None = ViTPyramid(channels[-1])
            self.channels = list(self.neck.channels)  # type: ignore[union-attr]
            r = reductions[-1]
            self.strides = [r // 4, r // 2, r, r * 2]
        else:
            self.neck = None
            levels = [i for i, r in enumerate(reductions) if r >= 4][-4:]
            strides = [reductions[i] for i in levels]
            if len(levels) < 4 or strides[0] != 4 or strides != sorted(strides):
                raise ConfigError(
                    f"timm model {name!r} has feature reductions {reductions}",
                    "choose a hierarchical model with 4 feature levels from stride 4 on",
                )
            self.index = levels
            self.channels = [channels[i] for i in levels]
            self.strides = strides
        fmt = getattr(self.model, "output_fmt", "NCHW")
        self._nhwc = getattr(fmt, "value", fmt) == "NHWC"

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.model(x)
        out = [feats[i] for i in self.index]
        if self._nhwc:
            out = [f.permute(0, 3, 1, 2).contiguous() for f in out]
        if self.neck is not None:
            out = self.neck(out)
        return out


def _meta_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The plain timm model on the meta device (no memory, no init cost): key/shape reference."""
    import timm

    plain = {k: v for k, v in kwargs.items()
             if k not in ("out_indices", "feature_location", "output_stride", "features_only")}
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **plain)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"pretrained file {str(path)!r} is not a readable torch file "
                              f"({type(e).__name__})",
                              "pass a .safetensors or .pth state dict") from e
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"pretrained file {str(path)!r} does not hold a state dict",
                          "save model.state_dict() (a mapping of names to tensors)")
    return state


def _how_to_get(name: str, path: str) -> str:
    return (f"on a machine with internet run: import timm, safetensors.torch; "
            f"m = timm.create_model('{name}', pretrained=True); "
            f"safetensors.torch.save_file(m.state_dict(), '{Path(path).name}'), "
            f"then copy the file here and pass its path")


def _key_report(keys: list[str], n: int = 8) -> str:
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_pretrained_file(name: str, path: str, kwargs: dict[str, Any]) -> None:
    """Strict key check of a local weights file against the plain timm model ``name``.

    Missing keys are allowed only for the classifier head (``features_only`` drops it);
    anything else missing, and every unexpected key, is a ConfigError naming the keys.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pretrained weights file {path!r} not found", _how_to_get(name, path))
    state = _read_state_dict(p)
    ref = _meta_model(name, kwargs)
    expected = set(ref.state_dict())
    head = getattr(ref, "pretrained_cfg", {}).get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)
    missing = sorted(k for k in expected - set(state)
                     if not any(k == h or k.startswith(h + ".") for h in heads))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_key_report(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_key_report(unexpected)}")
        raise ConfigError(
            f"pretrained file {path!r} does not match timm model {name!r}: " + "; ".join(parts),
            "pass the state dict of the same timm model; " + _how_to_get(name, path),
        )


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load a local ``.safetensors`` / ``.pth`` state dict into ``model``; strict key check."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pretrained weights file {path!r} not found",
                          "pass the path of a state dict saved from this backbone")
    state = _read_state_dict(p)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(f"pretrained file {path!r} does not fit the backbone "
                          f"({str(e).splitlines()[-1].strip()})",
                          "pass weights saved from the same backbone configuration") from e
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_key_report(sorted(missing))}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_key_report(sorted(unexpected))}")
        raise ConfigError(f"pretrained file {path!r} does not match the backbone: "
                          + "; ".join(parts), "pass weights saved from the same backbone")


def build_backbone(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """``tiny`` (``pretrained``: a file saved from a TinyBackbone) or ``timm:<model>[:k=v,..]``."""
    if name.startswith("timm:"):
        return TimmBackbone(name[5:], pretrained=pretrained, **kwargs)
    backbone = BACKBONES.get(name)(**kwargs)
    if pretrained:
        load_pretrained(backbone, pretrained)
    return backbone
