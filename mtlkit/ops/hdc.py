"""CUDA glue of :func:`mtlkit.ops.hdc_conv` (BFCI Task Feature Refiner, paper 000, Sec. 3.4,
eq. 7; hybrid dilated convolution, dilations [1, 2, 5]).

The stack is a Python chain of fused stages. Each stage
``out = relu(pw_weight @ DWConv3x3_d(x) + pw_bias)`` (depthwise 3x3, dilation d, zero padding d,
plus ``dw_bias``; then the 1x1 pointwise conv) is one op whose kernel never writes the depthwise
output to global memory.

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::hdc_stage`` and
``mtlkit::hdc_stage_backward`` and the autograd formula linking them, and defines
:func:`hdc_conv_cuda`, which :mod:`mtlkit.ops` calls for validated CUDA inputs of one dtype.

Op schemas (csrc/hdc_conv.cu)::

    hdc_stage(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, Tensor? pw_bias,
        int dilation) -> Tensor out
    hdc_stage_backward(Tensor grad_out, Tensor x, Tensor out, Tensor dw_weight, Tensor? dw_bias,
        Tensor pw_weight, int dilation)
        -> (grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias)

``x``: (B, C_in, H, W); ``dw_weight``: (C_in, 1, 3, 3); ``dw_bias``: (C_in,) or None;
``pw_weight``: (C_out, C_in); ``pw_bias``: (C_out,) or None; ``out``: (B, C_out, H, W). The
backward recomputes the depthwise output, takes the ReLU mask from the saved ``out`` and always
returns both bias gradients (dropped here when a bias is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_DIM = 65535
"""Largest batch and channel counts the kernel grids accept."""


def hdc_conv_cuda_supported(x: Tensor, dw_weights: Sequence[Tensor],
                            dw_biases: Sequence[Tensor | None] | None,
                            pw_weights: Sequence[Tensor],
                            pw_biases: Sequence[Tensor | None] | None, *,
                            dilations: Sequence[int] = (1, 2, 5)) -> bool:
    """Whether the kernels handle these (validated) arguments; else the reference runs."""
    B, C, H, W = x.shape
    chans = [C] + [w.shape[0] for w in pw_weights]
    # flat tap offsets must fit in int32 (csrc/hdc_conv.cu check_stage)
    offsets_ok = all(H * W + min(d, max(H, W, 1)) * (W + 1) < 2**31 for d in dilations)
    return B <= MAX_DIM and max(chans) <= MAX_DIM and offsets_ok


def hdc_stage_cuda(x: Tensor, dw_weight: Tensor, dw_bias: Tensor | None, pw_weight: Tensor,
                   pw_bias: Tensor | None, dilation: int) -> Tensor:
    """One fused stage ``relu(pw(dw_d(x)))`` through ``torch.ops.mtlkit.hdc_stage``."""
    return torch.ops.mtlkit.hdc_stage(
        x.contiguous(), dw_weight.contiguous(),
        None if dw_bias is None else dw_bias.contiguous(), pw_weight.contiguous(),
        None if pw_bias is None else pw_bias.contiguous(), int(dilation))


def hdc_conv_cuda(x: Tensor, dw_weights: Sequence[Tensor],
                  dw_biases: Sequence[Tensor | None] | None, pw_weights: Sequence[Tensor],
                  pw_biases: Sequence[Tensor | None] | None, *,
                  dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """Chain the fused stages (BFCI eq. 7, one HDC block): returns (B, C_S, H, W)."""
    S = len(dilations)
    dw_b = [None] * S if dw_biases is None else list(dw_biases)
    pw_b = [None] * S if pw_biases is None else list(pw_biases)
    for s, d in enumerate(dilations):
        x = hdc_stage_cuda(x, dw_weights[s], dw_b[s], pw_weights[s], pw_b[s], d)
    return x


def _fake_forward(x: Tensor, dw_weight: Tensor, dw_bias: Tensor | None, pw_weight: Tensor,
                  pw_bias: Tensor | None, dilation: int) -> Tensor:
    B, _, H, W = x.shape
    return x.new_empty((B, pw_weight.shape[0], H, W))


def _fake_backward(grad_out: Tensor, x: Tensor, out: Tensor, dw_weight: Tensor,
                   dw_bias: Tensor | None, pw_weight: Tensor,
                   dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(x), torch.empty_like(dw_weight),
            dw_weight.new_empty((dw_weight.shape[0],)), torch.empty_like(pw_weight),
            pw_weight.new_empty((pw_weight.shape[0],)))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, dw_weight, dw_bias, pw_weight, pw_bias, dilation = inputs
    ctx.save_for_backward(x, output, dw_weight, dw_bias, pw_weight)
    ctx.dilation = dilation
    ctx.has_pw_bias = pw_bias is not None


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    x, out, dw_weight, dw_bias, pw_weight = ctx.saved_tensors
    gx, gdw, gdb, gpw, gpb = torch.ops.mtlkit.hdc_stage_backward(
        grad_out.contiguous(), x, out, dw_weight, dw_bias, pw_weight, ctx.dilation)
    return (gx, gdw, None if dw_bias is None else gdb, gpw,
            gpb if ctx.has_pw_bias else None, None)


if HAS_CUDA_OPS:
    torch.library.register_fake("mtlkit::hdc_stage")(_fake_forward)
    torch.library.register_fake("mtlkit::hdc_stage_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::hdc_stage", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- profiling
def hdc_eager(x: Tensor, dw_weights: Sequence[Tensor], dw_biases: Sequence[Tensor | None] | None,
              pw_weights: Sequence[Tensor], pw_biases: Sequence[Tensor | None] | None, *,
              dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """Stock-PyTorch baseline: per stage an eager depthwise dilated ``conv2d``, a 1x1
    ``conv2d`` and an in-place ReLU (cuDNN; the speed-up baseline of issue 7)."""
    S = len(dilations)
    dw_b = [None] * S if dw_biases is None else list(dw_biases)
    pw_b = [None] * S if pw_biases is None else list(pw_biases)
    for s, d in enumerate(dilations):
        y = F.conv2d(x, dw_weights[s], dw_b[s], padding=d, dilation=d, groups=x.shape[1])
        x = F.relu(F.conv2d(y, pw_weights[s][:, :, None, None], pw_b[s]), inplace=True)
    return x


def make_bench() -> Any:
    """The ``mtlkit profile --kernel hdc_conv`` bench (replaces the built-in one).

    Implementations: the CUDA kernel, the same with the shared-memory band depthwise gradients
    (``MTLKIT_HDC_DW=band``), the reference, eager cuDNN convolutions ("pytorch best") and
    ``torch.compile`` of the reference (CUDA only). Shapes ``b8_c256_*`` are the issue's
    performance targets (B=8, C=256, 60x80 and 120x160, one HDC layer of dilations 1, 2, 5).
    """
    from mtlkit import profiling as P
    from mtlkit.ops import hdc_conv, reference

    base = P._make_hdc_bench()
    shapes = dict(base.shapes)
    shapes["b8_c256_60x80"] = dict(B=8, C=256, H=60, W=80, S=3)
    shapes["b8_c256_120x160"] = dict(B=8, C=256, H=120, W=160, S=3)
    base.shapes = shapes
    base.impls = [
        P.Impl("cuda kernel", P._hdc_call(hdc_conv), P._kernel_unavailable("_hdc_cuda")),
        P.Impl("cuda kernel (band depthwise)", P._hdc_call(hdc_conv),
               P._kernel_unavailable("_hdc_cuda"), env={"MTLKIT_HDC_DW": "band"}),
        P.Impl("pytorch reference", P._hdc_call(reference.hdc_conv)),
        P.Impl("pytorch best", P._hdc_call(hdc_eager)),
        P.compiled_reference_impl(reference.hdc_conv, P._hdc_call),
    ]
    return base
