"""PAD-Net: single-scale prediction-and-distillation (MTI-Net paper, Sec. 2.1, eq. 1 at one scale).

The MTI-Net paper (papers/004) uses PAD-Net (Xu et al.) as the single-scale special case of its
model (Table 3, "1/4 (Pad-Net)"; Fig. 1 left). mtlkit's ``padnet``:

1. backbone -> 4 scales, fused at 1/4 by :class:`HighResolutionFuse` as MTL-PT's
   ``HighResolutionFuse`` (``fuse_hrnet: True`` in its PAD-Net configs): upsample to 1/4,
   concatenate, then a 1x1 conv-BN-ReLU (to ``fuse_channels``; None keeps the concatenated
   width, 270 -> 270 on HRNet-18 as MTL-PT; ``fuse_conv=False`` concatenates only):
   ``x: (B, C_in, H/4, W/4)``;
2. initial (front-end) task predictions: per task two residual blocks -> task features
   ``F_k: (B, C, H/4, W/4)`` and a 1x1 conv -> initial prediction ``(B, C_k, H/4, W/4)``
   (deep supervision; auxiliary tasks are predicted only here);
3. multi-modal distillation by spatial attention (MTI-Net eq. 1 at one scale):
   ``F_k^o = F_k + sum_{l != k} sigmoid(W_{k,l} F_l) * (W'_{k,l} F_l)`` with 3x3 convs without
   bias (MTL-PT's ``SABlock``);
4. final per-task prediction modules (residual blocks + 1x1 conv), upsampled to the input size.

This module also holds the pieces :mod:`mtlkit.models.tpim` and :mod:`mtlkit.models.mtinet`
reuse: task-set resolution (main + auxiliary tasks), the HRNet-style scale fusion, residual
stacks, the per-task front end and the spatial-attention distillation.

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [{task: (B, C_t, H/4, W/4)}]}``; the aux
entry has every front-end task (main and auxiliary). The papers weight the front-end losses like
the final ones (MTI-Net Sec. 3.1), so ``aux_weight = 1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import build_backbone
from mtlkit.models.blocks import BasicResBlock, ConvBNReLU, upsample_to
from mtlkit.registry import ARCHS

BLOCKS = ("basic", "bottleneck")


# ----------------------------------------------------------------------------- task sets
def resolve_tasks(
    tasks: dict[str, int], aux_tasks: Sequence[str] | None = None,
    aux_channels: dict[str, int] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Split the task set into (main, front-end) ``name -> out_channels`` dicts.

    ``main`` tasks get final predictions; ``front`` = main + auxiliary tasks, all predicted in the
    front end (MTI-Net Sec. 2.1, "auxiliary tasks"). An auxiliary task's channels come from
    ``tasks`` (if listed there too; it is then removed from ``main``), else ``aux_channels``, else
    :func:`mtlkit.tasks.get_task` defaults.
    """
    if not tasks:
        raise ConfigError("the model needs at least one task", "pass e.g. tasks={'semseg': 40}")
    aux = list(dict.fromkeys(aux_tasks or []))
    aux_channels = dict(aux_channels or {})
    main = {t: int(c) for t, c in tasks.items() if t not in aux}
    if not main:
        raise ConfigError(
            f"every task {sorted(tasks)} is auxiliary", "keep at least one task out of aux_tasks"
        )
    extra = {}
    for t in aux:
        if t in tasks:
            extra[t] = int(tasks[t])
        elif t in aux_channels:
            extra[t] = int(aux_channels[t])
        else:
            from mtlkit.tasks import get_task

            extra[t] = get_task(t).out_channels
    for t, c in {**main, **extra}.items():
        if c < 1:
            raise ConfigError(f"task {t!r} has {c} output channels", "use a positive number")
    return main, {**main, **extra}


