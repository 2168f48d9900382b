"""BFCI: Bridge-Feature-Centric Interaction (paper 000, "Rethinking of Feature Interaction for
Multi-task Learning on Dense Prediction", Sec. 3, eq. 1-7).

Pipeline of :class:`BFCI` for ``image: (B, 3, H, W)`` and T tasks, decoder width C, using the
last ``scales`` backbone scales (3: strides 8, 16, 32 as for ViT; 4: strides 4..32 as for HRNet);
scale indices below are backbone indices ``i`` (0 = stride 4, 3 = stride 32):

1. Task-generic features (Sec. 3.1): ``S_i = ConvBNReLU1x1(f_i): (B, C, H_i, W_i)`` (the
   backbone pyramid converted to the decoding width, as the paper does after InvPT).
2. Preliminary decoders with deep supervision (Sec. 3.1): per task j and scale i
   ``P_i^j = ConvBNReLU3x3_{i,j}(S_i): (B, C, H_i, W_i)`` and an initial prediction
   ``1x1 conv(P_i^j)`` (``aux``).
3. Task Pattern Propagation at the last scale (Sec. 3.3, eq. 5-6), :class:`TaskPatternPropagation`:
   per task tokens ``LN(P_3^j)`` -> q_j, k_j, v_j; ``A_j = q_j k_j^T / sqrt(D)`` (eq. 5); one shared
   map ``Abar = Conv1x1(cat_j A_j)``; ``x_j = softmax(Abar) v_j`` (eq. 6) through
   :func:`mtlkit.ops.tpp_attention` (2 heads folded into the batch), then an output projection
   with residual and an FFN with residual. The initial prediction at scale 3 is taken after TPP.
4. Bridge Feature Extractor at every used scale (Sec. 3.2, eq. 1-4), ``BridgeFeatureExtractor``:
   queries from the generic tokens ``Flat(DWConv3x3_stride d(S_i))`` (d = ``q_stride`` = 2) +
   LayerNorm + linear; keys/values from the T task maps average-pooled by ``l`` (eq. 1-2),
   cross-attention (eq. 3-4) through :func:`mtlkit.ops.bfe_attention` (``heads`` = 2); the output
   is projected, reshaped, bilinearly upsampled to ``(H_i, W_i)`` and added to ``S_i`` (the
   residual path that keeps the low-level representation); then ``S'_i = y + FFN(y)`` with
   ``FFN = LayerNorm -> MLP``: bridge features ``S'_i: (B, C, H_i, W_i)``.
5. Task Feature Refiner (Sec. 3.4, eq. 7), :class:`TaskFeatureRefiner`: M layers (``tfr`` = base /
   large / huge = 2 / 4 / 6); ``x^(0) = P_i^j``, ``x^(k) = x^(k-1) + BN(HDC(cat(S'_i, x^(k-1))))``
   with ``HDC`` = :func:`mtlkit.ops.hdc_conv`, depthwise-separable 3x3 convs with dilations
   [1, 2, 5] and widths 2C -> C -> C -> C. The layers are shared by the tasks of a scale (the
   paper's Table 5 parameter counts, +15.9 M per TFR-base with ViT-B, match per-scale layers
   shared across tasks, not per-task ones), so all tasks run as one batch.
6. Multi-scale aggregation and heads (Sec. 3.1): per scale a shared (across tasks) 1x1
   ConvBNReLU ("shared upsampling layers"), bilinear upsampling to the finest used scale,
   concatenation over scales, a per-task 1x1 ConvBNReLU (``scales * C -> C``) and
   :class:`~mtlkit.models.blocks.TaskHead` (3x3 ConvBNReLU + 1x1), bilinear upsampling to
   ``(H, W)``.

Key/value pools ``kv_pools`` are listed from the coarsest used scale to the finest (default
[2, 4, 8] for 3 scales, [2, 4, 8, 16] for 4, the paper's values): this order keeps the number of
pooled tokens per task the same at every scale (e.g. 15x20/2^2 = 30x40/4^2 = 60x80/8^2 = 75 at
480x640). Any input size works: :func:`mtlkit.ops.bfe_attention` needs ``H % pool == W % pool ==
0``, so :meth:`BridgeFeatureExtractor.forward` replicate-pads the task maps at the bottom/right to
the next multiple of the pool (edge values, not zeros, so the border tokens are averages of real
features); a scale smaller than its pool becomes a single token per task. The stride-d depthwise
query conv (kernel 3, padding 1) gives ``ceil(H_i / d) x ceil(W_i / d)`` queries for any size.

Output: ``{"final": {task: (B, C_t, H, W)}, "aux": [{task: (B, C_t, H_i, W_i)} for each used
scale, coarsest first]}`` (the preliminary predictions, deep supervision, ``aux_weight`` = 1).
"""

from __future__ import annotations

