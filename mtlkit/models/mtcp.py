"""MT-CP: Multi-Task Coherence and Prioritization (paper 003, "Optimizing Dense Visual Predictions
Through Multi-Task Coherence and Prioritization", Sec. 3.1-3.4; the LPS weighting of Sec. 3.5,
eq. 3-7, lives in :mod:`mtlkit.weighting` as ``lps`` and is this arch's ``default_weighting``).

Pipeline of :class:`MTCP` for ``image: (B, 3, H, W)``, T tasks, width C, K decoder stages:

1. Shared backbone and pixel decoder (Sec. 3.2). The paper uses a Mask2Former (Swin-S encoder,
   pixel decoder, transformer decoder, masks projected onto the pixel embeddings). mtlkit stands in
   any 4-scale backbone (``tiny`` or ``timm:<name>``) plus an FPN pixel decoder,
   :class:`PixelDecoder`: lateral 1x1 conv-BN to C, top-down bilinear sums, 3x3 conv-BN-ReLU ->
   the shared representation ``R: (B, C, H/4, W/4)``. The mask/query branch is not modelled.
2. Task decoders with K hierarchical stages (Sec. 3.2, "HFP"), :class:`TaskDecoder`: stage k has
   width ``c_k = C 2^(k-1)`` and stride ``8 2^(k-1)`` (a stride-2 3x3 conv-BN-ReLU, the patch
   merging of a hierarchical transformer, then ``depths[k]`` residual depthwise blocks: a
   convolutional stand-in for the paper's lightweight hierarchical transformers); pyramid feature
   fusion (the paper's DFPN): each stage reduced to C by a 1x1 conv, upsampled to stage 1, mixed
   with pixel-wise softmax weights predicted by a 1x1 conv ("adaptive weights"), then a 1x1
   conv-BN-ReLU -> task feature ``X_t: (B, C, H/8, W/8)``. A 1x1 conv on ``X_t`` gives the
   initial prediction (first ``aux`` entry).
3. Coherence Fusion Module per main task t (Sec. 3.3), :class:`CoherenceFusion`: auxiliary
   features gated by sigmoid 1x1 convs, ``X_aux = cat_{s != t}(sigmoid(W_ts X_s) * X_s)``;
   ``X'_t = ReLU(BN(CBAM(Conv1x1(X_t))))``, ``X'_aux = ReLU(BN(CBAM(Conv1x1(X_aux))))`` (the
   "1x1 CBAM"); coherence loss ``1 - cos(X'_t, X'_aux)`` per pixel (over channels), averaged;
   merge by matrix multiplication over the N = h w pixels,
   ``M = softmax(X'_t X'_aux^T / sqrt(N)) X'_aux`` (row softmax keeps the merge bounded)
   (a C x C channel affinity applied to the auxiliary features: "projection onto a common space");
   ``H_t = BN(CBAM(Conv1x1(M + X'_t)))`` (the residual ``+ X'_t`` is our choice, for a
   non-degenerate start).
4. Spatial Refinement Modules tracing back through the decoder (Sec. 3.4),
   :class:`SpatialRefinement`: for k = K..1, ``a = CBAM(Conv1x1(resize(rep, stage k)))``,
   ``b = CBAM(Conv1x1(X_t^k))``, then two parallel pixel-wise conv-BN-ReLU branches on
   ``cat(a, b)``: the next representation and an intermediate prediction (1x1 conv); ``rep``
   starts as ``H_t``. The trace-back ends at the shared representation (Fig. 1: "back to the
   shared backbone"): a last SRM with ``X_t^0 = R`` at 1/4. Predictions of stages K..1 are ``aux``
   (the K intermediate losses of eq. 7); the stage-0 prediction, bilinearly upsampled to (H, W),
   is ``final``.

Training mode adds ``"extra_losses": {"coherence": coherence_weight * mean_t(L_coh,t)}``.
Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [initial (H/8), SRM_K (H/2^(K+2)), ...,
SRM_1 (H/8)], "extra_losses": {...} (training only)}``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import build_backbone
from mtlkit.models.bfci import check_arch_kwargs
from mtlkit.models.blocks import CBAM, ConvBNReLU, upsample_to
from mtlkit.models.tif import resize_to
from mtlkit.registry import ARCHS


class PixelDecoder(nn.Module):
    """FPN stand-in for the Mask2Former pixel decoder: 4 scales -> ``R: (B, C, H/4, W/4)``."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1, relu=False) for c in in_channels)
        self.out = ConvBNReLU(channels, channels, 3)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            x = lat + upsample_to(x, lat)
        return self.out(x)


