"""MT-CP: Multi-Task Coherence and Prioritization (paper 003, "Optimizing Dense Visual Predictions
Through Multi-Task Coherence and Prioritization", Sec. 3.1-3.4; the LPS weighting of Sec. 3.5,
eq. 3-7, lives in :mod:`mtlkit.weighting` as ``lps`` and is this arch's ``default_weighting``).
Where the paper is vague, mtlkit follows the authors' released code (Klodivio355/MT-CP,
``models/models_nyud_CL.py``, ``models/utils.py``, ``traine/train_utils.py``) and says so below.

Pipeline of :class:`MTCP` for ``image: (B, 3, H, W)``, T tasks, width C, K decoder stages:

1. Shared backbone and pixel decoder (Sec. 3.2). The paper uses a Mask2Former (Swin-S encoder,
   pixel decoder, transformer decoder, masks projected onto the pixel embeddings). mtlkit stands in
   any 4-scale backbone (``tiny`` or ``timm:<name>``) plus an FPN pixel decoder,
   :class:`PixelDecoder`: lateral 1x1 conv-BN to C, top-down bilinear sums, 3x3 conv-BN-ReLU ->
   the shared representation ``R: (B, C, H/4, W/4)``. The mask/query branch is not modelled.
2. Task decoders with K hierarchical stages (Sec. 3.2, "HFP"), :class:`TaskDecoder`, laid out as
   the authors' Swin decoder (``forward2`` skips the patch embedding): stage 1 runs on ``R`` at
   1/4 without downsampling; stage k > 1 starts with a stride-2 3x3 conv-BN-ReLU (the patch
   merging). Stage k has width ``c_k = C 2^(k-1)`` and stride ``4 2^(k-1)`` (1/4, 1/8, 1/16 for
   K = 3) and ``depths[k]`` residual depthwise blocks (a convolutional stand-in for the paper's
   lightweight hierarchical transformers). Pyramid feature fusion (the paper's DFPN): each stage
   reduced to C by a 1x1 conv, upsampled to stage 1, mixed with pixel-wise softmax weights
   predicted by a 1x1 conv ("adaptive weights"), then a 1x1 conv-BN-ReLU -> task feature
   ``X_t: (B, C, H/4, W/4)``.
3. Coherence Fusion Module per main task t (Sec. 3.3), :class:`CoherenceFusion`, at 1/4 where
   ``X_t`` is (the authors' scale: their DFPN returns its 1/4 output and the CFM takes it).
   Auxiliary features gated by sigmoid 1x1 convs, ``X_aux = cat_{s != t}(sigmoid(W_ts X_s) * X_s)``;
   ``X'_t = ReLU(BN(CBAM(Conv1x1(X_t))))`` and ``X'_aux = ReLU(BN(CBAM(Conv1x1(X_aux))))`` (the
   "1x1 CBAM"); coherence loss ``1 - cos(X'_t, X'_aux)`` per pixel (over channels), averaged.
   Merge (``cfm_merge``):

   - ``"pixel"`` (default; the authors' code): a second branch of the same form,
     ``X''_aux = ReLU(BN(CBAM(Conv1x1(X_aux))))``, and a row-softmax **pixel** affinity over the
     ``N = h w`` pixels, ``A = softmax_row(X'_aux^T X''_aux): (B, N, N)`` (no temperature, as the
     authors), applied to the **main** features: ``M = X'_t A^T`` (each output pixel is a convex
     combination of main-task pixels, chosen by auxiliary-task similarity);
     ``H_t = BN(CBAM(Conv1x1(M)))`` (no residual, as paper and code). The authors put one shared
     1x1 conv + ReLU before the two auxiliary CBAM branches and keep them at ``(T-1) C``
     channels; mtlkit gives each branch its own "1x1 CBAM" to C channels so the paper's
     coherence loss between ``X'_t`` and ``X'_aux`` is defined.
   - ``"channel"`` (mtlkit's earlier reading): a C x C channel affinity applied to the auxiliary
     features, ``M = softmax_row(X'_t X'_aux^T / sqrt(N)) X'_aux``, and
     ``H_t = BN(CBAM(Conv1x1(M + X'_t)))`` (the residual is mtlkit's choice).

   Memory of the pixel form: the affinity has N^2 entries; at 1/4 of 480x640 (N = 120 x 160 =
   19,200) that is 3.7e8 entries, 1.47 GB in fp32 (0.74 GB in fp16/bf16) per image and task, so
   an explicit implementation keeps 8.8 GB for backward at the paper's batch 2 with 3 tasks
   (PASCAL 512x512: N = 16,384, 1.07 GB per image and task). mtlkit computes ``M`` with
   :func:`torch.nn.functional.scaled_dot_product_attention` (scale 1), whose fused CUDA kernels
   never materialise A (memory O(N C)); :meth:`CoherenceFusion.affinity` returns A explicitly.
   Compute: ``2 N^2 C`` multiply-adds per image and task (1.9e11 at 480x640, C = 256).
4. Spatial Refinement Modules tracing back through the decoder (Sec. 3.4),
   :class:`SpatialRefinement`: for k = K..1, ``a = CBAM(Conv1x1(resize(rep, stage k)))``,
   ``b = CBAM(Conv1x1(X_t^k))``, then two parallel pixel-wise conv-BN-ReLU branches on
   ``cat(a, b)``: the next representation and a prediction (1x1 conv); ``rep`` starts as ``H_t``.
   As in the authors' code the trace-back ends at decoder stage 1 (1/4): the SRMs of stages
   K..2 give the intermediate predictions (``aux``, coarsest first: 1/16, 1/8 for K = 3), the SRM
   of stage 1 gives the final prediction, bilinearly upsampled to (H, W).

Deep supervision (eq. 7): ``L = L_Log-MTL(final) + sum_i sum_j L_i^j``. The authors' layout has
K - 1 intermediate predictions (their K-th SRM output is the final one) and adds each
intermediate loss with weight 1/2 (``traine/train_utils.py``), so ``aux_weight = 0.5``; mtlkit's
trainer folds ``aux_weight`` x the intermediate losses into each task's loss before weighting.

Coherence loss: the paper's objective (Sec. 3.3, "we minimize the cosine distance"), kept with
weight ``coherence_weight`` (1.0; the paper states none). The authors' released NYUD (and
PASCAL) code does not add it: its model returns an empty ``loss_con`` and the training loop
never adds it to the total. Training mode adds
``"extra_losses": {"coherence": coherence_weight * mean_t(L_coh,t)}``.

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [SRM_K (H/2^(K+1)), ..., SRM_2 (H/8)],
"extra_losses": {...} (training only)}``.
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

CFM_MERGES = ("pixel", "channel")


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

    ``r: (B, C, h, w)`` (1/4) -> ``(X_t: (B, C, h, w), [X_t^1..X_t^K])`` with
    ``X_t^k: (B, c_k, ceil(h / 2^(k-1)), ceil(w / 2^(k-1)))``; stage 1 keeps the input grid.
    """

    def __init__(self, channels: int, widths: list[int], depths: list[int]) -> None:
        super().__init__()
        if widths[0] != channels:
            raise ConfigError(f"mtcp decoder stage 1 width {widths[0]} must equal C={channels}")
        stages = []
        cin = channels
        for k, (c, d) in enumerate(zip(widths, depths, strict=True)):
            merge: nn.Module = nn.Identity() if k == 0 else ConvBNReLU(cin, c, 3, stride=2)
            stages.append(nn.Sequential(merge, *[DWBlock(c) for _ in range(d)]))
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