import inspect
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


def _tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major."""
    return x.flatten(2).transpose(1, 2)


def _maps(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


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
    (eq. 1-2). Keys/values: ``LP(cat_j Flat(AvgPool_pool(P^j)))`` inside
    :func:`mtlkit.ops.bfe_attention` (eq. 1-4; P replicate-padded so ``pool`` divides H and W).
    ``y = S + Up(Reshape(Linear(x)))``, ``S' = y + FFN(y)`` (FFN = LayerNorm + MLP).
    """

    def __init__(self, channels: int, pool: int, heads: int = 2, q_stride: int = 2,
                 ffn_ratio: int = 4) -> None:
        super().__init__()
        self.pool, self.heads = pool, heads
        self.q_embed = nn.Conv2d(channels, channels, 3, q_stride, padding=1, groups=channels)
        self.q_norm = nn.LayerNorm(channels)
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)
        self.ffn = FFN(channels, ffn_ratio * channels)

    def forward(self, s: Tensor, p: Tensor) -> Tensor:
        B, T, C, H, W = p.shape
        qmap = self.q_embed(s)
        hq, wq = qmap.shape[-2:]
        q = self.q_proj(self.q_norm(_tokens(qmap)))  # (B, Nq, C)
        feats = pad_to_multiple(p.reshape(B * T, C, H, W), self.pool)
        feats = feats.reshape(B, T, C, *feats.shape[-2:])
        x = bfe_attention(q, feats, self.k_proj.weight, self.v_proj.weight, self.k_proj.bias,
                          self.v_proj.bias, pool=self.pool, heads=self.heads)  # (B, Nq, C)
        y = s + upsample_to(_maps(self.out_proj(x), hq, wq), (H, W))
        t = _tokens(y)
        return _maps(t + self.ffn(t), H, W)


