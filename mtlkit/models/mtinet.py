"""MTI-Net: multi-scale task interaction network (papers/004, Vandenhende et al., ECCV 2020).

Pipeline (Fig. 1 right), with backbone features ``B_s: (B, Cb_s, H/r_s, W/r_s)``, strides
``r_s = 4, 8, 16, 32`` for scales ``s = 0..S-1`` (``S = scales``, 4 in the paper, Table 3):

1. Initial task predictions at every scale (Sec. 2.3), from the lowest resolution up. At scale
   ``s`` each front-end task ``k`` (main and auxiliary tasks) has a head of two residual blocks
   whose input is ``B_s`` concatenated with the task's propagated features from scale ``s+1``
   (upsampled x2; Sec. 2.4) -> task features ``F_{k,s}: (B, C_s, h_s, w_s)``, and a 1x1 conv ->
   initial prediction (deep supervision, weighted like the final losses, Sec. 3.1).
2. Feature Propagation Module (Sec. 2.4, Fig. 3) from scale ``s`` to ``s-1``:
   feature harmonization ``X = cat_k F_{k,s}: (B, N C_s, h, w)`` -> learnable non-linear ``f``
   (two residual blocks ``N C -> N C / 4`` and a 1x1 conv back to ``N C``) -> split into ``N``
   chunks of ``C`` channels -> softmax over the task dimension -> multiply with the task features
   -> concat -> reduce ``N C -> C`` (residual block) = shared representation ``S``; per-task
   squeeze-and-excitation ``F'_{k,s} = F_{k,s} + SE_k(S)`` (residual), with hidden width
   ``C // 16`` as MTL-PT's ``SEBlock`` (:class:`SqueezeExcitation`).
3. Multi-modal distillation at every scale (eq. 1):
   ``F^o_{k,s} = F_{k,s} + sum_{l != k} sigmoid(W_{k,l,s} F_{l,s}) * (W'_{k,l,s} F_{l,s})``
   for the main tasks ``k`` and all front-end tasks ``l``; both 3x3 convs without bias, as
   MTL-PT's ``SABlock``.
4. Feature aggregation (Sec. 2.5): upsample ``F^o_{k,s}`` of all scales to 1/4, concatenate
   ``(B, sum_s C_s, H/4, W/4)``, decode with a per-task HRNet head (1x1 conv-BN-ReLU, 1x1 conv),
   upsample to the input size.

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [{task: (B, C_t, h_s, w_s)} for s = 0..S-1]}``
(aux ordered 1/4, 1/8, 1/16, 1/32; auxiliary tasks appear only there). ``aux_weight = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import build_backbone
from mtlkit.models.blocks import BasicResBlock, ConvBNReLU, upsample_to
from mtlkit.models.padnet import (
    BLOCKS,
    InitialTaskPredictions,
    SpatialAttentionDistillation,
    check_choice,
    check_kwargs,
    check_positive,
    resolve_tasks,
)
from mtlkit.registry import ARCHS


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation as MTL-PT's ``SEBlock`` (Hu et al.):
    ``x * sigmoid(W2 ReLU(W1 mean_hw(x)))`` with ``W1: C -> C // reduction``.

    ``x: (B, C, h, w) -> (B, C, h, w)``. The hidden width is ``C // reduction`` (MTL-PT; 2, 4, 9
    at HRNet-18's FPM scales 36, 72, 144 channels), floored at 1 for toy widths below
    ``reduction`` where MTL-PT's would be empty.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.hidden = max(channels // reduction, 1)
        self.squeeze = nn.Sequential(
            nn.Linear(channels, self.hidden), nn.ReLU(inplace=True),
            nn.Linear(self.hidden, channels), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.squeeze(x.mean(dim=(2, 3)))  # (B, C)
        return x * scale[:, :, None, None]


class FeaturePropagation(nn.Module):
    """Feature Propagation Module (MTI-Net Sec. 2.4, Fig. 3) at one scale.

    ``forward({task: (B, C, h, w)})`` -> ``{task: (B, C, h, w)}`` refined task features.
    """

    def __init__(self, tasks: Sequence[str], channels: int, se_reduction: int = 16) -> None:
        super().__init__()
        self.tasks = list(tasks)
        n = len(self.tasks)
        nc = n * channels
        hidden = max(nc // 4, 1)
        # learnable non-linear function f of the feature harmonization
        self.harmonize = nn.Sequential(
            BasicResBlock(nc, hidden), BasicResBlock(hidden, hidden), nn.Conv2d(hidden, nc, 1)
        )
        self.reduce = BasicResBlock(nc, channels)  # N*C -> C
        self.se = nn.ModuleDict(
            {t: SqueezeExcitation(channels, se_reduction) for t in self.tasks}
        )

    def shared(self, feats: dict[str, Tensor]) -> Tensor:
        """The shared representation ``S: (B, C, h, w)`` (feature harmonization)."""
        x = torch.stack([feats[t] for t in self.tasks], dim=1)  # (B, N, C, h, w)
        b, n, c, h, w = x.shape
        logits = self.harmonize(x.reshape(b, n * c, h, w)).reshape(b, n, c, h, w)
        attended = torch.softmax(logits, dim=1) * x  # task attention mask over N
        return self.reduce(attended.reshape(b, n * c, h, w))

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        s = self.shared(feats)
        return {t: feats[t] + self.se[t](s) for t in self.tasks}


class AggregationHead(nn.Module):
    """HRNet head on the concatenated multi-scale features (Sec. 2.5):
    ``(B, cin, h, w) -> 1x1 conv-BN-ReLU (hidden) -> 1x1 conv -> (B, cout, h, w)``."""

    def __init__(self, cin: int, cout: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or cin
        self.body = ConvBNReLU(cin, hidden, 1)
        self.out = nn.Conv2d(hidden, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class MTINet(nn.Module):
    """MTI-Net (see module docstring). ``image (B, 3, H, W)`` -> output dict."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int | Sequence[int] | None = (16, 24, 32, 48), scales: int = 4,
        fpm: bool = True, head_channels: int | None = 64, se_reduction: int = 16,
        front_blocks: int = 2, block: str = "basic", aux_tasks: Sequence[str] | None = None,
        aux_channels: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_choice("block", block, BLOCKS)
        check_positive(head_channels=head_channels, se_reduction=se_reduction,
                       front_blocks=front_blocks)
        if scales not in (1, 2, 3, 4):
            raise ConfigError(f"scales={scales} is not valid", "use 1..4 (1/4 up to 1/32)")
        self.tasks, self.front_tasks = resolve_tasks(tasks, aux_tasks, aux_channels)
        self.aux_tasks = [t for t in self.front_tasks if t not in self.tasks]
        self.aux_weight = 1.0
        self.scales = scales
        self.use_fpm = fpm
        self.backbone = build_backbone(backbone, pretrained=pretrained)
        bch = list(self.backbone.channels)[:scales]
        if channels is None:
            ch = bch
        elif isinstance(channels, int):
            ch = [channels] * scales
        else:
            ch = [int(c) for c in channels][:scales]
            if len(ch) != scales:
                raise ConfigError(f"channels={list(channels)} has fewer than {scales} entries",
                                  "give one width per scale or a single int")
        check_positive(**{f"channels[{i}]": c for i, c in enumerate(ch)})
        self.channels = ch
        front = []
        for s in range(scales):
            prop = ch[s + 1] if fpm and s < scales - 1 else 0
            front.append(InitialTaskPredictions(bch[s] + prop, ch[s], self.front_tasks,
                                                front_blocks, block))
        self.front = nn.ModuleList(front)
        self.fpm = nn.ModuleList(
            [FeaturePropagation(list(self.front_tasks), ch[s], se_reduction) if fpm and s > 0
             else nn.Identity() for s in range(scales)]
        )
        self.distill = nn.ModuleList(
            [SpatialAttentionDistillation(list(self.tasks), list(self.front_tasks), ch[s])
             for s in range(scales)]
        )
        self.heads = nn.ModuleDict(
            {t: AggregationHead(sum(ch), c, head_channels) for t, c in self.tasks.items()}
        )

    def front_end(self, feats: list[Tensor]) -> tuple[list[dict[str, Tensor]], list[dict]]:
        """Initial predictions from 1/32 up to 1/4 with FPM (Sec. 2.3-2.4).

        Returns per-scale task features and initial predictions, both ordered 1/4 .. 1/32.
        """
        task_feats: list[dict[str, Tensor]] = [{} for _ in range(self.scales)]
        preds: list[dict[str, Tensor]] = [{} for _ in range(self.scales)]
        propagated: dict[str, Tensor] | None = None
        for s in reversed(range(self.scales)):
            b = feats[s]
            if propagated is None:
                inp: Tensor | dict[str, Tensor] = b
            else:
                inp = {t: torch.cat([b, upsample_to(p, b)], dim=1) for t, p in propagated.items()}
            task_feats[s], preds[s] = self.front[s](inp)
            propagated = self.fpm[s](task_feats[s]) if self.use_fpm and s > 0 else None
        return task_feats, preds

    def forward(self, image: Tensor) -> dict[str, Any]:
        feats = self.backbone(image)[: self.scales]
        task_feats, preds = self.front_end(feats)
        distilled = [self.distill[s](task_feats[s]) for s in range(self.scales)]
        final = {}
        for t in self.tasks:
            ref = distilled[0][t]
            x = torch.cat([upsample_to(d[t], ref) for d in distilled], dim=1)
            final[t] = upsample_to(self.heads[t](x), image)
        return {"final": final, "aux": preds}


@ARCHS.register("mtinet")
def mtinet(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
           **kwargs: Any) -> nn.Module:
    """MTI-Net: per-scale initial predictions, distillation (eq. 1), FPM and aggregation.

    kwargs: ``channels`` (task-feature width per scale: a list of 4 (default [16, 24, 32, 48]),
    an int, or None = the backbone widths as in the paper), ``scales`` (1..4 scales from 1/4, 4),
    ``fpm`` (True), ``head_channels`` (hidden width of the aggregation heads, 64; None = sum of
    the scale widths as in the paper), ``se_reduction`` (16: SE hidden width C // 16, as MTL-PT),
    ``front_blocks`` (2), ``block`` ("basic"), ``aux_tasks`` (front-end-only tasks),
    ``aux_channels`` ({aux task: out channels}, default from mtlkit.tasks).
    """
    check_kwargs("mtinet", MTINet.__init__, kwargs)
    return MTINet(tasks, backbone, pretrained, **kwargs)