def _branch(cin: int, c: int) -> nn.Sequential:
    """``ReLU(BN(CBAM(Conv1x1(x))))``: the CFM's input branches (Sec. 3.3)."""
    return nn.Sequential(ConvCBAM(cin, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True))


def pixel_affinity(query: Tensor, key: Tensor) -> Tensor:
    """Row-softmax pixel affinity ``softmax_row(Q^T K)``: ``(B, C, h, w)`` x2 -> ``(B, N, N)``.

    Row ``i`` (an output pixel) sums to 1 over the ``N = h w`` key pixels; no temperature (as the
    authors' CFM).
    """
    q, k = query.flatten(2), key.flatten(2)  # (B, C, N)
    return torch.softmax(q.transpose(1, 2) @ k, dim=-1)


def pixel_merge(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``value`` resampled by :func:`pixel_affinity`: ``M[:, :, i] = sum_j A[i, j] value[:, :, j]``.

    query, key: (B, C', h, w); value: (B, C, h, w) -> (B, C, h, w). Computed with the fused
    ``scaled_dot_product_attention`` (scale 1), equal to ``value A^T`` without storing A where a
    fused kernel is available.
    """
    B, C, h, w = value.shape
    q, k = query.flatten(2).transpose(1, 2), key.flatten(2).transpose(1, 2)  # (B, N, C')
    v = value.flatten(2).transpose(1, 2)  # (B, N, C)
    m = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, N, C)
    return m.transpose(1, 2).reshape(B, C, h, w)


class CoherenceFusion(nn.Module):
    """CFM of one main task (Sec. 3.3): ``(x_main, [x_aux...]) -> (H_t, coherence loss)``.

    ``x_main``, each ``x_aux``: (B, C, h, w). Returns ``H_t: (B, C, h, w)`` and a scalar
    ``mean(1 - cos(X'_t, X'_aux))`` (zero when there is no auxiliary task). ``merge``: ``"pixel"``
    (the authors' N x N pixel affinity applied to the main features) or ``"channel"`` (a C x C
    channel affinity applied to the auxiliary features, plus a residual); see the module
    docstring, step 3.
    """

    def __init__(self, channels: int, n_aux: int, merge: str = "pixel") -> None:
        super().__init__()
        if merge not in CFM_MERGES:
            raise ConfigError(f"mtcp cfm_merge={merge!r} is not valid",
                              f"choose one of {list(CFM_MERGES)}")
        c = channels
        self.n_aux = n_aux
        self.merge = merge
        self.gates = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(n_aux))
        self.main = _branch(c, c)
        self.aux = _branch(n_aux * c, c) if n_aux else None
        self.aux_key = _branch(n_aux * c, c) if n_aux and merge == "pixel" else None
        self.out = nn.Sequential(ConvCBAM(c, c), nn.BatchNorm2d(c))

    def branches(self, x_main: Tensor, x_aux: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(X'_t, X'_aux, X''_aux)`` (the last is None in the channel form); needs n_aux > 0."""
        if self.aux is None:
            raise ValueError("CoherenceFusion without auxiliary tasks has no auxiliary branch")
        gated = torch.cat(
            [torch.sigmoid(g(x)) * x for g, x in zip(self.gates, x_aux, strict=True)], dim=1
        )
        key = self.aux_key(gated) if self.aux_key is not None else None
        return self.main(x_main), self.aux(gated), key

    def affinity(self, x_main: Tensor, x_aux: list[Tensor]) -> Tensor:
        """The merge's affinity, explicitly: ``(B, N, N)`` (pixel) or ``(B, C, C)`` (channel)."""
        m, a, k = self.branches(x_main, x_aux)
        if k is not None:
            return pixel_affinity(a, k)
        mf, af = m.flatten(2), a.flatten(2)
        return torch.softmax(mf @ af.transpose(1, 2) / mf.shape[-1] ** 0.5, dim=-1)

    def forward(self, x_main: Tensor, x_aux: list[Tensor]) -> tuple[Tensor, Tensor]:
        if self.aux is None:
            m = self.main(x_main)
            return self.out(m), m.sum() * 0.0
        m, a, k = self.branches(x_main, x_aux)
        coherence = (1.0 - F.cosine_similarity(m, a, dim=1, eps=1e-6)).mean()
        if k is not None:  # pixel form: aux-to-aux pixel affinity applied to the main features
            return self.out(pixel_merge(a, k, m)), coherence
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
        coherence_weight: float = 1.0, aux_weight: float = 0.5, cfm_merge: str = "pixel",
        backbone_kwargs: dict[str, Any] | None = None,
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
        if aux_weight < 0:
            raise ConfigError(f"mtcp aux_weight={aux_weight} must be >= 0",
                              "the authors weight the intermediate losses 0.5")
        if cfm_merge not in CFM_MERGES:
            raise ConfigError(f"mtcp cfm_merge={cfm_merge!r} is not valid",
                              f"choose one of {list(CFM_MERGES)}")
        self.tasks = {t: int(c) for t, c in tasks.items()}
        C = channels
        self.default_weighting = "lps"
        self.aux_weight = float(aux_weight)
        self.coherence_weight = float(coherence_weight)
        self.backbone = build_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        self.pixel_decoder = PixelDecoder(list(self.backbone.channels), C)
        widths = [C * 2**k for k in range(stages)]
        self.decoders = nn.ModuleDict({t: TaskDecoder(C, widths, depths) for t in self.tasks})
        n_aux = len(self.tasks) - 1
        self.cfm = nn.ModuleDict({t: CoherenceFusion(C, n_aux, cfm_merge) for t in self.tasks})
        self.srm = nn.ModuleDict({  # index k - 1: decoder stage k
            t: nn.ModuleList(SpatialRefinement(C, w, c) for w in widths)
            for t, c in self.tasks.items()
        })
        self.config = {"channels": C, "stages": stages, "depths": depths,
                       "coherence_weight": coherence_weight, "aux_weight": aux_weight,
                       "cfm_merge": cfm_merge}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone + pixel decoder parameters (shared by every task)."""
        return list(self.backbone.parameters()) + list(self.pixel_decoder.parameters())

    def forward(self, image: Tensor) -> dict[str, Any]:
        r = self.pixel_decoder(self.backbone(image))
        names = list(self.tasks)
        feats, stages = {}, {}
        for t in names:
            feats[t], stages[t] = self.decoders[t](r)
        K = len(stages[names[0]])
        preds: list[dict[str, Tensor]] = [{} for _ in range(K)]  # index k - 1: SRM of stage k
        coherence = []
        final = {}
        for t in names:
            rep, coh = self.cfm[t](feats[t], [feats[s] for s in names if s != t])
            coherence.append(coh)
            for k in range(K - 1, -1, -1):  # trace back: deepest stage first, stage 1 last
                rep, preds[k][t] = self.srm[t][k](rep, stages[t][k])
            final[t] = upsample_to(preds[0][t], image)
        out: dict[str, Any] = {"final": final, "aux": preds[:0:-1]}  # SRM_K .. SRM_2
        if self.training:
            coh = torch.stack(coherence).mean()
            out["extra_losses"] = {"coherence": self.coherence_weight * coh}
        return out


@ARCHS.register("mtcp")
def mtcp(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
         **kwargs: Any) -> nn.Module:
    """MT-CP: task decoders + Coherence Fusion + trace-back SRMs (paper 003); LPS by default.

    kwargs: ``channels`` (width C, 32), ``stages`` (K decoder stages from 1/4, 3), ``depths``
    (depthwise blocks per stage, [1, 2, 1]), ``coherence_weight`` (weight of the CFM cosine loss,
    1.0), ``aux_weight`` (weight of the K - 1 intermediate SRM losses, 0.5 as the authors' code),
    ``cfm_merge`` ("pixel": the authors' N x N pixel affinity on the main features, default;
    "channel": C x C channel affinity on the auxiliary features), ``backbone_kwargs`` (passed to
    the backbone builder, e.g. ``{strict_img_size: false}`` for timm Swin at any input size; None).
    """
    check_arch_kwargs("mtcp", MTCP, kwargs)
    return MTCP(tasks, backbone, pretrained, **kwargs)