class DWBlock(nn.Module):
    """Residual depthwise block ``x + PW(GELU(PW(BN(DWConv3x3(x)))))`` (expansion 2)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c),
            nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class TaskDecoder(nn.Module):
    """K hierarchical stages + pyramid feature fusion (step 2 of the module docstring).

    ``r: (B, C, h, w)`` -> ``(X_t: (B, C, h, w), [X_t^1..X_t^K])``,
    ``X_t^k: (B, c_k, h_k, w_k)``.
    """

    def __init__(self, channels: int, widths: list[int], depths: list[int]) -> None:
        super().__init__()
        stages = []
        cin = channels
        for c, d in zip(widths, depths, strict=True):
            stages.append(nn.Sequential(ConvBNReLU(cin, c, 3, stride=2),
                                        *[DWBlock(c) for _ in range(d)]))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.reduce = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in widths)
        self.weights = nn.Conv2d(len(widths) * channels, len(widths), 1)
        self.out = ConvBNReLU(channels, channels, 1)

    def forward(self, r: Tensor) -> tuple[Tensor, list[Tensor]]:
        stages = []
        x = r
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        ref = stages[0]
        pyr = [upsample_to(red(s), ref) for red, s in zip(self.reduce, stages, strict=True)]
        w = torch.softmax(self.weights(torch.cat(pyr, dim=1)), dim=1)  # (B, K, h, w)
        fused = sum(w[:, k : k + 1] * p for k, p in enumerate(pyr))
        return self.out(fused), stages


class ConvCBAM(nn.Sequential):
    """The paper's "1x1 CBAM": 1x1 conv then :class:`~mtlkit.models.blocks.CBAM`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1), CBAM(cout))


