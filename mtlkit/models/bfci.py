"""BFCI: Bridge-Feature-Centric Interaction (paper 000, "Rethinking of Feature Interaction for
Multi-task Learning on Dense Prediction", Sec. 3, eq. 1-7).

Pipeline of :class:`BFCI` for ``image: (B, 3, H, W)`` and T tasks. The decoder runs ``scales``
stages n = 0..scales-1 from the coarsest backbone scale down (3: strides 32, 16, 8 as for ViT /
InternImage; 4: strides 32..4 as for HRNet, the default). Stage n has width
``C_n = channels / 2^n`` (the authors' ``DIM_EMBED``, e.g. [576, 288, 144] for ViT-B; [144, 72,
36, 18] for HRNet-w18). The paper gives no widths; the authors' HRNet config uses the backbone's
own widths, so ``channels`` defaults to the backbone's coarsest width (:func:`default_channels`:
160 for ``tiny``, 144 for HRNet-w18) and ``scales`` to 4; for ViT pass ``scales=3`` (and the
authors' ``channels=576`` for ViT-B).

1. Task-generic features (Sec. 3.1): ``S_n = ConvBNReLU1x1(f_n): (B, C_n, H_n, W_n)`` (the
   backbone pyramid embedded into the decoding widths).
2. Preliminary decoder at the coarsest scale (Sec. 3.1): per task ``P^j = ConvBNReLU3x3_j(S_0)``.
3. Task Pattern Propagation (Sec. 3.3, eq. 5-6), :class:`TaskPatternPropagation`: per task
   tokens ``LN(P^j)`` -> q_j, k_j, v_j; ``A_j = q_j k_j^T / sqrt(D)`` (eq. 5); one shared map
   ``Abar = Conv1x1(cat_j A_j)``; ``x_j = softmax(Abar) v_j`` (eq. 6) through
   :func:`mtlkit.ops.tpp_attention` (heads folded into the batch), then an output projection with
   residual and an FFN with residual. TPP sits in front of the initial prediction heads only:
   the **one intermediate prediction** ``I^j = Conv1x1_j(TPP(P)^j): (B, C_t, H_0, W_0)`` (the
   ``aux`` output, deep supervision at weight ``aux_weight`` = 0.5) is **fed back**:
   ``x_0^j = Conv1x1_j(cat(P^j, I^j))`` (width C_0) are the task features of stage 0. The paper
   applies "TPP before the feature is fed into initial prediction heads" and refines ``P`` (eq. 7);
   the feedback, the pre-TPP ``P`` in it and the 0.5 weight follow the authors' code.
4. Per stage n, top-down (authors' code; the paper does not say how the stages connect):
   a. for n > 0 the task features of stage n-1 are upsampled to ``(H_n, W_n)`` and refined per
      task by two 3x3 ConvBNReLU with dilation 2, ``C_{n-1} -> C_n -> C_n``: ``x_n^j``.
   b. Bridge Feature Extractor (Sec. 3.2, eq. 1-4), :class:`BridgeFeatureExtractor`: queries
      ``LP(LN(Flat(DWConv3x3_stride d(S_n))))`` (d = ``q_stride`` = 2); keys/values from the T task
      maps after a LayerNorm over channels (shared by the tasks, the authors' ``norm1``) and
      average pooling by ``l`` (eq. 1-2); cross-attention (eq. 3-4) through
      :func:`mtlkit.ops.bfe_attention`; ``y = S_n + Up(Linear(x))``; ``S'_n = y + FFN(y)``
      (FFN = LayerNorm -> MLP). Cascade (authors' code): for n > 0,
      ``S'_n += Up(Conv1x1(S'_{n-1}))``.
   c. Task Feature Refiner (Sec. 3.4, eq. 7), :class:`TaskFeatureRefiner`: per task, M layers
      (``tfr`` = base / large / huge = 2 / 4 / 6); each layer is three depthwise-separable
      dilated convs with dilations [1, 2, 5] (HDC), each a residual block (authors' code):
      ``h = GELU(BN(Conv1x1(cat(S'_n, x))))`` (2C -> C/2, the authors' squeeze ratio 2), then
      ``x = x + hdc_conv(h)`` with :func:`mtlkit.ops.hdc_conv` of one dilation d, i.e.
      ``relu(PW(DWConv3x3_d(h)))`` (C/2 -> C). The blocks are per task, as the authors': with 4
      tasks at widths [576, 288, 144] TFR-base/large/huge have 15.85 / 31.69 / 47.54 M
      parameters, the paper's Table 5 increments (+15.9 / +31.7 / +47.6 M; the 24 / 48 / 73 k
      missing here are the authors' BN between the depthwise and pointwise convs, which the
      fused op has no place for).
5. Aggregation and heads at 1/4 (authors' code): per stage a LayerNorm over all tasks' channels
   (T*C_n), a per-task 1x1 conv ``C_n -> C_0`` (n > 0), bilinear upsampling to the backbone's
   stride-4 grid and a sum over the stages; then per task
   :class:`~mtlkit.models.blocks.TaskHead` (3x3 ConvBNReLU + 1x1) at stride 4, bilinearly
   upsampled to ``(H, W)``. The final prediction is made at 1/4 whatever ``scales`` is.

Initialisation (authors' code): the authors draw every conv of the decoder stages from a
truncated N(0, 0.001). Where a BatchNorm follows a conv this only sets the scale the BN removes;
it matters for the convs whose output is not normalised: the last pointwise conv of each TFR
block (so each block, hence the refiner, starts near the identity) and the cascade's 1x1 conv (so
``S'_n`` starts as the BFE output). Both get std 0.001 and zero bias here, as does the squeeze
1x1 of each TFR block. The TFR depthwise conv keeps PyTorch's default init: in the authors' block
a BN follows it, here (inside the fused op) the pointwise conv does, so a 0.001 init would shrink
the pointwise conv's input, and its gradient, a thousandfold.

Where mtlkit still differs from the authors' code. Set by the ops' contracts
(``shared/OPS.md``): TPP uses full-resolution queries and keys (the authors stride-2 both); the
attention scale is ``1/sqrt(head dim)`` (the authors use the full width); the TFR residual branch
ends in the op's ReLU (the authors' ends linear) and has no BN between its depthwise and
pointwise convs. Kept from the paper's text: the preliminary decoder is one 3x3 ConvBNReLU on the
embedded ``S_0`` (the authors: two on the raw backbone map); the BFE queries are normalised by a
LayerNorm after the depthwise conv (the authors: a BN) and the upsampled attention output is
added without the authors' extra depthwise 3x3 conv.

Key/value pools ``kv_pools`` are listed from the coarsest stage to the finest (default [2, 4, 8]
for 3 scales, [2, 4, 8, 16] for 4, the paper's values): this order keeps the number of pooled
tokens per task the same at every scale (e.g. 15x20/2^2 = 30x40/4^2 = 60x80/8^2 = 75 at
480x640). Any input size works: :func:`mtlkit.ops.bfe_attention` needs ``H % pool == W % pool ==
0``, so :meth:`BridgeFeatureExtractor.forward` replicate-pads the task maps at the bottom/right to
the next multiple of the pool (edge values, not zeros, so the border tokens are averages of real
features); a scale smaller than its pool becomes a single token per task. The stride-d depthwise
query conv (kernel 3, padding 1) gives ``ceil(H_n / d) x ceil(W_n / d)`` queries for any size.

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [{task: (B, C_t, H_0, W_0)}]}`` (one
intermediate prediction at the coarsest scale; the model's ``aux_weight`` = 0.5 scales its loss).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import build_backbone
from mtlkit.models.blocks import FFN, ConvBNReLU, TaskHead, upsample_to
from mtlkit.ops import bfe_attention, hdc_conv, tpp_attention
from mtlkit.registry import ARCHS

TFR_SIZES = {"base": 2, "large": 4, "huge": 6}
DEFAULT_POOLS = {3: [2, 4, 8], 4: [2, 4, 8, 16]}
HDC_DILATIONS = (1, 2, 5)
INIT_STD = 0.001  # the authors' init of the decoder-stage convs (module docstring)
DEFAULT_AUX_WEIGHT = 0.5  # the authors' weight of the intermediate predictions


def _tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major."""
    return x.flatten(2).transpose(1, 2)


