"""CUDA glue of :func:`mtlkit.ops.bfe_attention` (BFCI BFE, paper 000, eq. 1-4).

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::bfe_attention`` and
``mtlkit::bfe_attention_backward`` and the autograd formula linking them, and defines
:func:`bfe_attention_cuda`, which :mod:`mtlkit.ops` calls for validated CUDA inputs of one dtype.

Op schemas (csrc/register.cpp)::

    bfe_attention(Tensor q, Tensor feats, Tensor k_weight, Tensor v_weight, Tensor? k_bias,
                  Tensor? v_bias, int pool, int heads) -> (Tensor out, Tensor lse)
    bfe_attention_backward(Tensor grad_out, Tensor q, Tensor feats, Tensor k_weight,
                  Tensor v_weight, Tensor? k_bias, Tensor? v_bias, Tensor out, Tensor lse,
                  int pool, int heads) -> (grad_q, grad_feats, grad_k_weight, grad_v_weight,
                                           grad_k_bias, grad_v_bias)

``out``: (B, Nq, E) in q's dtype; ``lse``: (B, heads, Nq) float32 row logsumexp of the scaled
scores (not differentiable; saved for the FlashAttention-2 style backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_HEAD_DIM = 128
"""Largest head dim D = E / heads the kernel accepts (csrc/attention_core.h kMaxPartDim)."""


def bfe_attention_cuda_supported(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                                 k_bias: Tensor | None = None, v_bias: Tensor | None = None, *,
                                 pool: int, heads: int) -> bool:
    """Whether the kernel handles these (validated) arguments; else the reference runs."""
    D = q.shape[-1] // heads
    return 1 <= D <= MAX_HEAD_DIM and q.shape[0] * heads <= 65535


def bfe_attention_cuda(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                       k_bias: Tensor | None = None, v_bias: Tensor | None = None, *, pool: int,
                       heads: int) -> Tensor:
    """Run ``torch.ops.mtlkit.bfe_attention`` and return ``out`` (B, Nq, E)."""
    out, _ = torch.ops.mtlkit.bfe_attention(
        q.contiguous(), feats.contiguous(), k_weight.contiguous(), v_weight.contiguous(),
        None if k_bias is None else k_bias.contiguous(),
        None if v_bias is None else v_bias.contiguous(), pool, heads)
    return out


def _fake_forward(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                  k_bias: Tensor | None, v_bias: Tensor | None, pool: int,
                  heads: int) -> tuple[Tensor, Tensor]:
    B, Nq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, heads, Nq), dtype=torch.float32)


def _fake_backward(grad_out: Tensor, q: Tensor, feats: Tensor, k_weight: Tensor,
                   v_weight: Tensor, k_bias: Tensor | None, v_bias: Tensor | None, out: Tensor,
                   lse: Tensor, pool: int, heads: int) -> tuple[Tensor, ...]:
    E = q.shape[-1]
    return (torch.empty_like(q), torch.empty_like(feats), torch.empty_like(k_weight),
            torch.empty_like(v_weight), q.new_empty((E,)), q.new_empty((E,)))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, feats, k_weight, v_weight, k_bias, v_bias, out, lse)
    ctx.pool = pool
    ctx.heads = heads
    ctx.has_bias = (k_bias is not None, v_bias is not None)


def _backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, feats, k_weight, v_weight, k_bias, v_bias, out, lse = ctx.saved_tensors
    gq, gfeats, gkw, gvw, gkb, gvb = torch.ops.mtlkit.bfe_attention_backward(
        grad_out.contiguous(), q, feats, k_weight, v_weight, k_bias, v_bias, out, lse,
        ctx.pool, ctx.heads)
    has_kb, has_vb = ctx.has_bias
    return (gq, gfeats, gkw, gvw, gkb if has_kb else None, gvb if has_vb else None, None, None)


if HAS_CUDA_OPS:
    torch.library.register_fake("mtlkit::bfe_attention")(_fake_forward)
    torch.library.register_fake("mtlkit::bfe_attention_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::bfe_attention", _backward,
                                    setup_context=_setup_context)