class CoherenceFusion(nn.Module):
    """CFM of one main task (Sec. 3.3): ``(x_main, [x_aux...]) -> (H_t, coherence loss)``.

    ``x_main``, each ``x_aux``: (B, C, h, w). Returns ``H_t: (B, C, h, w)`` and a scalar
    ``mean(1 - cos(X'_t, X'_aux))`` (zero when there is no auxiliary task).
    """

    def __init__(self, channels: int, n_aux: int) -> None:
        super().__init__()
        c = channels
        self.n_aux = n_aux
        self.gates = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(n_aux))
        self.main = nn.Sequential(ConvCBAM(c, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.aux = (nn.Sequential(ConvCBAM(n_aux * c, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
                    if n_aux else None)
        self.out = nn.Sequential(ConvCBAM(c, c), nn.BatchNorm2d(c))

    def forward(self, x_main: Tensor, x_aux: list[Tensor]) -> tuple[Tensor, Tensor]:
        m = self.main(x_main)
        if self.aux is None:
            return self.out(m), m.sum() * 0.0
        gated = [torch.sigmoid(g(x)) * x for g, x in zip(self.gates, x_aux, strict=True)]
        a = self.aux(torch.cat(gated, dim=1))
        coherence = (1.0 - F.cosine_similarity(m, a, dim=1, eps=1e-6)).mean()
        B, C, h, w = m.shape
        mf, af = m.flatten(2), a.flatten(2)  # (B, C, N)
        # row-softmax channel affinity: each merged channel is a convex combination of auxiliary
        # channels, so the merge stays bounded (an unnormalised m a^T a grows cubically with the
        # feature scale and blew up on some images in eval mode)
        affinity = torch.softmax(mf @ af.transpose(1, 2) / (h * w) ** 0.5, dim=-1)  # (B, C, C)
        merged = (affinity @ af).reshape(B, C, h, w)
        return self.out(merged + m), coherence


class SpatialRefinement(nn.Module):
    """SRM at stage k (Sec. 3.4): ``(rep: (B, C, *), x_k: (B, c_k, h_k, w_k))`` ->
    ``(next rep: (B, C, h_k, w_k), prediction: (B, out, h_k, w_k))``."""

    def __init__(self, channels: int, stage_channels: int, out_channels: int) -> None:
        super().__init__()
        c = channels
        self.rep_att = ConvCBAM(c, c)
        self.stage_att = ConvCBAM(stage_channels, c)
        self.next = ConvBNReLU(2 * c, c, 1)
        self.pred = nn.Sequential(ConvBNReLU(2 * c, c, 1), nn.Conv2d(c, out_channels, 1))

    def forward(self, rep: Tensor, x_k: Tensor) -> tuple[Tensor, Tensor]:
        rep = resize_to(rep, (x_k.shape[-2], x_k.shape[-1]))
        cat = torch.cat([self.rep_att(rep), self.stage_att(x_k)], dim=1)
        return self.next(cat), self.pred(cat)


class MTCP(nn.Module):
    """MT-CP network (module docstring: steps 1-4); ``default_weighting = "lps"`` (eq. 3-7)."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int = 32, stages: int = 3, depths: list[int] | None = None,
        coherence_weight: float = 1.0, backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("mtcp needs at least one task", "pass e.g. tasks={'semseg': 40}")
        if channels < 1 or stages < 1:
            raise ConfigError(f"mtcp channels={channels}, stages={stages} must be >= 1")
        if depths is None:
            depths = [1, 2, 1] if stages == 3 else [1] * stages
        depths = [int(d) for d in depths]
        if len(depths) != stages or any(int(d) < 0 for d in depths):
            raise ConfigError(f"mtcp depths={depths} must list {stages} non-negative block counts",
                              "e.g. depths=[1, 2, 1] for stages=3")
        if coherence_weight < 0:
            raise ConfigError(f"mtcp coherence_weight={coherence_weight} must be >= 0")
        self.tasks = {t: int(c) for t, c in tasks.items()}
        C = channels
        self.default_weighting = "lps"
        self.aux_weight = 1.0
        self.coherence_weight = float(coherence_weight)
        self.backbone = build_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        self.pixel_decoder = PixelDecoder(list(self.backbone.channels), C)
        widths = [C * 2**k for k in range(stages)]
        self.decoders = nn.ModuleDict({t: TaskDecoder(C, widths, depths) for t in self.tasks})
        self.initial = nn.ModuleDict({t: nn.Conv2d(C, c, 1) for t, c in self.tasks.items()})
        n_aux = len(self.tasks) - 1
        self.cfm = nn.ModuleDict({t: CoherenceFusion(C, n_aux) for t in self.tasks})
        self.srm = nn.ModuleDict({  # index 0: the shared representation R, k: decoder stage k
            t: nn.ModuleList(SpatialRefinement(C, w, c) for w in [C] + widths)
            for t, c in self.tasks.items()
        })
        self.config = {"channels": C, "stages": stages, "depths": depths,
                       "coherence_weight": coherence_weight}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone + pixel decoder parameters (shared by every task)."""
        return list(self.backbone.parameters()) + list(self.pixel_decoder.parameters())

    def forward(self, image: Tensor) -> dict[str, Any]:
        r = self.pixel_decoder(self.backbone(image))
        names = list(self.tasks)
        feats, stages = {}, {}
        for t in names:
            feats[t], stages[t] = self.decoders[t](r)
        initial = {t: self.initial[t](feats[t]) for t in names}
        K = len(stages[names[0]])
        srm_preds: list[dict[str, Tensor]] = [{} for _ in range(K + 1)]
        coherence = []
        final = {}
        for t in names:
            rep, coh = self.cfm[t](feats[t], [feats[s] for s in names if s != t])
            coherence.append(coh)
            levels = [r] + stages[t]  # R, X_t^1..X_t^K
            for k in range(K, -1, -1):  # trace back: deepest stage first, R last
                rep, srm_preds[k][t] = self.srm[t][k](rep, levels[k])
            final[t] = upsample_to(srm_preds[0][t], image)
        out: dict[str, Any] = {"final": final, "aux": [initial] + srm_preds[:0:-1]}
        if self.training:
            coh = torch.stack(coherence).mean()
            out["extra_losses"] = {"coherence": self.coherence_weight * coh}
        return out


@ARCHS.register("mtcp")
def mtcp(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
         **kwargs: Any) -> nn.Module:
    """MT-CP: task decoders + Coherence Fusion + trace-back SRMs (paper 003); LPS by default.

    kwargs: ``channels`` (width C, 32), ``stages`` (K decoder stages, 3), ``depths`` (depthwise
    blocks per stage, [1, 2, 1]), ``coherence_weight`` (weight of the CFM cosine loss, 1.0),
    ``backbone_kwargs`` (passed to the backbone builder, e.g. ``{strict_img_size: false}`` for timm
    Swin at any input size; None).
    """
    check_arch_kwargs("mtcp", MTCP, kwargs)
    return MTCP(tasks, backbone, pretrained, **kwargs)