def check_kwargs(arch: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """ConfigError naming unknown ``model.kwargs`` keys of ``arch`` (a typo must not pass)."""
    params = inspect.signature(fn).parameters
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(
            f"arch {arch!r} got unknown keyword argument(s) {unknown}", f"known: {sorted(known)}"
        )


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid", f"choose one of {list(choices)}")


def check_positive(**values: int | float | None) -> None:
    for name, v in values.items():
        if v is not None and v <= 0:
            raise ConfigError(f"{name}={v} must be positive")


# ----------------------------------------------------------------------------- layers
class Bottleneck(nn.Module):
    """ResNet bottleneck ``1x1 -> 3x3 -> 1x1`` (width ``cout // 4``) with a projection shortcut
    when the shape changes; ``(B, cin, H, W) -> (B, cout, H, W)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 4, 1)
        self.body = nn.Sequential(
            ConvBNReLU(cin, mid, 1), ConvBNReLU(mid, mid, 3), ConvBNReLU(mid, cout, 1, relu=False)
        )
        self.short = nn.Identity() if cin == cout else ConvBNReLU(cin, cout, 1, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.short(x))


def res_stack(cin: int, cout: int, n: int = 2, block: str = "basic") -> nn.Sequential:
    """``n`` residual blocks ``cin -> cout -> ... -> cout`` (basic or bottleneck)."""
    make = BasicResBlock if block == "basic" else Bottleneck
    return nn.Sequential(*[make(cin if i == 0 else cout, cout) for i in range(n)])


def fuse_scales(feats: Sequence[Tensor]) -> Tensor:
    """HRNet-head fusion: upsample every scale to the first one and concatenate on channels.

    feats: [(B, C_i, H_i, W_i)] -> (B, sum C_i, H_0, W_0).
    """
    return torch.cat([upsample_to(f, feats[0]) for f in feats], dim=1)


class HighResolutionFuse(nn.Module):
    """MTL-PT's HRNet pyramid fuse: :func:`fuse_scales`, then a 1x1 conv-BN-ReLU.

    ``[(B, C_i, H_i, W_i)] -> (B, out_channels, H_0, W_0)``; ``out_channels`` None keeps
    ``sum C_i`` (MTL-PT: 270 -> 270 on HRNet-18). ``conv=False``: concatenation only (then
    ``out_channels`` must be None). MTL-PT's conv has a bias before the BN; it is redundant
    there (the BN removes any constant), so the conv here has none.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int | None = None,
                 conv: bool = True) -> None:
        super().__init__()
        cin = sum(in_channels)
        if not conv and out_channels is not None:
            raise ConfigError(f"fuse_channels={out_channels} needs the fuse conv",
                              "set fuse_conv: true, or fuse_channels: null to concatenate only")
        self.out_channels = cin if out_channels is None else out_channels
        self.conv: nn.Module = ConvBNReLU(cin, self.out_channels, 1) if conv else nn.Identity()

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.conv(fuse_scales(feats))


class SharedExtractor(nn.Module):
    """Backbone + :class:`HighResolutionFuse` at 1/4.

    image (B, 3, H, W) -> (B, out_channels, H/4, W/4); ``out_channels = fuse_channels``, or
    ``sum(backbone.channels)`` when ``fuse_channels`` is None.
    """

    def __init__(self, backbone: str, pretrained: str | None, fuse_channels: int | None,
                 fuse_conv: bool = True) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained=pretrained)
        self.fuse = HighResolutionFuse(self.backbone.channels, fuse_channels, fuse_conv)
        self.out_channels = self.fuse.out_channels

    def forward(self, image: Tensor) -> Tensor:
        return self.fuse(self.backbone(image))


