"""Pure-PyTorch reference of every mtlkit op: the executable form of ``OPS.md``.

Each function here is written to read like the equations it implements, is differentiable in every
tensor argument through ordinary autograd, and runs on any device and dtype. The CUDA kernels in
``csrc/`` are tested against these functions (and these against naive float64 loops).

- :func:`bfe_attention` - BFCI Bridge Feature Extractor, eq. 1-4 (paper 000, Sec. 3.2): pooled
  task-specific tokens as keys/values, multi-head cross-attention.
- :func:`tpp_attention` - BFCI Task Pattern Propagation, eq. 5-6 (paper 000, Sec. 3.3): T
  attention maps mixed by a 1x1 convolution, softmax, propagated onto each task's values.
- :func:`ifb` - TPIM Iterative Fusion Block, eq. 6-8 (paper 002): iterated affinity products.
- :func:`hdc_conv` - BFCI Task Feature Refiner, eq. 7 (paper 000, Sec. 3.4): hybrid dilated
  depthwise-separable convolution stack.

The ``check_*`` functions validate arguments (shapes, types, values) and raise ``ValueError``
naming the argument and the expected shape; the public ops in :mod:`mtlkit.ops` call them before
dispatching, and so do the references here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bfe_attention",
    "tpp_attention",
    "ifb",
    "hdc_conv",
    "check_bfe_args",
    "check_tpp_args",
    "check_ifb_args",
    "check_hdc_args",
]


# --------------------------------------------------------------------------- argument checks
def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _require_tensor(name: str, x: object, ndim: int, expected: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have shape {expected}, got {_shape(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape {expected}, "
                         f"got dtype {x.dtype}")
    return x


def _require_int(name: str, x: object, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{name} must be an int >= {minimum}, got {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x}")
    return x


def _require_same_device(names: Sequence[str], tensors: Sequence[Tensor | None]) -> None:
    ref_name, ref = None, None
    for name, t in zip(names, tensors, strict=True):
        if t is None:
            continue
        if ref is None:
            ref_name, ref = name, t
        elif t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             "all tensor arguments must be on one device")


def check_bfe_args(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                   k_bias: Tensor | None, v_bias: Tensor | None, pool: int, heads: int) -> None:
    """Validate :func:`bfe_attention` arguments; raise ``ValueError`` naming the bad one."""
    _require_tensor("q", q, 3, "(B, Nq, E)")
    _require_tensor("feats", feats, 5, "(B, T, C, H, W)")
    pool = _require_int("pool", pool, 1)
    heads = _require_int("heads", heads, 1)
    B, Nq, E = q.shape
    Bf, T, C, H, W = feats.shape
    if Bf != B:
        raise ValueError(f"feats must have shape (B, T, C, H, W) with B={B} as q, "
                         f"got {_shape(feats)}")
    if T < 1 or H < 1 or W < 1 or C < 1:
        raise ValueError(f"feats must have shape (B, T, C, H, W) with T, C, H, W >= 1, "
                         f"got {_shape(feats)}")
    if H % pool or W % pool:
        raise ValueError(f"feats must have H and W divisible by pool={pool}, "
                         f"got {_shape(feats)}")
    if E % heads:
        raise ValueError(f"q must have shape (B, Nq, E) with E divisible by heads={heads}, "
                         f"got {_shape(q)}")
    for name, w in (("k_weight", k_weight), ("v_weight", v_weight)):
        _require_tensor(name, w, 2, f"(E, C) = ({E}, {C})")
        if tuple(w.shape) != (E, C):
            raise ValueError(f"{name} must have shape (E, C) = ({E}, {C}), got {_shape(w)}")
    for name, b in (("k_bias", k_bias), ("v_bias", v_bias)):
        if b is not None:
            _require_tensor(name, b, 1, f"(E,) = ({E},) or None")
            if b.shape[0] != E:
                raise ValueError(f"{name} must have shape (E,) = ({E},) or be None, "
                                 f"got {_shape(b)}")
    _require_same_device(["q", "feats", "k_weight", "v_weight", "k_bias", "v_bias"],
                         [q, feats, k_weight, v_weight, k_bias, v_bias])


def check_tpp_args(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                   mix_bias: Tensor | None) -> None:
    """Validate :func:`tpp_attention` arguments; raise ``ValueError`` naming the bad one."""
    _require_tensor("q", q, 4, "(B, T, N, D)")
    B, T, N, D = q.shape
    _require_tensor("k", k, 4, f"(B, T, N, D) = {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have shape (B, T, N, D) = {tuple(q.shape)} like q, "
                         f"got {_shape(k)}")
    _require_tensor("v", v, 4, f"(B, T, N, Dv) = ({B}, {T}, {N}, Dv)")
    if tuple(v.shape[:3]) != (B, T, N):
        raise ValueError(f"v must have shape (B, T, N, Dv) = ({B}, {T}, {N}, Dv), "
                         f"got {_shape(v)}")
    _require_tensor("mix_weight", mix_weight, 2, f"(M, T) = (1 or {T}, {T})")
    M = mix_weight.shape[0]
    if mix_weight.shape[1] != T or M not in (1, T):
        raise ValueError(f"mix_weight must have shape (M, T) = (1 or {T}, {T}), "
                         f"got {_shape(mix_weight)}")
    if mix_bias is not None:
        _require_tensor("mix_bias", mix_bias, 1, f"(M,) = ({M},) or None")
        if mix_bias.shape[0] != M:
            raise ValueError(f"mix_bias must have shape (M,) = ({M},) or be None, "
                             f"got {_shape(mix_bias)}")
    _require_same_device(["q", "k", "v", "mix_weight", "mix_bias"],
                         [q, k, v, mix_weight, mix_bias])


def check_ifb_args(affinity: Tensor, v: Tensor, alpha: Tensor | float, iters: int,
                   variant: str) -> None:
    """Validate :func:`ifb` arguments; raise ``ValueError`` naming the bad one."""
    _require_tensor("affinity", affinity, 3, "(B, N, N)")
    B, N, N2 = affinity.shape
    if N != N2:
        raise ValueError(f"affinity must have shape (B, N, N), got {_shape(affinity)}")
    _require_tensor("v", v, 3, f"(B, N, c) = ({B}, {N}, c)")
    if tuple(v.shape[:2]) != (B, N):
        raise ValueError(f"v must have shape (B, N, c) = ({B}, {N}, c), got {_shape(v)}")
    if isinstance(alpha, Tensor):
        if alpha.dim() != 0 or not alpha.is_floating_point():
            raise ValueError(f"alpha must be a float or a 0-dim floating tensor, "
                             f"got shape {_shape(alpha)} dtype {alpha.dtype}")
        _require_same_device(["affinity", "v", "alpha"], [affinity, v, alpha])
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a float or a 0-dim tensor, got {type(alpha).__name__}")
    _require_int("iters", iters, 0)
    if variant not in ("A", "B", "C"):
        raise ValueError(f"variant must be one of 'A', 'B', 'C', got {variant!r}")
    _require_same_device(["affinity", "v"], [affinity, v])


def _as_list(name: str, xs: Sequence[Tensor | None] | None, n: int) -> list[Tensor | None]:
    if xs is None:
        return [None] * n
    if isinstance(xs, Tensor) or not isinstance(xs, Sequence):
        raise ValueError(f"{name} must be a list of {n} tensors (or None), "
                         f"got {type(xs).__name__}")
    if len(xs) != n:
        raise ValueError(f"{name} must be a list of S={n} entries (one per dilation), "
                         f"got {len(xs)}")
    return list(xs)


def check_hdc_args(x: Tensor, dw_weights: Sequence[Tensor],
                   dw_biases: Sequence[Tensor | None] | None, pw_weights: Sequence[Tensor],
                   pw_biases: Sequence[Tensor | None] | None,
                   dilations: Sequence[int]) -> None:
    """Validate :func:`hdc_conv` arguments; raise ``ValueError`` naming the bad one."""
    _require_tensor("x", x, 4, "(B, C_0, H, W)")
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
        raise ValueError(f"dilations must be a sequence of ints >= 1, got {dilations!r}")
    S = len(dilations)
    if S < 1:
        raise ValueError("dilations must name at least one stage, got ()")
    for d in dilations:
        _require_int("dilations", d, 1)
    dw_w = _as_list("dw_weights", dw_weights, S)
    pw_w = _as_list("pw_weights", pw_weights, S)
    dw_b = _as_list("dw_biases", dw_biases, S)
    pw_b = _as_list("pw_biases", pw_biases, S)
    c = x.shape[1]
    tensors: list[Tensor | None] = [x]
    names = ["x"]
    for s in range(S):
        w = dw_w[s]
        exp = f"(C_{s}, 1, 3, 3) = ({c}, 1, 3, 3)"
        _require_tensor(f"dw_weights[{s}]", w, 4, exp)
        if tuple(w.shape) != (c, 1, 3, 3):
            raise ValueError(f"dw_weights[{s}] must have shape {exp}, got {_shape(w)}")
        b = dw_b[s]
        if b is not None:
            _require_tensor(f"dw_biases[{s}]", b, 1, f"(C_{s},) = ({c},)")
            if b.shape[0] != c:
                raise ValueError(f"dw_biases[{s}] must have shape (C_{s},) = ({c},), "
                                 f"got {_shape(b)}")
        p = pw_w[s]
        _require_tensor(f"pw_weights[{s}]", p, 2, f"(C_{s + 1}, C_{s}) = (C_{s + 1}, {c})")
        if p.shape[1] != c:
            raise ValueError(f"pw_weights[{s}] must have shape (C_{s + 1}, C_{s}) = "
                             f"(C_{s + 1}, {c}), got {_shape(p)}")
        c = p.shape[0]
        pb = pw_b[s]
        if pb is not None:
            _require_tensor(f"pw_biases[{s}]", pb, 1, f"(C_{s + 1},) = ({c},)")
            if pb.shape[0] != c:
                raise ValueError(f"pw_biases[{s}] must have shape (C_{s + 1},) = ({c},), "
                                 f"got {_shape(pb)}")
        tensors += [w, b, p, pb]
        names += [f"dw_weights[{s}]", f"dw_biases[{s}]", f"pw_weights[{s}]", f"pw_biases[{s}]"]
    _require_same_device(names, tensors)


# --------------------------------------------------------------------------- references
def bfe_tokens(feats: Tensor, pool: int) -> Tensor:
    """BFCI eq. 1-2: ``X = cat_t Flat(AvgPool_pool(feats[:, t]))``.

    feats: (B, T, C, H, W) -> X: (B, Nk, C) with Nk = T * (H/pool) * (W/pool), task-major then
    row-major.
    """
    B, T, C, H, W = feats.shape
    pooled = F.avg_pool2d(feats.reshape(B * T, C, H, W), kernel_size=pool, stride=pool)
    h, w = pooled.shape[-2:]
    return pooled.reshape(B, T, C, h * w).transpose(2, 3).reshape(B, T * h * w, C)


def bfe_attention(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                  k_bias: Tensor | None = None, v_bias: Tensor | None = None, *, pool: int,
                  heads: int) -> Tensor:
    """Fused downsampled cross-attention of the BFCI Bridge Feature Extractor (eq. 1-4).

    1. ``P_t = Flat(AvgPool(feats[:, t]))`` (eq. 1), ``X = cat_t P_t``: (B, Nk, C);
    2. ``K = X k_weight^T + k_bias``, ``V = X v_weight^T + v_bias``: (B, Nk, E) (eq. 2);
    3. per head h with D = E / heads: ``O_h = softmax(q_h K_h^T / sqrt(D)) V_h`` (eq. 3-4).

    q: (B, Nq, E); feats: (B, T, C, H, W); k_weight, v_weight: (E, C); k_bias, v_bias: (E,) or
    None. Returns (B, Nq, E).
    """
    check_bfe_args(q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads)
    B, Nq, E = q.shape
    D = E // heads
    X = bfe_tokens(feats, pool)
    K = F.linear(X, k_weight, k_bias)
    V = F.linear(X, v_weight, v_bias)
    Nk = X.shape[1]
    qh = q.reshape(B, Nq, heads, D).transpose(1, 2)  # (B, heads, Nq, D)
    Kh = K.reshape(B, Nk, heads, D).transpose(1, 2)  # (B, heads, Nk, D)
    Vh = V.reshape(B, Nk, heads, D).transpose(1, 2)
    scores = qh @ Kh.transpose(-1, -2) / math.sqrt(D)  # (B, heads, Nq, Nk)
    out = torch.softmax(scores, dim=-1) @ Vh  # (B, heads, Nq, D)
    return out.transpose(1, 2).reshape(B, Nq, E)


def tpp_attention(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                  mix_bias: Tensor | None = None) -> Tensor:
    """Task Pattern Propagation attention of BFCI (eq. 5-6).

    ``A_j = q_j k_j^T / sqrt(D)`` (eq. 5); ``Abar_m = sum_j mix_weight[m, j] A_j + mix_bias[m]``
    (the 1x1 convolution over the T concatenated maps); ``out_j = softmax(Abar_{m(j)}) v_j``
    (eq. 6) with ``m(j) = 0`` when M == 1 and ``m(j) = j`` when M == T.

    q, k: (B, T, N, D); v: (B, T, N, Dv); mix_weight: (M, T); mix_bias: (M,) or None.
    Returns (B, T, N, Dv). ``mix_bias`` shifts whole softmax rows, so it has no effect.
    """
    check_tpp_args(q, k, v, mix_weight, mix_bias)
    D = q.shape[-1]
    A = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, T, N, N)
    Abar = torch.einsum("mt,btij->bmij", mix_weight.to(A.dtype), A)  # (B, M, N, N)
    if mix_bias is not None:
        Abar = Abar + mix_bias.to(A.dtype)[None, :, None, None]
    # (B, M, N, N) @ (B, T, N, Dv): M == 1 broadcasts one shared map over the T tasks.
    return torch.softmax(Abar, dim=-1) @ v


def ifb(affinity: Tensor, v: Tensor, alpha: Tensor | float, *, iters: int,
        variant: str = "C") -> Tensor:
    """Iterative Fusion Block of TPIM (paper 002, eq. 6-8), with ``V_0 = v``, ``C = affinity``.

    - "A" (eq. 6): ``V_{k+1} = C V_k``;
    - "B" (eq. 7): ``V_{k+1} = alpha C V_k + V_k``;
    - "C" (eq. 8): ``V_{k+1} = alpha C V_k + (1 - alpha) V_k``.

    affinity: (B, N, N); v: (B, N, c); alpha: float or 0-dim tensor (unused by "A").
    Returns V_iters: (B, N, c).
    """
    check_ifb_args(affinity, v, alpha, iters, variant)
    out = v
    for _ in range(iters):
        cv = affinity @ out
        if variant == "A":
            out = cv
        elif variant == "B":
            out = alpha * cv + out
        else:
            out = alpha * cv + (1 - alpha) * out
    return out


def hdc_conv(x: Tensor, dw_weights: Sequence[Tensor], dw_biases: Sequence[Tensor | None] | None,
             pw_weights: Sequence[Tensor], pw_biases: Sequence[Tensor | None] | None, *,
             dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """Hybrid dilated depthwise-separable convolution stack of the BFCI TFR (eq. 7; HDC).

    For s = 0..S-1: ``y = DWConv3x3_{d_s}(x) + dw_biases[s]`` (zero padding d_s, same size), then
    ``x = relu(pw_weights[s] y + pw_biases[s])`` (1x1 conv). Returns x.

    x: (B, C_0, H, W); dw_weights[s]: (C_s, 1, 3, 3); dw_biases[s]: (C_s,) or None;
    pw_weights[s]: (C_{s+1}, C_s); pw_biases[s]: (C_{s+1},) or None. ``dw_biases`` and
    ``pw_biases`` may also be None as a whole. Returns (B, C_S, H, W).
    """
    check_hdc_args(x, dw_weights, dw_biases, pw_weights, pw_biases, dilations)
    S = len(dilations)
    dw_b = _as_list("dw_biases", dw_biases, S)
    pw_b = _as_list("pw_biases", pw_biases, S)
    for s, d in enumerate(dilations):
        y = F.conv2d(x, dw_weights[s], dw_b[s], padding=d, dilation=d, groups=x.shape[1])
        x = F.relu(F.conv2d(y, pw_weights[s][:, :, None, None], pw_b[s]))
    return x
