"""CUDA glue of :func:`mtlkit.ops.tpp_attention` (BFCI TPP, paper 000, eq. 5-6).

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::tpp_attention`` and
``mtlkit::tpp_attention_backward`` and the autograd formula linking them, and defines
:func:`tpp_attention_cuda`, which :mod:`mtlkit.ops` calls for validated CUDA inputs of one dtype.

Op schemas (csrc/register.cpp)::

    tpp_attention(Tensor q, Tensor k, Tensor v, Tensor mix_weight, Tensor? mix_bias)
        -> (Tensor out, Tensor lse)
    tpp_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor mix_weight,
        Tensor out, Tensor lse) -> (grad_q, grad_k, grad_v, grad_mix_weight)

``out``: (B, T, N, Dv); ``lse``: (B, M, N) float32 (not differentiable). ``mix_bias`` is only
shape-checked: it shifts whole softmax rows, so its gradient is zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_HEAD_DIM = 128
"""Largest per-task D and Dv the kernel accepts (csrc/attention_core.h kMaxPartDim)."""


def tpp_attention_cuda_supported(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                                 mix_bias: Tensor | None = None) -> bool:
    """Whether the kernel handles these (validated) arguments; else the reference runs."""
    return (q.shape[-1] <= MAX_HEAD_DIM and v.shape[-1] <= MAX_HEAD_DIM
            and q.shape[0] * mix_weight.shape[0] <= 65535)


def tpp_attention_cuda(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                       mix_bias: Tensor | None = None) -> Tensor:
    """Run ``torch.ops.mtlkit.tpp_attention`` and return ``out`` (B, T, N, Dv)."""
    out, _ = torch.ops.mtlkit.tpp_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), mix_weight.contiguous(),
        None if mix_bias is None else mix_bias.contiguous())
    return out


def _fake_forward(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                  mix_bias: Tensor | None) -> tuple[Tensor, Tensor]:
    B, _, N, _ = q.shape
    M = mix_weight.shape[0]
    return torch.empty_like(v), q.new_empty((B, M, N), dtype=torch.float32)


def _fake_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                   out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(mix_weight))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, v, mix_weight, mix_bias = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, mix_weight, out, lse)
    # Only the shape/dtype/device of mix_bias are needed (its gradient is zero).
    ctx.bias_spec = None if mix_bias is None else (mix_bias.shape, mix_bias.dtype,
                                                    mix_bias.device)


def _backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, k, v, mix_weight, out, lse = ctx.saved_tensors
    gq, gk, gv, gw = torch.ops.mtlkit.tpp_attention_backward(
        grad_out.contiguous(), q, k, v, mix_weight, out, lse)
    spec = ctx.bias_spec
    gb = None if spec is None else torch.zeros(spec[0], dtype=spec[1], device=spec[2])
    return gq, gk, gv, gw, gb


if HAS_CUDA_OPS:
    torch.library.register_fake("mtlkit::tpp_attention")(_fake_forward)
    torch.library.register_fake("mtlkit::tpp_attention_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::tpp_attention", _backward,
                                    setup_context=_setup_context)