class InitialTaskPredictions(nn.Module):
    """Front end: per task a residual stack (task features) and a 1x1 conv (initial prediction).

    ``forward(x)`` with ``x: (B, cin, h, w)`` shared by all tasks, or ``{task: (B, cin, h, w)}``
    per task -> ``(features {task: (B, channels, h, w)}, preds {task: (B, C_task, h, w)})``.
    """

    def __init__(
        self, cin: int, channels: int, tasks: dict[str, int], blocks: int = 2, block: str = "basic"
    ) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.refine = nn.ModuleDict({t: res_stack(cin, channels, blocks, block) for t in tasks})
        self.decode = nn.ModuleDict({t: nn.Conv2d(channels, c, 1) for t, c in tasks.items()})

    def forward(self, x: Tensor | dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        feats = {t: self.refine[t](x[t] if isinstance(x, dict) else x) for t in self.tasks}
        preds = {t: self.decode[t](feats[t]) for t in self.tasks}
        return feats, preds


class SpatialAttentionDistillation(nn.Module):
    """Multi-modal distillation by spatial attention (MTI-Net eq. 1 at one scale; PAD-Net).

    ``F_k^o = F_k + sum_{l in sources, l != k} sigmoid(W_{k,l} F_l) * (W'_{k,l} F_l)``
    for every target ``k``, with 3x3 convs ``W_{k,l}`` and ``W'_{k,l}``, both without bias as
    MTL-PT's ``SABlock`` (PAD-Net and MTI-Net).
    All convs reading the same source ``l`` are evaluated as one conv whose output channels are
    the concatenation of ``[W'_{k,l}; W_{k,l}]`` over its targets ``k`` (the same function, one
    kernel launch per source).

    ``forward({task: (B, C, h, w)})`` (all ``sources``) -> ``{k: (B, C, h, w)}`` for ``targets``.
    """

    def __init__(self, targets: Sequence[str], sources: Sequence[str], channels: int) -> None:
        super().__init__()
        self.targets = list(targets)
        self.sources = list(sources)
        self.channels = channels
        self.routes = {s: [t for t in self.targets if t != s] for s in self.sources}
        self.feat = nn.ModuleDict()
        self.attn = nn.ModuleDict()
        for s, ts in self.routes.items():
            if ts:
                self.feat[s] = nn.Conv2d(channels, channels * len(ts), 3, padding=1, bias=False)
                self.attn[s] = nn.Conv2d(channels, channels * len(ts), 3, padding=1, bias=False)

    def messages(self, feats: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """``{k: sigmoid(W_{k,l} F_l) * (W'_{k,l} F_l)}`` for source ``l`` and its targets."""
        ts = self.routes[source]
        if not ts:
            return {}
        x = feats[source]
        msg = self.feat[source](x) * torch.sigmoid(self.attn[source](x))
        return dict(zip(ts, msg.split(self.channels, dim=1), strict=True))

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {t: feats[t] for t in self.targets}
        for s in self.sources:
            for t, m in self.messages(feats, s).items():
                out[t] = out[t] + m
        return out


class PredictionHeads(nn.Module):
    """Final per-task prediction modules: residual stack (``blocks`` may be 0) + 1x1 conv.

    ``forward({task: (B, cin, h, w)}, size)`` -> ``{task: (B, C_task, *size)}`` (bilinear).
    """

    def __init__(self, cin: int, tasks: dict[str, int], blocks: int = 1,
                 block: str = "basic") -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.heads = nn.ModuleDict({
            t: nn.Sequential(*res_stack(cin, cin, blocks, block), nn.Conv2d(cin, c, 1))
            for t, c in tasks.items()
        })

    def forward(self, feats: dict[str, Tensor],
                size: Tensor | tuple[int, int]) -> dict[str, Tensor]:
        return {t: upsample_to(self.heads[t](feats[t]), size) for t in self.tasks}


# ----------------------------------------------------------------------------- model
class PADNet(nn.Module):
    """Single-scale PAD-Net (see module docstring). ``image (B, 3, H, W)`` -> output dict."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int = 16, fuse_channels: int | None = 32, fuse_conv: bool = True,
        front_blocks: int = 2, head_blocks: int = 1, block: str = "basic",
        aux_tasks: Sequence[str] | None = None, aux_channels: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_choice("block", block, BLOCKS)
        check_positive(channels=channels, fuse_channels=fuse_channels, front_blocks=front_blocks)
        self.tasks, self.front_tasks = resolve_tasks(tasks, aux_tasks, aux_channels)
        self.aux_tasks = [t for t in self.front_tasks if t not in self.tasks]
        self.aux_weight = 1.0
        self.extractor = SharedExtractor(backbone, pretrained, fuse_channels, fuse_conv)
        self.front = InitialTaskPredictions(
            self.extractor.out_channels, channels, self.front_tasks, front_blocks, block
        )
        self.distill = SpatialAttentionDistillation(list(self.tasks), list(self.front_tasks),
                                                    channels)
        self.heads = PredictionHeads(channels, self.tasks, head_blocks, block)

    def forward(self, image: Tensor) -> dict[str, Any]:
        x = self.extractor(image)
        feats, initial = self.front(x)
        distilled = self.distill(feats)
        return {"final": self.heads(distilled, image), "aux": [initial]}


@ARCHS.register("padnet")
def padnet(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
           **kwargs: Any) -> nn.Module:
    """PAD-Net: 1/4-scale initial predictions + spatial-attention distillation (MTI-Net eq. 1).

    kwargs: ``channels`` (task-feature width C, 16), ``fuse_channels`` (output width of the 1x1
    conv-BN-ReLU fusing the 1/4 features, 32; None keeps all backbone channels, as MTL-PT's
    HighResolutionFuse), ``fuse_conv`` (True; False concatenates only), ``front_blocks``
    (residual blocks per front-end head, 2), ``head_blocks`` (residual blocks per final head, 1),
    ``block`` ("basic" | "bottleneck"), ``aux_tasks``, ``aux_channels``.
    """
    check_kwargs("padnet", PADNet.__init__, kwargs)
    return PADNet(tasks, backbone, pretrained, **kwargs)
