"""CUDA glue of :func:`mtlkit.ops.ifb` (TPIM Iterative Fusion Block, paper 002, eq. 6-8).

With ``V_0 = v`` and ``C = affinity`` the op iterates ``V_{k+1} = a C V_k + b V_k`` with
``(a, b) = (1, 0)`` for variant "A" (eq. 6), ``(alpha, 1)`` for "B" (eq. 7) and
``(alpha, 1 - alpha)`` for "C" (eq. 8), and returns ``V_iters``.

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::ifb`` and
``mtlkit::ifb_backward`` and the autograd formula linking them, and defines :func:`ifb_cuda`,
the implementation ``cuda`` that :mod:`mtlkit.ops` runs on validated CUDA inputs of one dtype.

Op schemas (csrc/ifb.cu)::

    ifb(Tensor affinity, Tensor v, Tensor alpha, int iters, str variant, bool save_states)
        -> (Tensor out, Tensor states)
    ifb_backward(Tensor grad_out, Tensor affinity, Tensor alpha, Tensor states, int iters,
        str variant) -> (grad_affinity, grad_v, grad_alpha)

``affinity``: (B, N, N); ``v``, ``out``: (B, N, c); ``alpha``: 0-dim float32 tensor (read on
the device, so no host synchronisation); ``states``: (B, N, iters, c) holding V_0..V_{iters-1}
when ``save_states`` (what the backward needs), else (B, N, 0, c). ``states`` is not
differentiable. The backward computes ``G_k = a C^T G_{k+1} + b G_{k+1}``,
``grad_affinity = a sum_k G_{k+1} V_k^T`` (one GEMM over the stacked iterations) and
``grad_alpha = <C, sum_k G_{k+1} V_k^T> - [variant C] sum_k <G_{k+1}, V_k>``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_BATCH = 65535
"""Largest batch the kernel grid accepts (gridDim.z)."""

MAX_N = 65535 * 64
"""Largest N the kernel grid accepts (gridDim.y of 64-row tiles)."""


def _alpha_tensor(alpha: Tensor | float, v: Tensor) -> Tensor:
    """alpha as a 0-dim float32 tensor on v's device (differentiable when alpha is a tensor)."""
    if isinstance(alpha, Tensor):
        return alpha.to(device=v.device, dtype=torch.float32)
    return torch.full((), float(alpha), dtype=torch.float32, device=v.device)


def ifb_cuda_declines(affinity: Tensor, v: Tensor, alpha: Tensor | float, *, iters: int,
                      variant: str = "C") -> str | None:
    """Why the kernel cannot take these (validated) arguments (None when it can)."""
    if affinity.shape[0] > MAX_BATCH:
        return f"batch {affinity.shape[0]} is above {MAX_BATCH}"
    if affinity.shape[1] > MAX_N:
        return f"N = {affinity.shape[1]} is above {MAX_N}"
    if iters * v.shape[2] >= 2**31:
        return f"iters * c = {iters * v.shape[2]} does not fit in int32"
    return None


def ifb_cuda_supported(affinity: Tensor, v: Tensor, alpha: Tensor | float, *, iters: int,
                       variant: str = "C") -> bool:
    """Whether the kernel takes these (validated) arguments."""
    return ifb_cuda_declines(affinity, v, alpha, iters=iters, variant=variant) is None


def ifb_cuda(affinity: Tensor, v: Tensor, alpha: Tensor | float, *, iters: int,
             variant: str = "C") -> Tensor:
    """Run ``torch.ops.mtlkit.ifb`` and return ``V_iters`` (B, N, c).

    The iterates are saved for the backward only when a gradient can be needed (grad mode on and
    an input requiring grad); otherwise the kernel ping-pongs between two buffers.
    """
    alpha_t = _alpha_tensor(alpha, v)
    save = torch.is_grad_enabled() and (
        affinity.requires_grad or v.requires_grad or alpha_t.requires_grad)
    out, _ = torch.ops.mtlkit.ifb(affinity.contiguous(), v.contiguous(), alpha_t, iters, variant,
                                  save)
    return out


def _fake_forward(affinity: Tensor, v: Tensor, alpha: Tensor, iters: int, variant: str,
                  save_states: bool) -> tuple[Tensor, Tensor]:
    B, N, c = v.shape
    return torch.empty_like(v), v.new_empty((B, N, iters if save_states else 0, c))


def _fake_backward(grad_out: Tensor, affinity: Tensor, alpha: Tensor, states: Tensor, iters: int,
                   variant: str) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(affinity), torch.empty_like(grad_out), torch.empty_like(alpha)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    affinity, _v, alpha, iters, variant, save_states = inputs
    _out, states = output
    ctx.mark_non_differentiable(states)
    ctx.save_for_backward(affinity, alpha, states)
    ctx.iters = iters
    ctx.variant = variant
    ctx.saved_states = save_states


def _backward(ctx: Any, grad_out: Tensor,
              _grad_states: Tensor | None) -> tuple[Tensor | None, ...]:
    affinity, alpha, states = ctx.saved_tensors
    if ctx.iters > 0 and not ctx.saved_states:
        raise RuntimeError("mtlkit::ifb was called with save_states=False, so it cannot be "
                           "differentiated; call mtlkit.ops.ifb (it saves the iterates when an "
                           "input requires grad)")
    ga, gv, galpha = torch.ops.mtlkit.ifb_backward(grad_out.contiguous(), affinity, alpha,
                                                   states, ctx.iters, ctx.variant)
    return ga, gv, galpha, None, None, None


if HAS_CUDA_OPS:
    torch.library.register_fake("mtlkit::ifb")(_fake_forward)
    torch.library.register_fake("mtlkit::ifb_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::ifb", _backward, setup_context=_setup_context)
