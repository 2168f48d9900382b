"""Stock-PyTorch compositions of the four ops: the implementations ``sdpa`` and ``reference``.

Each function has its op's public signature (``OPS.md``), receives validated arguments of one
dtype (the public op checks and casts them) and is differentiable in every tensor argument.

- :func:`bfe_sdpa` (``bfe_attention``, implementation ``sdpa``): BFCI eq. 1-4 as average
  pooling, one fused K/V projection and ``F.scaled_dot_product_attention``, which never
  materializes the (Nq x Nk) scores when PyTorch picks a flash / memory-efficient backend.
- :func:`tpp_sdpa` (``tpp_attention``, ``sdpa``): BFCI eq. 5-6 with the 1x1 mixing conv folded
  into the queries, one SDPA per propagation map over the concatenated task features.
- :func:`ifb_baddbmm` (``ifb``, ``reference``): TPIM eq. 6-8, one ``torch.baddbmm`` (or one
  ``bmm`` and one fused blend when alpha is a tensor) per iteration.
- :func:`hdc_eager` (``hdc_conv``, ``reference``): BFCI eq. 7 as eager cuDNN / ATen
  convolutions with an in-place ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.ops.reference import bfe_tokens

__all__ = ["bfe_sdpa", "tpp_sdpa", "ifb_baddbmm", "hdc_eager"]


def _fused_kv_bias(k_bias: Tensor | None, v_bias: Tensor | None, like: Tensor) -> Tensor | None:
    """The bias of the fused (2E, C) projection: [k_bias, v_bias] (a missing one is zero)."""
    if k_bias is None and v_bias is None:
        return None
    E = like.shape[0]
    kb = k_bias if k_bias is not None else like.new_zeros(E)
    vb = v_bias if v_bias is not None else like.new_zeros(E)
    return torch.cat([kb, vb])


def bfe_sdpa(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
             k_bias: Tensor | None = None, v_bias: Tensor | None = None, *, pool: int,
             heads: int) -> Tensor:
    """BFCI BFE cross-attention (eq. 1-4) on stock PyTorch ops.

    ``X = cat_t Flat(AvgPool_pool(feats[:, t]))`` (B, Nk, C) (eq. 1); ``[K, V] = X [k_weight;
    v_weight]^T + [k_bias; v_bias]`` as one (B, Nk, 2E) linear (eq. 2); per head
    ``softmax(q_h K_h^T / sqrt(D)) V_h`` through ``F.scaled_dot_product_attention`` (eq. 3-4).

    q: (B, Nq, E); feats: (B, T, C, H, W); k_weight, v_weight: (E, C); k_bias, v_bias: (E,) or
    None. Returns (B, Nq, E).
    """
    B, Nq, E = q.shape
    D = E // heads
    X = bfe_tokens(feats, pool)  # (B, Nk, C)
    Nk = X.shape[1]
    kv = F.linear(X, torch.cat([k_weight, v_weight]), _fused_kv_bias(k_bias, v_bias, k_weight))
    kv = kv.view(B, Nk, 2, heads, D).permute(2, 0, 3, 1, 4)  # (2, B, heads, Nk, D)
    out = F.scaled_dot_product_attention(q.view(B, Nq, heads, D).transpose(1, 2), kv[0], kv[1])
    return out.transpose(1, 2).reshape(B, Nq, E)


def tpp_sdpa(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
             mix_bias: Tensor | None = None) -> Tensor:
    """BFCI TPP attention (eq. 5-6) as SDPA with the mix weights folded into the queries.

    ``Abar_m = sum_j w_mj q_j k_j^T / sqrt(D) = [w_m0 q_0, ..., w_m,T-1 q_{T-1}] [k_0, ...,
    k_{T-1}]^T / sqrt(D)``, so map m is one attention with feature dim T * D and scale
    1 / sqrt(D). M == 1: the T values are concatenated (B, 1, N, T * Dv) and one call propagates
    them all; M == T: map m propagates v_m, one call over the M maps (the shared keys expanded,
    a view). The query/key and value head dims are made equal by zero padding (zero features
    change no score, zero value columns are dropped) because PyTorch's flash kernels need equal
    head dims and would otherwise fall back to the math backend, which keeps the (N x N) maps:
    so the memory is O(N) in the tokens wherever a flash / memory-efficient backend runs.
    ``mix_bias`` shifts whole softmax rows and cancels (its gradient is zero).

    q, k: (B, T, N, D); v: (B, T, N, Dv); mix_weight: (M, T), M in {1, T}. Returns
    (B, T, N, Dv).
    """
    B, T, N, D = q.shape
    Dv = v.shape[-1]
    M = mix_weight.shape[0]
    w = mix_weight.to(q.dtype)
    # q~_m = [w_m0 q_0, ..., w_m,T-1 q_{T-1}]: (B, M, N, T * D); k~ = [k_0, ..., k_{T-1}]
    qt = (w[None, :, :, None, None] * q[:, None]).permute(0, 1, 3, 2, 4).reshape(B, M, N, T * D)
    kt = k.permute(0, 2, 1, 3).reshape(B, 1, N, T * D)
    if M == 1:
        vt = v.permute(0, 2, 1, 3).reshape(B, 1, N, T * Dv)
    else:
        vt = v
    dqk, dv = T * D, vt.shape[-1]
    width = max(dqk, dv)
    if dqk < width:
        qt, kt = F.pad(qt, (0, width - dqk)), F.pad(kt, (0, width - dqk))
    if dv < width:
        vt = F.pad(vt, (0, width - dv))
    out = F.scaled_dot_product_attention(qt, kt.expand(B, M, N, width), vt, scale=D ** -0.5)
    out = out[..., :dv]
    if M == 1:
        return out.reshape(B, N, T, Dv).permute(0, 2, 1, 3)
    return out


def ifb_baddbmm(affinity: Tensor, v: Tensor, alpha: Tensor | float, *, iters: int,
                variant: str = "C") -> Tensor:
    """TPIM Iterative Fusion Block (paper 002, eq. 6-8), one batched GEMM per iteration.

    With a float alpha (or variant "A") each iteration is one ``torch.baddbmm``:
    ``V_{k+1} = beta V_k + a (C V_k)`` with ``(beta, a) = (0, 1)`` (A), ``(1, alpha)`` (B),
    ``(1 - alpha, alpha)`` (C). A tensor alpha stays a tensor (no host synchronisation, and its
    gradient flows): ``C V_k`` by ``bmm``, then ``V_k + alpha (C V_k)`` (B) or
    ``lerp(V_k, C V_k, alpha)`` (C).

    affinity: (B, N, N); v: (B, N, c); alpha: float or 0-dim tensor. Returns V_iters (B, N, c).
    """
    out = v
    if variant == "A":
        for _ in range(iters):
            out = torch.bmm(affinity, out)
        return out
    if not isinstance(alpha, Tensor):
        a = float(alpha)
        beta = 1.0 if variant == "B" else 1.0 - a
        for _ in range(iters):
            out = torch.baddbmm(out, affinity, out, beta=beta, alpha=a)
        return out
    a_t = alpha.to(device=v.device, dtype=v.dtype)
    for _ in range(iters):
        cv = torch.bmm(affinity, out)
        out = out + a_t * cv if variant == "B" else torch.lerp(out, cv, a_t)
    return out


def hdc_eager(x: Tensor, dw_weights: Sequence[Tensor], dw_biases: Sequence[Tensor | None] | None,
              pw_weights: Sequence[Tensor], pw_biases: Sequence[Tensor | None] | None, *,
              dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """BFCI TFR hybrid dilated depthwise-separable stack (eq. 7) on eager cuDNN / ATen.

    Per stage s: a depthwise 3x3 ``conv2d`` (dilation and zero padding d_s, groups C_s), a 1x1
    ``conv2d`` and an in-place ReLU.

    x: (B, C_0, H, W); dw_weights[s]: (C_s, 1, 3, 3); dw_biases[s]: (C_s,) or None;
    pw_weights[s]: (C_{s+1}, C_s); pw_biases[s]: (C_{s+1},) or None. Returns (B, C_S, H, W).
    """
    S = len(dilations)
    dw_b = [None] * S if dw_biases is None else list(dw_biases)
    pw_b = [None] * S if pw_biases is None else list(pw_biases)
    for s, d in enumerate(dilations):
        y = F.conv2d(x, dw_weights[s], dw_b[s], padding=d, dilation=d, groups=x.shape[1])
        x = F.relu(F.conv2d(y, pw_weights[s][:, :, None, None], pw_b[s]), inplace=True)
    return x