def _maps(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def channel_norm(norm: nn.LayerNorm, x: Tensor, dim: int) -> Tensor:
    """LayerNorm ``norm`` over dimension ``dim`` of ``x`` (the channels of a map)."""
    return norm(x.movedim(dim, -1)).movedim(-1, dim)


def init_small_(conv: nn.Conv2d, std: float = INIT_STD) -> nn.Conv2d:
    """The authors' conv init: weights from a truncated N(0, std) (cut at +-2), bias 0."""
    nn.init.trunc_normal_(conv.weight, std=std, a=-2.0, b=2.0)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def pad_to_multiple(x: Tensor, pool: int) -> Tensor:
    """Replicate-pad ``x: (N, C, H, W)`` at the bottom/right so that ``pool`` divides H and W."""
    ph = (-x.shape[-2]) % pool
    pw = (-x.shape[-1]) % pool
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class TaskPatternPropagation(nn.Module):
    """TPP (eq. 5-6) on the last-scale task features ``P: (B, T, C, h, w)`` -> same shape.

    Per task j: ``q_j, k_j, v_j = Linear_j(LN_j(Flat(P^j)))`` (N = h*w tokens, C channels);
    :func:`mtlkit.ops.tpp_attention` computes ``A_j = q_j k_j^T / sqrt(D)`` (eq. 5) per head
    (D = C / heads), ``Abar = sum_j m_j A_j`` (the 1x1 conv over the T maps, one shared map,
    initialised to the mean) and ``x_j = softmax(Abar) v_j`` (eq. 6). Then per task
    ``z = P^j + Linear(x_j)`` and ``out = z + FFN(z)`` (the FFN "similar to BFE").
    """

    def __init__(self, tasks: list[str], channels: int, heads: int = 2, ffn_ratio: int = 4) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.heads = heads
        t = len(self.tasks)
        self.qkv = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, 3 * channels))
            for _ in range(t)
        )
        self.mix_weight = nn.Parameter(torch.full((1, t), 1.0 / t))
        self.proj = nn.ModuleList(nn.Linear(channels, channels) for _ in range(t))
        self.ffn = nn.ModuleList(FFN(channels, ffn_ratio * channels) for _ in range(t))

    def forward(self, p: Tensor) -> Tensor:
        B, T, C, h, w = p.shape
        n, hd = h * w, self.heads
        toks = [_tokens(p[:, j]) for j in range(T)]  # T x (B, N, C)
        qkv = torch.stack([self.qkv[j](toks[j]) for j in range(T)], dim=1)  # (B, T, N, 3C)
        # (B, T, N, 3, heads, D) -> 3 x (B*heads, T, N, D): heads folded into the batch.
        qkv = qkv.reshape(B, T, n, 3, hd, C // hd).permute(3, 0, 4, 1, 2, 5)
        q, k, v = (x.reshape(B * hd, T, n, C // hd) for x in qkv)
        x = tpp_attention(q, k, v, self.mix_weight)  # (B*heads, T, N, D)
        x = x.reshape(B, hd, T, n, C // hd).permute(0, 2, 3, 1, 4).reshape(B, T, n, C)
        out = []
        for j in range(T):
            z = toks[j] + self.proj[j](x[:, j])
            z = z + self.ffn[j](z)
            out.append(_maps(z, h, w))
        return torch.stack(out, dim=1)


class BridgeFeatureExtractor(nn.Module):
    """BFE at one scale (eq. 1-4): ``S: (B, C, H, W)``, ``P: (B, T, C, H, W)`` -> ``S'``, like S.

    Queries: ``LP(LN(Flat(DWConv3x3_stride q_stride(S))))``: (B, Nq, C), Nq = ceil(H/d) ceil(W/d)
    (eq. 1-2). Keys/values: ``LP(cat_j Flat(AvgPool_pool(LN(P^j))))`` inside
    :func:`mtlkit.ops.bfe_attention` (eq. 1-4), with ``LN`` one LayerNorm over the channels shared
    by the tasks (the authors' ``norm1`` on the task tokens) and P replicate-padded so ``pool``
    divides H and W. ``y = S + Up(Reshape(Linear(x)))``, ``S' = y + FFN(y)`` (FFN = LayerNorm +
    MLP).
    """

    def __init__(self, channels: int, pool: int, heads: int = 2, q_stride: int = 2,
                 ffn_ratio: int = 4) -> None:
        super().__init__()
        self.pool, self.heads = pool, heads
        self.q_embed = nn.Conv2d(channels, channels, 3, q_stride, padding=1, groups=channels)
        self.q_norm = nn.LayerNorm(channels)
        self.q_proj = nn.Linear(channels, channels)
        self.kv_norm = nn.LayerNorm(channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)
        self.ffn = FFN(channels, ffn_ratio * channels)

    def forward(self, s: Tensor, p: Tensor) -> Tensor:
        B, T, C, H, W = p.shape
        qmap = self.q_embed(s)
        hq, wq = qmap.shape[-2:]
        q = self.q_proj(self.q_norm(_tokens(qmap)))  # (B, Nq, C)
        feats = channel_norm(self.kv_norm, p, 2).reshape(B * T, C, H, W)
        feats = pad_to_multiple(feats, self.pool)
        feats = feats.reshape(B, T, C, *feats.shape[-2:])
        x = bfe_attention(q, feats, self.k_proj.weight, self.v_proj.weight, self.k_proj.bias,
                          self.v_proj.bias, pool=self.pool, heads=self.heads)  # (B, Nq, C)
        y = s + upsample_to(_maps(self.out_proj(x), hq, wq), (H, W))
        t = _tokens(y)
        return _maps(t + self.ffn(t), H, W)


class DilatedBlock(nn.Module):
    """One depthwise-separable dilated conv of a TFR layer, as a residual block (eq. 7).

    ``s: (B, C, H, W)`` bridge features, ``x: (B, C, H, W)`` one task's features ->
    ``x + relu(PW(DWConv3x3_d(GELU(BN(Conv1x1(cat(s, x)))))))``; the squeeze 1x1 takes 2C to
    ``C // squeeze`` channels, the depthwise 3x3 (dilation d, no bias) and the pointwise 1x1 back to
    C run in :func:`mtlkit.ops.hdc_conv` (one dilation). The squeeze and pointwise convs start at
    the authors' std 0.001 (module docstring), so the block starts near the identity.
    """

    def __init__(self, channels: int, dilation: int, squeeze: int = 2) -> None:
        super().__init__()
        hidden = max(channels // squeeze, 1)
        self.dilation = int(dilation)
        self.reduce = init_small_(nn.Conv2d(2 * channels, hidden, 1))
        self.norm = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, groups=hidden, bias=False)
        self.pw = init_small_(nn.Conv2d(hidden, channels, 1))

    def forward(self, s: Tensor, x: Tensor) -> Tensor:
        h = F.gelu(self.norm(self.reduce(torch.cat([s, x], dim=1))))
        y = hdc_conv(h, [self.dw.weight], None, [self.pw.weight.flatten(1)], [self.pw.bias],
                     dilations=(self.dilation,))
        return x + y


class HDCLayer(nn.Module):
    """One TFR layer (eq. 7): three :class:`DilatedBlock` with dilations [1, 2, 5] (HDC).

    ``s, x: (B, C, H, W)`` -> refined ``x``; ``S'`` is concatenated again in every block, as in
    the authors' code.
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = HDC_DILATIONS) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DilatedBlock(channels, d) for d in dilations)

    def forward(self, s: Tensor, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(s, x)
        return x


class TaskFeatureRefiner(nn.Module):
    """TFR at one scale (eq. 7): per task, ``x^(0) = P^j``, ``x^(k) = layer_k^j(S', x^(k-1))``.

    ``s: (B, C, H, W)``, ``p: (B, T, C, H, W)`` -> refined ``(B, T, C, H, W)``. Every task has its
    own M layers (``layers[j]``), as in the authors' code and the paper's parameter counts.
    """

    def __init__(self, channels: int, layers: int, tasks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(HDCLayer(channels) for _ in range(layers)) for _ in range(tasks)
        )

    def forward(self, s: Tensor, p: Tensor) -> Tensor:
        out = []
        for j, layers in enumerate(self.layers):
            x = p[:, j]
            for layer in layers:
                x = layer(s, x)
            out.append(x)
        return torch.stack(out, dim=1)


def default_channels(coarsest: int, heads: int, scales: int) -> int:
    """The default width ``C_0``: the backbone's coarsest width ``coarsest`` (authors' HRNet-w18
    config: decoder widths [144, 72, 36, 18] = the backbone's), rounded down to a multiple of
    ``heads x 2^(scales-1)`` so that every halved stage splits into the heads (at least one
    such multiple). E.g. 160 for ``tiny`` (24, 48, 96, 160), 144 for HRNet-w18."""
    unit = max(int(heads), 1) * 2 ** (scales - 1)
    return max(unit, int(coarsest) // unit * unit)


def _check_kwargs(scales: int, pools: list[int], channels: int, heads: int, q_stride: int,
                  ffn_ratio: int, tfr: str | int, aux_weight: float) -> int:
    """ConfigError for invalid BFCI settings (``scales`` is checked by the caller); returns the
    number of TFR layers."""
    if len(pools) != scales or any(int(p) < 1 for p in pools):
        raise ConfigError(f"bfci kv_pools={pools} must list {scales} positive pools",
                          "order them from the coarsest scale to the finest, e.g. [2, 4, 8]")
    unit = heads * 2 ** (scales - 1)
    if channels < 1 or heads < 1 or channels % unit:
        raise ConfigError(f"bfci channels={channels} must be a positive multiple of "
                          f"heads x 2^(scales-1) = {unit} (the width halves at every stage)",
                          f"e.g. channels={max(unit, 32 // unit * unit)}")
    if q_stride < 1 or ffn_ratio < 1:
        raise ConfigError(f"bfci q_stride={q_stride}, ffn_ratio={ffn_ratio} must be >= 1")
    if (isinstance(aux_weight, bool) or not isinstance(aux_weight, int | float)
            or not math.isfinite(aux_weight) or aux_weight < 0):
        raise ConfigError(f"bfci aux_weight={aux_weight!r} must be a number >= 0",
                          "the authors weight the intermediate predictions 0.5")
    if isinstance(tfr, str):
        if tfr not in TFR_SIZES:
            raise ConfigError(f"bfci tfr={tfr!r} is not valid",
                              f"choose one of {list(TFR_SIZES)} or a number of layers")
        return TFR_SIZES[tfr]
    if isinstance(tfr, bool) or not isinstance(tfr, int) or tfr < 0:
        raise ConfigError(f"bfci tfr={tfr!r} is not valid",
                          f"choose one of {list(TFR_SIZES)} or a number of layers >= 0")
    return tfr


class BFCI(nn.Module):
    """Bridge-Feature-Centric Interaction network (module docstring: steps 1-5, eq. 1-7)."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int | None = None, scales: int = 4, kv_pools: list[int] | None = None,
        heads: int = 2,
        q_stride: int = 2, tfr: str | int = "base", ffn_ratio: int = 2,
        aux_weight: float = DEFAULT_AUX_WEIGHT, backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("bfci needs at least one task", "pass e.g. tasks={'semseg': 40}")
        pools = list(kv_pools) if kv_pools is not None else DEFAULT_POOLS.get(scales, [])
        if scales not in (3, 4):
            raise ConfigError(f"bfci scales={scales} is not valid", "use 3 (ViT) or 4 (HRNet)")
        self.backbone = build_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        bb = self.backbone.channels
        if channels is None:
            channels = default_channels(bb[-1], heads, scales)
        n_tfr = _check_kwargs(scales, pools, channels, heads, q_stride, ffn_ratio, tfr, aux_weight)
        self.tasks = {t: int(c) for t, c in tasks.items()}
        names = list(self.tasks)
        T = len(names)
        widths = [channels // 2**n for n in range(scales)]  # C_n, coarsest stage first
        C0 = widths[0]
        self.widths = widths
        self.default_weighting = "fixed"
        self.aux_weight = float(aux_weight)
        # backbone scales of the stages, coarsest first: e.g. [3, 2, 1]
        self.scale_ids = list(range(3, 3 - scales, -1))
        self.embed = nn.ModuleList(
            ConvBNReLU(bb[i], c, 1) for i, c in zip(self.scale_ids, widths, strict=True)
        )
        # preliminary decoder: per-task 3x3 conv on the shared S_0 == one conv with T*C0 outputs
        self.prelim = ConvBNReLU(C0, T * C0, 3)
        self.tpp = TaskPatternPropagation(names, C0, heads, ffn_ratio)
        self.inter_heads = nn.ModuleDict({t: nn.Conv2d(C0, c, 1) for t, c in self.tasks.items()})
        self.feedback = nn.ModuleDict({t: nn.Conv2d(C0 + c, C0, 1) for t, c in self.tasks.items()})
        # top-down task path (stage n > 0): per task (groups=T) two dilated 3x3 ConvBNReLU
        self.task_up = nn.ModuleList(
            nn.Sequential(ConvBNReLU(T * a, T * b, 3, dilation=2, groups=T),
                          ConvBNReLU(T * b, T * b, 3, dilation=2, groups=T))
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.bfe = nn.ModuleList(
            BridgeFeatureExtractor(c, int(p), heads, q_stride, ffn_ratio)
            for c, p in zip(widths, pools, strict=True)
        )
        self.bridge_up = nn.ModuleList(
            init_small_(nn.Conv2d(a, b, 1)) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.tfr = nn.ModuleList(TaskFeatureRefiner(c, n_tfr, T) for c in widths)
        # aggregation at 1/4: LayerNorm over all tasks' channels, per-task 1x1 to C0, sum
        self.agg_norm = nn.ModuleList(nn.LayerNorm(T * c) for c in widths)
        self.agg_proj = nn.ModuleList(
            [nn.Identity()] + [nn.Conv2d(T * c, T * C0, 1, groups=T) for c in widths[1:]]
        )
        self.heads = nn.ModuleDict({t: TaskHead(C0, c) for t, c in self.tasks.items()})
        self.config = {"channels": channels, "widths": widths, "scales": scales,
                       "kv_pools": pools, "heads": heads, "q_stride": q_stride, "tfr": tfr,
                       "tfr_layers": n_tfr, "ffn_ratio": ffn_ratio,
                       "aux_weight": self.aux_weight}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters (shared by every task; used by gradient-based weightings)."""
        return list(self.backbone.parameters())

    def forward(self, image: Tensor) -> dict[str, Any]:
        names = list(self.tasks)
        T = len(names)
        feats = self.backbone(image)
        out_size = tuple(feats[0].shape[-2:])  # the backbone's stride-4 grid
        s = self.embed[0](feats[self.scale_ids[0]])  # S_0: (B, C0, H_0, W_0)
        B, C0, H, W = s.shape
        p = self.prelim(s).reshape(B, T, C0, H, W)  # P^j
        z = self.tpp(p)
        inter = {t: self.inter_heads[t](z[:, j]) for j, t in enumerate(names)}
        x = torch.stack([self.feedback[t](torch.cat([p[:, j], inter[t]], dim=1))
                         for j, t in enumerate(names)], dim=1)  # x_0: (B, T, C0, H, W)
        bridge: Tensor | None = None
        agg: Tensor | None = None
        for n in range(len(self.scale_ids)):
            if n > 0:
                s = self.embed[n](feats[self.scale_ids[n]])
                H, W = s.shape[-2:]
                xm = upsample_to(x.flatten(1, 2), (H, W))
                x = self.task_up[n - 1](xm).reshape(B, T, -1, H, W)
            new_bridge = self.bfe[n](s, x)  # S'_n
            if bridge is not None:
                new_bridge = new_bridge + upsample_to(self.bridge_up[n - 1](bridge), (H, W))
            bridge = new_bridge
            x = self.tfr[n](bridge, x)  # refined task features (B, T, C_n, H_n, W_n)
            y = channel_norm(self.agg_norm[n], x.flatten(1, 2), 1)
            y = upsample_to(self.agg_proj[n](y), out_size)  # (B, T*C0, H/4, W/4)
            agg = y if agg is None else agg + y
        assert agg is not None
        agg = agg.reshape(B, T, C0, *out_size)
        final = {t: upsample_to(self.heads[t](agg[:, j]), image) for j, t in enumerate(names)}
        return {"final": final, "aux": [inter]}


def check_arch_kwargs(arch: str, cls: type, kwargs: dict[str, Any]) -> None:
    """ConfigError for ``model.kwargs`` keys the arch does not take (typos must not pass)."""
    if "aux_tasks" in kwargs:
        raise ConfigError(f"arch {arch!r} has no auxiliary-only tasks",
                          "list every task in data.tasks (use mtinet/padnet for aux_tasks)")
    known = [n for n, p in inspect.signature(cls.__init__).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(f"arch {arch!r} got unknown keyword argument(s) {unknown}",
                          f"known: {sorted(known)}")


@ARCHS.register("bfci")
def bfci(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
         **kwargs: Any) -> nn.Module:
    """BFCI: TPP + Bridge Feature Extractor + Task Feature Refiner (paper 000, eq. 1-7).

    kwargs: ``channels`` (width C_0 of the coarsest stage, halved per stage; default the
    backbone's coarsest width, :func:`default_channels`), ``scales`` (3 = stages at strides
    32..8 as for ViT, 4 = 32..4 as for HRNet; 4), ``kv_pools`` (key/value pools, coarsest
    stage first; [2, 4, 8] / [2, 4, 8, 16]), ``heads`` (BFE and TPP heads, 2), ``q_stride`` (query
    depthwise-conv stride d, 2), ``tfr`` ("base" | "large" | "huge" = 2 / 4 / 6 TFR layers, or an
    int; "base"), ``ffn_ratio`` (FFN hidden = ratio x width, 2), ``aux_weight`` (loss weight of
    the intermediate prediction, 0.5 as the authors), ``backbone_kwargs`` (passed to the
    backbone builder, e.g. ``{strict_img_size: false}`` for timm Swin at any input size; None).
    """
    check_arch_kwargs("bfci", BFCI, kwargs)
    return BFCI(tasks, backbone, pretrained, **kwargs)