class HDCLayer(nn.Module):
    """One TFR layer (eq. 7): ``x + BN(hdc_conv(cat(S', x)))`` with widths 2C -> C -> C -> C.

    ``s: (N, C, H, W)`` bridge features (already expanded over tasks), ``x: (N, C, H, W)``.
    The depthwise 3x3 / pointwise weights are held by ``nn.Conv2d`` modules (their default init)
    and passed to :func:`mtlkit.ops.hdc_conv`; dilations [1, 2, 5] (HDC, Wang et al.).
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 5)) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        widths = [2 * channels] + [channels] * len(self.dilations)
        self.dw = nn.ModuleList(nn.Conv2d(c, c, 3, groups=c) for c in widths[:-1])
        self.pw = nn.ModuleList(
            nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, s: Tensor, x: Tensor) -> Tensor:
        y = hdc_conv(
            torch.cat([s, x], dim=1),
            [m.weight for m in self.dw], [m.bias for m in self.dw],
            [m.weight.flatten(1) for m in self.pw], [m.bias for m in self.pw],
            dilations=self.dilations,
        )
        return x + self.norm(y)


class TaskFeatureRefiner(nn.Module):
    """TFR cascade at one scale (eq. 7): ``x^(0) = P^j``, ``x^(k) = layer_k(cat(S', x^(k-1)))``.

    ``s: (B, C, H, W)``, ``p: (B, T, C, H, W)`` -> refined ``(B, T, C, H, W)``; the M layers are
    shared by the tasks, which run as one batch of B*T maps.
    """

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HDCLayer(channels) for _ in range(layers))

    def forward(self, s: Tensor, p: Tensor) -> Tensor:
        B, T, C, H, W = p.shape
        x = p.reshape(B * T, C, H, W)
        s = s.unsqueeze(1).expand(B, T, C, H, W).reshape(B * T, C, H, W)
        for layer in self.layers:
            x = layer(s, x)
        return x.reshape(B, T, C, H, W)


class BFCI(nn.Module):
    """Bridge-Feature-Centric Interaction network (module docstring: steps 1-6, eq. 1-7)."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None, *,
        channels: int = 32, scales: int = 3, kv_pools: list[int] | None = None, heads: int = 2,
        q_stride: int = 2, tfr: str | int = "base", ffn_ratio: int = 2,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("bfci needs at least one task", "pass e.g. tasks={'semseg': 40}")
        if scales not in (3, 4):
            raise ConfigError(f"bfci scales={scales} is not valid", "use 3 (ViT) or 4 (HRNet)")
        pools = list(kv_pools) if kv_pools is not None else DEFAULT_POOLS[scales]
        if len(pools) != scales or any(int(p) < 1 for p in pools):
            raise ConfigError(f"bfci kv_pools={pools} must list {scales} positive pools",
                              "order them from the coarsest scale to the finest, e.g. [2, 4, 8]")
        if channels < 1 or heads < 1 or channels % heads:
            raise ConfigError(f"bfci channels={channels} must be a positive multiple of "
                              f"heads={heads}", "e.g. channels=32, heads=2")
        if q_stride < 1 or ffn_ratio < 1:
            raise ConfigError(f"bfci q_stride={q_stride}, ffn_ratio={ffn_ratio} must be >= 1")
        if isinstance(tfr, str):
            if tfr not in TFR_SIZES:
                raise ConfigError(f"bfci tfr={tfr!r} is not valid",
                                  f"choose one of {list(TFR_SIZES)} or a number of layers")
            n_tfr = TFR_SIZES[tfr]
        else:
            n_tfr = int(tfr)
            if n_tfr < 0:
                raise ConfigError(f"bfci tfr={tfr} layers must be >= 0")
        self.tasks = {t: int(c) for t, c in tasks.items()}
        names = list(self.tasks)
        T, C = len(names), channels
        self.default_weighting = "fixed"
        self.aux_weight = 1.0
        self.backbone = build_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        # used backbone scales, coarsest first: e.g. [3, 2, 1]
        self.scale_ids = list(range(3, 3 - scales, -1))
        bb = self.backbone.channels
        self.embed = nn.ModuleList(ConvBNReLU(bb[i], C, 1) for i in self.scale_ids)
        # per task 3x3 conv on the shared S_i == one conv with T*C outputs
        self.prelim = nn.ModuleList(ConvBNReLU(C, T * C, 3) for _ in self.scale_ids)
        self.prelim_heads = nn.ModuleList(
            nn.ModuleDict({t: nn.Conv2d(C, c, 1) for t, c in self.tasks.items()})
            for _ in self.scale_ids
        )
        self.tpp = TaskPatternPropagation(names, C, heads, ffn_ratio)
        self.bfe = nn.ModuleList(
            BridgeFeatureExtractor(C, int(p), heads, q_stride, ffn_ratio) for p in pools
        )
        self.tfr = nn.ModuleList(TaskFeatureRefiner(C, n_tfr) for _ in self.scale_ids)
        self.up = nn.ModuleList(ConvBNReLU(C, C, 1) for _ in self.scale_ids)
        self.fuse = nn.ModuleDict({t: ConvBNReLU(scales * C, C, 1) for t in self.tasks})
        self.heads = nn.ModuleDict({t: TaskHead(C, c) for t, c in self.tasks.items()})
        self.config = {"channels": C, "scales": scales, "kv_pools": pools, "heads": heads,
                       "q_stride": q_stride, "tfr": tfr, "tfr_layers": n_tfr,
                       "ffn_ratio": ffn_ratio}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters (shared by every task; used by gradient-based weightings)."""
        return list(self.backbone.parameters())

    def forward(self, image: Tensor) -> dict[str, Any]:
        names = list(self.tasks)
        T = len(names)
        feats = self.backbone(image)
        aux: list[dict[str, Tensor]] = []
        refined: list[Tensor] = []
        for n, i in enumerate(self.scale_ids):
            s = self.embed[n](feats[i])  # task-generic S_i: (B, C, H_i, W_i)
            B, C, H, W = s.shape
            p = self.prelim[n](s).reshape(B, T, C, H, W)  # P_i^j
            if n == 0:
                p = self.tpp(p)  # TPP at the last (coarsest) scale, before the initial heads
            aux.append({t: self.prelim_heads[n][t](p[:, j]) for j, t in enumerate(names)})
            bridge = self.bfe[n](s, p)  # S'_i
            r = self.tfr[n](bridge, p)  # refined task features (B, T, C, H_i, W_i)
            refined.append(self.up[n](r.reshape(B * T, C, H, W)))
        ref = refined[-1]  # finest used scale
        agg = torch.cat([upsample_to(r, ref) for r in refined], dim=1)
        agg = agg.reshape(ref.shape[0] // T, T, -1, *ref.shape[-2:])
        final = {t: upsample_to(self.heads[t](self.fuse[t](agg[:, j])), image)
                 for j, t in enumerate(names)}
        return {"final": final, "aux": aux}


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

    kwargs: ``channels`` (decoder width C, 32), ``scales`` (3 = strides 8..32, 4 = 4..32; 3),
    ``kv_pools`` (key/value pools, coarsest scale first; [2, 4, 8] / [2, 4, 8, 16]), ``heads``
    (BFE and TPP heads, 2), ``q_stride`` (query depthwise-conv stride d, 2), ``tfr`` ("base" |
    "large" | "huge" = 2 / 4 / 6 TFR layers, or an int; "base"), ``ffn_ratio`` (FFN hidden = ratio
    x C, 2), ``backbone_kwargs`` (passed to the backbone builder, e.g. ``{strict_img_size: false}``
    for timm Swin at any input size; None).
    """
    check_arch_kwargs("bfci", BFCI, kwargs)
    return BFCI(tasks, backbone, pretrained, **kwargs)


