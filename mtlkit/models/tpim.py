"""TPIM: Task Pair Interaction Module with Iterative Fusion Block (papers/002).

Pipeline (Fig. 1): shared extractor -> intermediate prediction modules (supervised) -> TPIM of
``N^2`` Cross-task Interaction Blocks (CIB) -> per-task aggregation -> final prediction modules.

- Shared extractor: backbone, 4 scales fused at 1/4 as MTL-PT's ``HighResolutionFuse``
  (upsample + concatenate + 1x1 conv-BN-ReLU, :class:`~mtlkit.models.padnet.HighResolutionFuse`;
  the PAD-Net framework of MTL-PT the paper builds on): ``x: (B, C_in, h, w)`` with
  ``h, w = H/4, W/4``.
- Intermediate prediction module per task ``t`` (main and auxiliary): two residual blocks ->
  ``f_t: (B, C, h, w)`` and a 1x1 conv -> intermediate prediction (deep supervision; the paper
  reuses MTI-Net's loss scheme, so these losses weigh like the final ones: ``aux_weight = 1``).
- CIB for a source/target pair ``(s, t)``, ``s != t`` (Fig. 2):

  * self-attention (eq. 1): ``self_{s->t} = F_s(f_s) * sigmoid(F_m(f_s))``, 3x3 convs;
  * pixel-wise global attention (eq. 2): ``Q = P_Q(down_sc f_t)``, ``K = P_K(down_sc f_s)``,
    ``V = P_V(down_sc f_s)`` with ``P_*`` = 1x1 conv + BN + ReLU (``Q, K: d`` channels, ``V: C``),
    flattened to ``(B, n, d)`` / ``(B, n, C)`` with ``n = ceil(h/sc) * ceil(w/sc)``;
    affinity ``Co_{s->t} = softmax_row(Q K^T / sqrt(d)): (B, n, n)`` (row = target pixel);
  * Iterative Fusion Block (eq. 6-8) through :func:`mtlkit.ops.ifb` (variant A, B or C,
    ``n_iter`` iterations, learnable ``alpha`` initialised to 0.3; Table 3-4), then
    ``V_{s->t} = up_sc IFB(V, Co_{s->t})`` (eq. 3);
  * ``f_{s->t} = self_{s->t} + V_{s->t}`` (eq. 4).

- Aggregation (eq. 5): ``f^o_t = sum_s f_{s->t}`` with ``f_{t->t} = f_t`` (the CIB of a pair
  ``(t, t)`` is the identity), for every main task ``t`` and every front-end task ``s``.
- Final prediction module per main task: residual blocks + 1x1 conv, upsampled to the input.

``down_sc`` is average pooling to ``(ceil(h/sc), ceil(w/sc))``, ``up_sc`` bilinear resizing back
to ``(h, w)``. ``variant="A"`` with ``n_iter=1`` is the plain non-local product ("w/o IFB").

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [{task: (B, C_t, H/4, W/4)}]}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.blocks import ConvBNReLU, upsample_to
from mtlkit.models.padnet import (
    BLOCKS,
    InitialTaskPredictions,
    PredictionHeads,
    SharedExtractor,
    check_choice,
    check_kwargs,
    check_positive,
    resolve_tasks,
)
from mtlkit.ops import ifb
from mtlkit.registry import ARCHS

IFB_VARIANTS = ("A", "B", "C")


def downscale(x: Tensor, sc: int) -> Tensor:
    """``down_sc``: average pooling (B, C, h, w) -> (B, C, ceil(h/sc), ceil(w/sc))."""
    if sc == 1:
        return x
    h, w = x.shape[-2:]
    return F.adaptive_avg_pool2d(x, (math.ceil(h / sc), math.ceil(w / sc)))


class CrossTaskInteraction(nn.Module):
    """Cross-task Interaction Block for one pair ``(s -> t)`` (TPIM Sec. 3.3, eq. 1-4).

    ``forward(f_s, f_t)`` with ``f_s, f_t: (B, C, h, w)`` -> ``f_{s->t}: (B, C, h, w)``.
    """

    def __init__(
        self, channels: int, key_channels: int, sc: int = 2, n_iter: int = 18,
        variant: str = "C", alpha_init: float = 0.3,
    ) -> None:
        super().__init__()
        self.sc, self.n_iter, self.variant = sc, n_iter, variant
        self.key_channels = key_channels
        self.f_s = nn.Conv2d(channels, channels, 3, padding=1)  # F_s of eq. 1
        self.f_m = nn.Conv2d(channels, channels, 3, padding=1)  # F_m of eq. 1
        self.p_q = ConvBNReLU(channels, key_channels, 1)
        self.p_k = ConvBNReLU(channels, key_channels, 1)
        self.p_v = ConvBNReLU(channels, channels, 1)
        if variant == "A":  # eq. 6 has no alpha; keep it out of the parameters
            self.register_buffer("alpha", torch.tensor(float(alpha_init)), persistent=False)
        else:
            self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def self_attention(self, f_s: Tensor) -> Tensor:
        """eq. 1: ``F_s(f_s) * sigmoid(F_m(f_s))``, (B, C, h, w)."""
        return self.f_s(f_s) * torch.sigmoid(self.f_m(f_s))

    def affinity(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """eq. 2: ``(Co_{s->t}: (B, n, n), V: (B, n, C), (h', w'))`` on the downscaled grid."""
        ds, dt = downscale(f_s, self.sc), downscale(f_t, self.sc)
        hw = (ds.shape[-2], ds.shape[-1])
        q = self.p_q(dt).flatten(2).transpose(1, 2)  # (B, n, d)
        k = self.p_k(ds).flatten(2)  # (B, d, n)
        v = self.p_v(ds).flatten(2).transpose(1, 2)  # (B, n, C)
        co = torch.softmax(torch.bmm(q, k) / math.sqrt(self.key_channels), dim=-1)
        return co, v, hw

    def global_attention(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """eq. 2-3 with the IFB (eq. 6-8): ``V_{s->t}: (B, C, h, w)``."""
        co, v, (h, w) = self.affinity(f_s, f_t)
        fused = ifb(co, v, self.alpha, iters=self.n_iter, variant=self.variant)  # (B, n, C)
        fused = fused.transpose(1, 2).reshape(v.shape[0], v.shape[2], h, w)
        return upsample_to(fused, f_t)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return self.self_attention(f_s) + self.global_attention(f_s, f_t)  # eq. 4


class TaskPairInteraction(nn.Module):
    """TPIM (Sec. 3.2, Fig. 1): one CIB per ordered pair ``(s, t)``, ``s != t``, and the
    per-target aggregation ``f^o_t = sum_s f_{s->t}`` with ``f_{t->t} = f_t`` (eq. 5).

    ``forward({task: (B, C, h, w)})`` (all ``sources``) -> ``{t: (B, C, h, w)}`` for ``targets``.
    """

    def __init__(self, targets: Sequence[str], sources: Sequence[str], channels: int,
                 **cib_kwargs: Any) -> None:
        super().__init__()
        self.targets, self.sources = list(targets), list(sources)
        self.blocks = nn.ModuleDict({
            self.key(s, t): CrossTaskInteraction(channels, **cib_kwargs)
            for t in self.targets for s in self.sources if s != t
        })

    @staticmethod
    def key(s: str, t: str) -> str:
        return f"{s}_to_{t}"

    def pair(self, feats: dict[str, Tensor], s: str, t: str) -> Tensor:
        """``f_{s->t}``; the identity ``f_t`` for ``s == t``."""
        if s == t:
            return feats[t]
        return self.blocks[self.key(s, t)](feats[s], feats[t])

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for t in self.targets:
            acc = feats[t]
            for s in self.sources:
                if s != t:
                    acc = acc + self.pair(feats, s, t)
            out[t] = acc
        return out


class TPIMNet(nn.Module):
    """Extractor + intermediate predictions + TPIM + final predictions (module docstring)."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int = 16, key_channels: int | None = None, fuse_channels: int | None = 32,
        fuse_conv: bool = True, sc: int = 4, n_iter: int = 18, variant: str = "C",
        alpha_init: float = 0.3,
        front_blocks: int = 2, head_blocks: int = 1, block: str = "basic",
        aux_tasks: Sequence[str] | None = None, aux_channels: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_choice("block", block, BLOCKS)
        check_choice("variant", variant, IFB_VARIANTS)
        key_channels = key_channels or max(channels // 2, 1)
        check_positive(channels=channels, key_channels=key_channels, fuse_channels=fuse_channels,
                       sc=sc, front_blocks=front_blocks)
        if n_iter < 0 or head_blocks < 0:
            raise ConfigError(f"n_iter={n_iter}, head_blocks={head_blocks} must be >= 0")
        self.tasks, self.front_tasks = resolve_tasks(tasks, aux_tasks, aux_channels)
        self.aux_tasks = [t for t in self.front_tasks if t not in self.tasks]
        self.aux_weight = 1.0
        self.extractor = SharedExtractor(backbone, pretrained, fuse_channels, fuse_conv)
        self.front = InitialTaskPredictions(
            self.extractor.out_channels, channels, self.front_tasks, front_blocks, block
        )
        self.tpim = TaskPairInteraction(
            list(self.tasks), list(self.front_tasks), channels, key_channels=key_channels, sc=sc,
            n_iter=n_iter, variant=variant, alpha_init=alpha_init,
        )
        self.heads = PredictionHeads(channels, self.tasks, head_blocks, block)

    def forward(self, image: Tensor) -> dict[str, Any]:
        x = self.extractor(image)
        feats, intermediate = self.front(x)
        fused = self.tpim(feats)
        return {"final": self.heads(fused, image), "aux": [intermediate]}


@ARCHS.register("tpim")
def tpim(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
         **kwargs: Any) -> nn.Module:
    """TPIM: intermediate predictions + N^2 Cross-task Interaction Blocks with IFB (eq. 1-8).

    kwargs: ``channels`` (task-feature width C, 16), ``key_channels`` (Q/K width d, C/2),
    ``fuse_channels`` (width of the 1x1 fuse conv, 32; None keeps all backbone channels, as
    MTL-PT), ``fuse_conv`` (True; False concatenates only), ``sc`` (attention downscale, 4),
    ``n_iter`` (IFB iterations, 18 = NYUD; PASCAL 4), ``variant`` ("A" | "B" | "C"),
    ``alpha_init`` (0.3), ``front_blocks`` (2), ``head_blocks`` (1), ``block``, ``aux_tasks``,
    ``aux_channels``.
    """
    check_kwargs("tpim", TPIMNet.__init__, kwargs)
    return TPIMNet(tasks, backbone, pretrained, **kwargs)
