"""Public functional ops of mtlkit (contract: ``OPS.md``); models call only these.

- ``bfe_attention(q, feats, k_weight, v_weight, k_bias=None, v_bias=None, *, pool, heads)``
  BFCI Bridge Feature Extractor cross-attention (paper 000, eq. 1-4).
- ``ifb(affinity, v, alpha, *, iters, variant="C")`` TPIM Iterative Fusion Block (002, eq. 6-8).
- ``tpp_attention(q, k, v, mix_weight, mix_bias=None)`` BFCI Task Pattern Propagation (eq. 5-6).
- ``hdc_conv(x, dw_weights, dw_biases, pw_weights, pw_biases, *, dilations=(1, 2, 5))`` BFCI TFR
  hybrid dilated depthwise-separable stack (eq. 7).

Each op validates its arguments (``ValueError`` naming the argument and the expected shape),
casts its tensors to one dtype (the autocast dtype inside autocast, else the promoted dtype),
then runs one of its named implementations (:mod:`mtlkit.ops.impls`):

- ``bfe_attention``: ``reference``, ``sdpa``, ``cuda``, ``cuda_tc``;
- ``tpp_attention``: ``reference``, ``sdpa``, ``cuda``, ``cuda_tc``;
- ``ifb``: ``reference``, ``cuda``;
- ``hdc_conv``: ``reference``, ``cuda``, ``cuda_band``.

Which one: :func:`use` (context manager) over ``MTLKIT_IMPL="op=name,..."`` over ``auto``, the
default, which measures the usable candidates on the first call of each shape bucket and keeps
the fastest whose result matches ``reference`` (:mod:`mtlkit.ops.tuning`; ``MTLKIT_TUNE=0``: a
static table instead). :func:`implementations` lists the names usable on a device.
``MTLKIT_KERNELS=0`` (read per call) rules out every CUDA kernel of mtlkit.

Pattern for the CUDA glue of an op (``mtlkit/ops/bfe.py``, ``tpp.py``, ``ifb.py``, ``hdc.py``),
which :mod:`mtlkit.ops.impls` imports inside ``try/except``:

1. C++: schemas ``mtlkit::<op>`` and ``mtlkit::<op>_backward`` in ``csrc/`` with
   ``TORCH_LIBRARY`` (register.cpp) or ``TORCH_LIBRARY_FRAGMENT(mtlkit, m)`` (other files), CUDA
   kernels with ``TORCH_LIBRARY_IMPL(mtlkit, CUDA, m)``. Kernel variants are schema arguments
   (``core``, ``depthwise``) that the forward passes on to the backward, never environment
   variables.
2. Python module ``mtlkit/ops/<module>.py``: ``from mtlkit.ops._loader import HAS_CUDA_OPS``;
   under ``if HAS_CUDA_OPS:`` ``torch.library.register_fake`` for every op and
   ``torch.library.register_autograd`` for the forward.
3. One function per implementation with exactly the public signature (``bfe_attention_cuda``,
   ``bfe_attention_cuda_tc``, ...), receiving validated CUDA tensors of one dtype in {float32,
   bfloat16, float16}, and a ``<function>_declines(...) -> str | None`` saying why it cannot
   take particular arguments; :mod:`mtlkit.ops.impls` registers them under their names.

``mtlkit.ops`` imports nothing from :mod:`mtlkit.profiling` (which builds its benchmark rows from
these implementation names).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.ops import dispatch, reference, tuning
from mtlkit.ops._errors import ImplementationDeclined
from mtlkit.ops._loader import CUDA_OPS_ERROR, HAS_CUDA_OPS
from mtlkit.ops.dispatch import use
from mtlkit.ops.impls import GLUE_ERRORS, KERNEL_DTYPES, OPS, implementations
from mtlkit.ops.reference import check_bfe_args, check_hdc_args, check_ifb_args, check_tpp_args

__all__ = [
    "bfe_attention",
    "ifb",
    "tpp_attention",
    "hdc_conv",
    "implementations",
    "use",
    "OPS",
    "HAS_CUDA_OPS",
    "CUDA_OPS_ERROR",
    "GLUE_ERRORS",
    "KERNEL_DTYPES",
    "ImplementationDeclined",
    "kernels_enabled",
    "reference",
    "tuning",
]


def kernels_enabled() -> bool:
    """True when the CUDA extension is loaded and ``MTLKIT_KERNELS`` is not ``"0"``."""
    return HAS_CUDA_OPS and os.environ.get("MTLKIT_KERNELS", "1") != "0"


def _tensors(*xs: Any) -> list[Tensor]:
    out: list[Tensor] = []
    for x in xs:
        if isinstance(x, Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out.extend(t for t in x if isinstance(t, Tensor))
    return out


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dev = tensors[0].device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, Tensor):
        return x if x.dtype == dtype else x.to(dtype)
    if isinstance(x, (list, tuple)):
        return [_cast(t, dtype) for t in x]
    return x


def bfe_attention(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                  k_bias: Tensor | None = None, v_bias: Tensor | None = None, *, pool: int,
                  heads: int) -> Tensor:
    """BFCI BFE downsampled cross-attention (eq. 1-4); see :func:`reference.bfe_attention`.

    q: (B, Nq, E); feats: (B, T, C, H, W); k_weight, v_weight: (E, C); k_bias, v_bias: (E,) or
    None; pool divides H and W; heads divides E. Returns (B, Nq, E).
    """
    check_bfe_args(q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads)
    ts = _tensors(q, feats, k_weight, v_weight, k_bias, v_bias)
    dtype = _common_dtype(ts)
    q, feats, k_weight, v_weight, k_bias, v_bias = (
        _cast(t, dtype) for t in (q, feats, k_weight, v_weight, k_bias, v_bias))
    args = (q, feats, k_weight, v_weight, k_bias, v_bias)
    return dispatch.call("bfe_attention", args, {"pool": pool, "heads": heads})


def tpp_attention(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                  mix_bias: Tensor | None = None) -> Tensor:
    """BFCI TPP attention (eq. 5-6); see :func:`reference.tpp_attention`.

    q, k: (B, T, N, D); v: (B, T, N, Dv); mix_weight: (M, T), M in {1, T}; mix_bias: (M,) or
    None (no effect on the output). Returns (B, T, N, Dv).
    """
    check_tpp_args(q, k, v, mix_weight, mix_bias)
    ts = _tensors(q, k, v, mix_weight, mix_bias)
    dtype = _common_dtype(ts)
    args = tuple(_cast(t, dtype) for t in (q, k, v, mix_weight, mix_bias))
    return dispatch.call("tpp_attention", args, {})


def ifb(affinity: Tensor, v: Tensor, alpha: Tensor | float, *, iters: int,
        variant: str = "C") -> Tensor:
    """TPIM Iterative Fusion Block (paper 002, eq. 6-8); see :func:`reference.ifb`.

    affinity: (B, N, N); v: (B, N, c); alpha: float or 0-dim tensor; iters >= 0;
    variant in {"A", "B", "C"}. Returns (B, N, c).
    """
    check_ifb_args(affinity, v, alpha, iters, variant)
    ts = _tensors(affinity, v)
    dtype = _common_dtype(ts)
    affinity, v = _cast(affinity, dtype), _cast(v, dtype)
    return dispatch.call("ifb", (affinity, v, alpha), {"iters": iters, "variant": variant})


def hdc_conv(x: Tensor, dw_weights: Sequence[Tensor], dw_biases: Sequence[Tensor | None] | None,
             pw_weights: Sequence[Tensor], pw_biases: Sequence[Tensor | None] | None, *,
             dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """BFCI TFR hybrid dilated depthwise-separable conv stack (eq. 7); see
    :func:`reference.hdc_conv`.

    x: (B, C_0, H, W); dw_weights[s]: (C_s, 1, 3, 3); dw_biases[s]: (C_s,) or None;
    pw_weights[s]: (C_{s+1}, C_s); pw_biases[s]: (C_{s+1},) or None. Returns (B, C_S, H, W).
    """
    check_hdc_args(x, dw_weights, dw_biases, pw_weights, pw_biases, dilations)
    ts = _tensors(x, dw_weights, dw_biases, pw_weights, pw_biases)
    dtype = _common_dtype(ts)
    x, dw_weights, pw_weights = _cast(x, dtype), _cast(dw_weights, dtype), _cast(pw_weights, dtype)
    dw_biases, pw_biases = _cast(dw_biases, dtype), _cast(pw_biases, dtype)
    dilations = tuple(dilations)
    args = (x, dw_weights, dw_biases, pw_weights, pw_biases)
    return dispatch.call("hdc_conv", args, {"dilations": dilations})
