"""CUDA glue of :func:`mtlkit.ops.bfe_attention` (BFCI BFE, paper 000, eq. 1-4).

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::bfe_attention`` and
``mtlkit::bfe_attention_backward`` and the autograd formula linking them, and defines the
implementations ``cuda`` (:func:`bfe_attention_cuda`, CUDA cores) and ``cuda_tc``
(:func:`bfe_attention_cuda_tc`, tensor cores), which :mod:`mtlkit.ops` runs on validated CUDA
inputs of one dtype.

Op schemas (csrc/register.cpp)::

    bfe_attention(Tensor q, Tensor feats, Tensor k_weight, Tensor v_weight, Tensor? k_bias,
                  Tensor? v_bias, int pool, int heads, str core="simt") -> (Tensor out, Tensor lse)
    bfe_attention_backward(Tensor grad_out, Tensor q, Tensor feats, Tensor k_weight,
                  Tensor v_weight, Tensor? k_bias, Tensor? v_bias, Tensor out, Tensor lse,
                  int pool, int heads, str core="simt")
        -> (grad_q, grad_feats, grad_k_weight, grad_v_weight, grad_k_bias, grad_v_bias)

``out``: (B, Nq, E) in q's dtype; ``lse``: (B, heads, Nq) float32 row logsumexp of the scaled
scores (not differentiable; saved for the FlashAttention-2 style backward). ``core``: "simt" or
"tc" (see :mod:`mtlkit.ops._attention`); the forward's core also runs the backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.ops import _attention
from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_HEAD_DIM = 128
"""Largest head dim D = E / heads the kernel accepts (csrc/attention_core.h kMaxPartDim)."""


def bfe_attention_cuda_declines(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                                k_bias: Tensor | None = None, v_bias: Tensor | None = None, *,
                                pool: int, heads: int) -> str | None:
    """Why the kernels cannot take these (validated) arguments (None when they can)."""
    D = q.shape[-1] // heads
    if not 1 <= D <= MAX_HEAD_DIM:
        return f"head dim {D} is outside 1..{MAX_HEAD_DIM}"
    if q.shape[0] * heads > 65535:
        return f"B * heads = {q.shape[0] * heads} is above 65535"
    return None


def bfe_attention_cuda_tc_declines(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                                   k_bias: Tensor | None = None, v_bias: Tensor | None = None, *,
                                   pool: int, heads: int) -> str | None:
    """As :func:`bfe_attention_cuda_declines`, plus the tensor-core kernels' dtype and head dim
    (shared memory and alignment are checked by the kernel launcher)."""
    why = bfe_attention_cuda_declines(q, feats, k_weight, v_weight, k_bias, v_bias, pool=pool,
                                      heads=heads)
    return why or _attention.tc_problem_declines(q.dtype, {"the head dim": q.shape[-1] // heads})


def bfe_attention_cuda_supported(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                                 k_bias: Tensor | None = None, v_bias: Tensor | None = None, *,
                                 pool: int, heads: int) -> bool:
    """Whether the CUDA-core kernels take these (validated) arguments."""
    return bfe_attention_cuda_declines(q, feats, k_weight, v_weight, k_bias, v_bias, pool=pool,
                                       heads=heads) is None


def _run(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor, k_bias: Tensor | None,
         v_bias: Tensor | None, pool: int, heads: int, core: str) -> Tensor:
    args = (q.contiguous(), feats.contiguous(), k_weight.contiguous(), v_weight.contiguous(),
            None if k_bias is None else k_bias.contiguous(),
            None if v_bias is None else v_bias.contiguous(), pool, heads)
    out, _ = _attention.forward(lambda c: torch.ops.mtlkit.bfe_attention(*args, c), core)
    return out


def bfe_attention_cuda(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                       k_bias: Tensor | None = None, v_bias: Tensor | None = None, *, pool: int,
                       heads: int) -> Tensor:
    """Implementation ``cuda``: ``torch.ops.mtlkit.bfe_attention`` on CUDA cores; (B, Nq, E)."""
    return _run(q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads, "simt")


def bfe_attention_cuda_tc(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                          k_bias: Tensor | None = None, v_bias: Tensor | None = None, *,
                          pool: int, heads: int) -> Tensor:
    """Implementation ``cuda_tc``: the same op on tensor cores (raises
    :class:`~mtlkit.ops._errors.ImplementationDeclined` for a problem they cannot take)."""
    return _run(q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads, "tc")


def _fake_forward(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
                  k_bias: Tensor | None, v_bias: Tensor | None, pool: int, heads: int,
                  core: str = "simt") -> tuple[Tensor, Tensor]:
    B, Nq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, heads, Nq), dtype=torch.float32)


def _fake_backward(grad_out: Tensor, q: Tensor, feats: Tensor, k_weight: Tensor,
                   v_weight: Tensor, k_bias: Tensor | None, v_bias: Tensor | None, out: Tensor,
                   lse: Tensor, pool: int, heads: int, core: str = "simt") -> tuple[Tensor, ...]:
    E = q.shape[-1]
    return (torch.empty_like(q), torch.empty_like(feats), torch.empty_like(k_weight),
            torch.empty_like(v_weight), q.new_empty((E,)), q.new_empty((E,)))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, feats, k_weight, v_weight, k_bias, v_bias, pool, heads, core = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, feats, k_weight, v_weight, k_bias, v_bias, out, lse)
    ctx.pool = pool
    ctx.heads = heads
    ctx.core = core
    ctx.has_bias = (k_bias is not None, v_bias is not None)


def _backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, feats, k_weight, v_weight, k_bias, v_bias, out, lse = ctx.saved_tensors
    g = grad_out.contiguous()

    def call(core: str) -> tuple[Tensor, ...]:
        return torch.ops.mtlkit.bfe_attention_backward(
            g, q, feats, k_weight, v_weight, k_bias, v_bias, out, lse, ctx.pool, ctx.heads, core)

    gq, gfeats, gkw, gvw, gkb, gvb = _attention.backward(
        call, ctx.core, "bfe_attention", _attention.shapes_of(q, feats, k_weight))
    has_kb, has_vb = ctx.has_bias
    return (gq, gfeats, gkw, gvw, gkb if has_kb else None, gvb if has_vb else None, None, None,
            None)


def _check_schema() -> None:
    """Refuse an extension built from older sources (its ops lack the ``core`` argument)."""
    for op in (torch.ops.mtlkit.bfe_attention, torch.ops.mtlkit.bfe_attention_backward):
        if "core" not in [a.name for a in op.default._schema.arguments]:
            raise RuntimeError(f"the compiled extension is older than its sources ({op} has no "
                               "'core' argument); rebuild it: pip install --no-build-isolation "
                               "-e .")


if HAS_CUDA_OPS:
    _check_schema()
    torch.library.register_fake("mtlkit::bfe_attention")(_fake_forward)
    torch.library.register_fake("mtlkit::bfe_attention_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::bfe_attention", _backward,
                                    setup_context=_setup_context)
