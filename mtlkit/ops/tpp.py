"""CUDA glue of :func:`mtlkit.ops.tpp_attention` (BFCI TPP, paper 000, eq. 5-6).

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::tpp_attention`` and
``mtlkit::tpp_attention_backward`` and the autograd formula linking them, and defines the
implementations ``cuda`` (:func:`tpp_attention_cuda`, CUDA cores) and ``cuda_tc``
(:func:`tpp_attention_cuda_tc`, tensor cores), which :mod:`mtlkit.ops` runs on validated CUDA
inputs of one dtype.

Op schemas (csrc/register.cpp)::

    tpp_attention(Tensor q, Tensor k, Tensor v, Tensor mix_weight, Tensor? mix_bias,
        str core="simt") -> (Tensor out, Tensor lse)
    tpp_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor mix_weight,
        Tensor out, Tensor lse, str core="simt") -> (grad_q, grad_k, grad_v, grad_mix_weight)

``out``: (B, T, N, Dv); ``lse``: (B, M, N) float32 (not differentiable). ``mix_bias`` is only
shape-checked: it shifts whole softmax rows, so its gradient is zero. ``core``: "simt" or "tc"
(see :mod:`mtlkit.ops._attention`); the forward's core also runs the backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.ops import _attention
from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_HEAD_DIM = 128
"""Largest per-task D and Dv the kernel accepts (csrc/attention_core.h kMaxPartDim)."""


def tpp_attention_cuda_declines(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                                mix_bias: Tensor | None = None) -> str | None:
    """Why the kernels cannot take these (validated) arguments (None when they can)."""
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return f"D = {q.shape[-1]} or Dv = {v.shape[-1]} is above {MAX_HEAD_DIM}"
    if q.shape[0] * mix_weight.shape[0] > 65535:
        return f"B * M = {q.shape[0] * mix_weight.shape[0]} is above 65535"
    return None


def tpp_attention_cuda_tc_declines(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                                   mix_bias: Tensor | None = None) -> str | None:
    """As :func:`tpp_attention_cuda_declines`, plus the tensor-core kernels' dtype and head dims
    (shared memory and alignment are checked by the kernel launcher)."""
    why = tpp_attention_cuda_declines(q, k, v, mix_weight, mix_bias)
    return why or _attention.tc_problem_declines(q.dtype, {"D": q.shape[-1], "Dv": v.shape[-1]})


def tpp_attention_cuda_supported(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                                 mix_bias: Tensor | None = None) -> bool:
    """Whether the CUDA-core kernels take these (validated) arguments."""
    return tpp_attention_cuda_declines(q, k, v, mix_weight, mix_bias) is None


def _run(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor, mix_bias: Tensor | None,
         core: str) -> Tensor:
    args = (q.contiguous(), k.contiguous(), v.contiguous(), mix_weight.contiguous(),
            None if mix_bias is None else mix_bias.contiguous())
    out, _ = _attention.forward(lambda c: torch.ops.mtlkit.tpp_attention(*args, c), core)
    return out


def tpp_attention_cuda(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                       mix_bias: Tensor | None = None) -> Tensor:
    """Implementation ``cuda``: ``torch.ops.mtlkit.tpp_attention`` on CUDA cores."""
    return _run(q, k, v, mix_weight, mix_bias, "simt")


def tpp_attention_cuda_tc(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                          mix_bias: Tensor | None = None) -> Tensor:
    """Implementation ``cuda_tc``: the same op on tensor cores (raises
    :class:`~mtlkit.ops._errors.ImplementationDeclined` for a problem they cannot take)."""
    return _run(q, k, v, mix_weight, mix_bias, "tc")


def _fake_forward(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                  mix_bias: Tensor | None, core: str = "simt") -> tuple[Tensor, Tensor]:
    B, _, N, _ = q.shape
    M = mix_weight.shape[0]
    return torch.empty_like(v), q.new_empty((B, M, N), dtype=torch.float32)


def _fake_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
                   out: Tensor, lse: Tensor,
                   core: str = "simt") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(mix_weight))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, v, mix_weight, mix_bias, core = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, mix_weight, out, lse)
    ctx.core = core
    # Only the shape/dtype/device of mix_bias are needed (its gradient is zero).
    ctx.bias_spec = None if mix_bias is None else (mix_bias.shape, mix_bias.dtype,
                                                    mix_bias.device)


def _backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, k, v, mix_weight, out, lse = ctx.saved_tensors
    g = grad_out.contiguous()

    def call(core: str) -> tuple[Tensor, ...]:
        return torch.ops.mtlkit.tpp_attention_backward(g, q, k, v, mix_weight, out, lse, core)

    gq, gk, gv, gw = _attention.backward(call, ctx.core, "tpp_attention",
                                         _attention.shapes_of(q, v, mix_weight))
    spec = ctx.bias_spec
    gb = None if spec is None else torch.zeros(spec[0], dtype=spec[1], device=spec[2])
    return gq, gk, gv, gw, gb, None


def _check_schema() -> None:
    """Refuse an extension built from older sources (its ops lack the ``core`` argument)."""
    for op in (torch.ops.mtlkit.tpp_attention, torch.ops.mtlkit.tpp_attention_backward):
        if "core" not in [a.name for a in op.default._schema.arguments]:
            raise RuntimeError(f"the compiled extension is older than its sources ({op} has no "
                               "'core' argument); rebuild it: pip install --no-build-isolation "
                               "-e .")


if HAS_CUDA_OPS:
    _check_schema()
    torch.library.register_fake("mtlkit::tpp_attention")(_fake_forward)
    torch.library.register_fake("mtlkit::tpp_attention_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::tpp_attention", _backward,
                                    setup_context=_setup_context)
