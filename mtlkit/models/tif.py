"""TIF: Task-Interaction-Free network (paper 001, "Task-Interaction-Free Multi-Task Learning with
Efficient Hierarchical Feature Representation", Sec. 3, eq. 1-14).

Pipeline of :class:`TIF` for ``image: (B, 3, H, W)``, T tasks, width C; ``X^i: (B, C_i, H_i,
W_i)`` are the backbone scales i = 0..3 (strides 4..32, eq. 1):

1. SAFF on every scale (Sec. 3.2), :class:`SAFF`: Scale Alignment (eq. 2)
   ``Y^i = BN(W_i cat_{j != i} P_{H_i x W_i}(X^j))`` and ``XL^i = BN(Conv1x1(X^i))``; SEFF
   (eq. 3-5) ``SFX^i = SFF(XL^i, Y^i) + XL^i`` (SFF = two convs with ReLU),
   ``SP^i = ReLU(GroupConv3x3(SFX^i))`` (groups = channels), ``Xhat^i = Conv1x1(SP^i)``:
   (B, C, H_i, W_i).
2. Per-task decoders: task features ``Xhat_t^i = ConvBNReLU_{t,i}(Xhat^i)`` (3x3 on the low
   scales 2, 3; 1x1 on the high scales 0, 1, where LTHD and the head add the spatial context).
3. SFD on scales 2, 3 (Sec. 3.3), :class:`SFD`: ``K = V = sum_n LN(Flat(Xhat_t^i)) W_n`` (eq. 6,
   n over the N = T projections), ``Q = LN(Flat(Xhat^i)) W_t`` from the *shared* SAFF feature
   (eq. 7), ``A = Q K^T / sqrt(C)`` (eq. 8; the 1/sqrt(C) scale is ours, for a well-conditioned
   softmax), ``RX = softmax(A) V + Xhat_t^i`` (eq. 9), ``RX = FFN(RX) + RX`` (eq. 10). Returns the
   feature ``RX_t^i: (B, C, H_i, W_i)`` and the affinity logits ``A_t^i: (B, N_i, N_i)``.
4. LTHD on scales 0, 1 (Sec. 3.4), :class:`LTHD`: ``A_t^0 = f_up(A_t^3) + A_t^2`` (eq. 11) of
   size N_2 x N_2; ``RX = softmax(A_t^0) (Pool_{H_2 x W_2}(Xhat_t^s) W_t^s)`` (eq. 12, written with
   row-stochastic rows here); ``RX_t^s = FeatureFuse(Up(RX + FFN(RX)), Xhat_t^s)`` with
   FeatureFuse = concat + Conv1x1 + BN + ReLU (eq. 13; the ``RX +`` residual is not in eq. 13,
   see below). Both high scales use the same A_t^0.
5. Final fusion (eq. 14): ``FX_t = FeatureFuse(RX_t^0..3)`` (upsample to scale 0, concat, 1x1
   conv-BN-ReLU, 4C -> C) then the prediction head (:class:`~mtlkit.models.blocks.TaskHead`:
   3x3 conv-BN-ReLU + 1x1 conv), bilinearly upsampled to ``(H, W)``.

Choices where the paper is silent (also tested in ``tests/models/test_tif.py``):

- ``f_up`` (eq. 11), :func:`upsample_affinity`: ``A_t^3`` is read as a 4-D map over (query
  position, key position) on the ``H_3 x W_3`` grid and bilinearly resized on *both* the query and
  the key grid to ``H_2 x W_2``; equivalently ``f_up(A) = U A U^T`` with ``U: (N_2, N_3)`` the
  bilinear (align_corners=False) interpolation matrix. A rank-one affinity ``a b^T`` maps to
  ``(U a)(U b)^T`` and a constant one stays constant.
- ``Pool`` (eq. 12): adaptive average pooling of the high-scale map to the scale-2 grid
  ``H_2 x W_2`` (so the pooled tokens match the rows and columns of ``A_t^0``).
- ``P_{H x W}`` (eq. 2): bilinear interpolation for coarser sources, adaptive average pooling for
  finer ones. ``W_i cat_j(...)`` is computed as ``sum_j P(W_ij X^j)`` (a 1x1 conv commutes with
  resizing, bias included, since interpolation weights sum to one), i.e. each source is reduced to
  C channels at its own resolution first, which is the same map and cheaper.
- SFF = ``Conv1x1(2C -> C) + BN + ReLU + Conv3x3(C -> C) + BN`` on ``cat(XL^i, Y^i)``; a BN follows
  the group conv of eq. 4.
- No deep supervision (the paper trains only the final outputs): ``aux`` is empty.

Departure from the printed equations (flagged, kept): eq. 13 reads
``RX_t^0 = FeatureFuse(FFN(RX_t^0), Xhat_t^0)``, the FFN's output *without* a residual; step 4
and :class:`LTHD` compute ``FeatureFuse(Up(RX + FFN(RX)), Xhat_t^s)``, i.e. with the residual
that eq. 10 writes for the SFD's FFN (``RX = FFN(RX) + RX``). The paper links no code and none
of the authors' was found to settle which one they trained; ``Xhat_t^s`` reaches the fusion
directly either way.

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": []}``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import build_backbone
from mtlkit.models.bfci import check_arch_kwargs
from mtlkit.models.blocks import FFN, ConvBNReLU, TaskHead, upsample_to
from mtlkit.registry import ARCHS


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Scale alignment ``P_{H x W}`` (eq. 2): bilinear up, adaptive average pooling down."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def upsample_affinity(a: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """``f_up`` of eq. 11: ``a: (B, N_s, N_s)`` on the ``src`` grid -> ``(B, N_d, N_d)`` on ``dst``.

    Bilinear (align_corners=False) resizing of the key grid, then of the query grid; equal to
    ``U a U^T`` with ``U`` the (N_d, N_s) interpolation matrix (module docstring).
    """
    B, n, _ = a.shape
    (hs, ws), (hd, wd) = src, dst
    # keys: rows are queries, each row a (hs, ws) map over key positions
    x = F.interpolate(a.reshape(B, n, hs, ws), size=dst, mode="bilinear", align_corners=False)
    x = x.reshape(B, n, hd * wd).transpose(1, 2)  # (B, N_d keys, N_s queries)
    x = F.interpolate(x.reshape(B, hd * wd, hs, ws), size=dst, mode="bilinear",
                      align_corners=False)
    return x.reshape(B, hd * wd, hd * wd).transpose(1, 2)  # (B, N_d queries, N_d keys)


class SAFF(nn.Module):
    """Scale Attentive Feature Fusion for target scale ``i`` (eq. 2-5).

    ``feats``: the 4 backbone maps ``X^j: (B, C_j, H_j, W_j)`` -> ``Xhat^i: (B, C, H_i, W_i)``.
    """

    def __init__(self, in_channels: list[int], target: int, channels: int) -> None:
        super().__init__()
        self.target = target
        c = channels
        self.low = nn.Sequential(nn.Conv2d(in_channels[target], c, 1, bias=False),
                                 nn.BatchNorm2d(c))  # XL^i
        self.sources = [j for j in range(len(in_channels)) if j != target]
        self.align = nn.ModuleList(nn.Conv2d(in_channels[j], c, 1, bias=False)
                                   for j in self.sources)  # W_i split per source
        self.align_bn = nn.BatchNorm2d(c)
        self.sff = nn.Sequential(ConvBNReLU(2 * c, c, 1), ConvBNReLU(c, c, 3, relu=False))
        self.spatial = ConvBNReLU(c, c, 3, groups=c)  # eq. 4 (group-wise 3x3 + ReLU)
        self.mix = nn.Conv2d(c, c, 1)  # eq. 5

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = feats[self.target]
        size = (x.shape[-2], x.shape[-1])
        xl = self.low(x)
        pairs = zip(self.sources, self.align, strict=True)
        y = sum(resize_to(conv(feats[j]), size) for j, conv in pairs)
        y = self.align_bn(y)  # Y^i (eq. 2)
        sfx = self.sff(torch.cat([xl, y], dim=1)) + xl  # eq. 3
        return self.mix(self.spatial(sfx))  # eq. 4-5


class SFD(nn.Module):
    """Self-Feature Distillation of one task at one low scale (eq. 6-10).

    ``x_task: (B, C, h, w)`` task feature, ``x_shared: (B, C, h, w)`` SAFF feature ->
    ``(RX: (B, C, h, w), A: (B, h*w, h*w))`` with ``A`` the pre-softmax affinity of eq. 8.
    """

    def __init__(self, channels: int, n_proj: int, ffn_ratio: int = 2) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(channels)
        self.norm_s = nn.LayerNorm(channels)
        # eq. 6: N learned projections W_n of the task feature, summed
        self.kv = nn.Parameter(torch.empty(n_proj, channels, channels))
        for n in range(n_proj):
            nn.init.kaiming_uniform_(self.kv.data[n], a=math.sqrt(5))
        self.kv.data /= math.sqrt(n_proj)  # keep the sum's scale that of one projection
        self.q = nn.Linear(channels, channels, bias=False)  # W_ta (eq. 7)
        self.ffn = FFN(channels, ffn_ratio * channels)

    def forward(self, x_task: Tensor, x_shared: Tensor) -> tuple[Tensor, Tensor]:
        B, C, h, w = x_task.shape
        tok = x_task.flatten(2).transpose(1, 2)  # (B, N, C)
        kv = self.norm_t(tok) @ self.kv.sum(0).t()  # K = V (eq. 6)
        q = self.q(self.norm_s(x_shared.flatten(2).transpose(1, 2)))  # eq. 7
        a = q @ kv.transpose(1, 2) / math.sqrt(C)  # eq. 8: (B, N, N)
        rx = torch.softmax(a, dim=-1) @ kv + tok  # eq. 9
        rx = rx + self.ffn(rx)  # eq. 10
        return rx.transpose(1, 2).reshape(B, C, h, w), a


class LTHD(nn.Module):
    """Low-To-High scale feature Diffusion of one task at one high scale (eq. 12-13; the residual
    around the FFN is mtlkit's, eq. 13 has none: module docstring).

    ``x: (B, C, H_s, W_s)`` high-scale task feature, ``a0: (B, N_2, N_2)`` the combined affinity
    of eq. 11 on the ``grid = (H_2, W_2)`` -> ``RX_t^s: (B, C, H_s, W_s)``.
    """

    def __init__(self, channels: int, ffn_ratio: int = 2) -> None:
        super().__init__()
        self.value = nn.Linear(channels, channels)  # W_t^s (eq. 12)
        self.ffn = FFN(channels, ffn_ratio * channels)
        self.fuse = ConvBNReLU(2 * channels, channels, 1)  # FeatureFuse (eq. 13)

    def forward(self, x: Tensor, a0: Tensor, grid: tuple[int, int]) -> Tensor:
        B, C = x.shape[:2]
        pooled = F.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2)  # (B, N_2, C)
        rx = torch.softmax(a0, dim=-1) @ self.value(pooled)  # eq. 12
        rx = rx + self.ffn(rx)
        rx = rx.transpose(1, 2).reshape(B, C, *grid)
        return self.fuse(torch.cat([upsample_to(rx, x), x], dim=1))  # eq. 13


class TIF(nn.Module):
    """Task-Interaction-Free network (module docstring: steps 1-5, eq. 1-14)."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int = 32, ffn_ratio: int = 2, backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("tif needs at least one task", "pass e.g. tasks={'semseg': 40}")
        if channels < 1 or ffn_ratio < 1:
            raise ConfigError(f"tif channels={channels}, ffn_ratio={ffn_ratio} must be >= 1")
        self.tasks = {t: int(c) for t, c in tasks.items()}
        T, C = len(self.tasks), channels
        self.default_weighting = "fixed"
        self.aux_weight = 1.0
        self.backbone = build_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        bb = list(self.backbone.channels)
        self.saff = nn.ModuleList(SAFF(bb, i, C) for i in range(4))
        # per-task conv on the shared Xhat^i == one conv with T*C outputs
        self.task_proj = nn.ModuleList(ConvBNReLU(C, T * C, 1 if i < 2 else 3) for i in range(4))
        self.sfd = nn.ModuleDict(
            {t: nn.ModuleList(SFD(C, T, ffn_ratio) for _ in range(2)) for t in self.tasks}
        )  # scales 2, 3
        self.lthd = nn.ModuleDict(
            {t: nn.ModuleList(LTHD(C, ffn_ratio) for _ in range(2)) for t in self.tasks}
        )  # scales 0, 1
        self.fuse = nn.ModuleDict({t: ConvBNReLU(4 * C, C, 1) for t in self.tasks})  # eq. 14
        self.heads = nn.ModuleDict({t: TaskHead(C, c) for t, c in self.tasks.items()})
        self.config = {"channels": C, "ffn_ratio": ffn_ratio}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone + SAFF parameters (the task-sharing encoder, Sec. 3.1)."""
        return list(self.backbone.parameters()) + list(self.saff.parameters())

    def forward(self, image: Tensor) -> dict[str, Any]:
        feats = self.backbone(image)
        shared = [m(feats) for m in self.saff]  # Xhat^0..3
        T = len(self.tasks)
        task_feats = []
        for i, x in enumerate(shared):
            B, C, h, w = x.shape
            task_feats.append(self.task_proj[i](x).reshape(B, T, C, h, w))
        grid2 = tuple(shared[2].shape[-2:])
        grid3 = tuple(shared[3].shape[-2:])
        final = {}
        for j, t in enumerate(self.tasks):
            rx2, a2 = self.sfd[t][0](task_feats[2][:, j], shared[2])
            rx3, a3 = self.sfd[t][1](task_feats[3][:, j], shared[3])
            a0 = upsample_affinity(a3, grid3, grid2) + a2  # eq. 11
            rx0 = self.lthd[t][0](task_feats[0][:, j], a0, grid2)
            rx1 = self.lthd[t][1](task_feats[1][:, j], a0, grid2)
            fx = torch.cat([rx0] + [upsample_to(r, rx0) for r in (rx1, rx2, rx3)], dim=1)
            final[t] = upsample_to(self.heads[t](self.fuse[t](fx)), image)  # eq. 14 + head
        return {"final": final, "aux": []}


@ARCHS.register("tif")
def tif(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
        **kwargs: Any) -> nn.Module:
    """TIF: SAFF encoder fusion + per-task SFD (scales 2, 3) and LTHD (scales 0, 1), eq. 1-14.

    kwargs: ``channels`` (decoder width C, 32), ``ffn_ratio`` (FFN hidden = ratio x C, 2),
    ``backbone_kwargs`` (passed to the backbone builder, e.g. ``{strict_img_size: false}`` for timm
    Swin at any input size; None).
    """
    check_arch_kwargs("tif", TIF, kwargs)
    return TIF(tasks, backbone, pretrained, **kwargs)
