"""CUDA glue of :func:`mtlkit.ops.hdc_conv` (BFCI Task Feature Refiner, paper 000, Sec. 3.4,
eq. 7; hybrid dilated convolution, dilations [1, 2, 5]).

The stack is a Python chain of fused stages. Each stage
``out = relu(pw_weight @ DWConv3x3_d(x) + pw_bias)`` (depthwise 3x3, dilation d, zero padding d,
plus ``dw_bias``; then the 1x1 pointwise conv) is one op whose kernel never writes the depthwise
output to global memory.

Registers, when the extension is loaded, the fake (meta) kernels of ``mtlkit::hdc_stage`` and
``mtlkit::hdc_stage_backward`` and the autograd formula linking them, and defines the
implementations ``cuda`` (:func:`hdc_conv_cuda`) and ``cuda_band`` (:func:`hdc_conv_cuda_band`),
which :mod:`mtlkit.ops` runs on validated CUDA inputs of one dtype.

Op schemas (csrc/hdc_conv.cu)::

    hdc_stage(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, Tensor? pw_bias,
        int dilation, str depthwise="pixel") -> Tensor out
    hdc_stage_backward(Tensor grad_out, Tensor x, Tensor out, Tensor dw_weight, Tensor? dw_bias,
        Tensor pw_weight, int dilation, str depthwise="pixel")
        -> (grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias)

``x``: (B, C_in, H, W); ``dw_weight``: (C_in, 1, 3, 3); ``dw_bias``: (C_in,) or None;
``pw_weight``: (C_out, C_in); ``pw_bias``: (C_out,) or None; ``out``: (B, C_out, H, W). The
backward recomputes the depthwise output, takes the ReLU mask from the saved ``out`` and always
returns both bias gradients (dropped here when a bias is None). ``depthwise`` picks the two
depthwise kernels of the backward: "pixel" (``cuda``) or "band" (``cuda_band``, rows staged in
shared memory); the forward passes it on to the backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.ops._loader import HAS_CUDA_OPS

MAX_DIM = 65535
"""Largest batch and channel counts the kernel grids accept."""


def hdc_conv_cuda_declines(x: Tensor, dw_weights: Sequence[Tensor],
                           dw_biases: Sequence[Tensor | None] | None,
                           pw_weights: Sequence[Tensor],
                           pw_biases: Sequence[Tensor | None] | None, *,
                           dilations: Sequence[int] = (1, 2, 5)) -> str | None:
    """Why the kernels cannot take these (validated) arguments (None when they can)."""
    B, C, H, W = x.shape
    chans = [C] + [w.shape[0] for w in pw_weights]
    if B > MAX_DIM or max(chans) > MAX_DIM:
        return f"batch or channel count above {MAX_DIM}"
    # flat tap offsets must fit in int32 (csrc/hdc_conv.cu check_stage)
    if not all(H * W + min(d, max(H, W, 1)) * (W + 1) < 2**31 for d in dilations):
        return f"H * W = {H} x {W} is too large for int32 tap offsets"
    return None


BAND_STATIC_SMEM = 1024
"""Bytes of static shared memory allowed for the band kernels (they use 320)."""


def band_rows_fit(W: int, d: int, limit: int) -> bool:
    """Whether one staged row band of the grad_x band kernel (two planes of ``R + 2d`` rows of
    ``~W + 2d`` floats, csrc/hdc_depthwise.cuh band_geometry) fits ``limit`` bytes with R >= 1;
    otherwise hdc_conv.cu would run the pixel kernels instead."""
    L = (d + 3) // 4 * 4
    SW = (L + W + d + 3) // 4 * 4
    return limit // (2 * SW * 4) - 2 * d >= 1


def hdc_conv_cuda_band_declines(x: Tensor, dw_weights: Sequence[Tensor],
                                dw_biases: Sequence[Tensor | None] | None,
                                pw_weights: Sequence[Tensor],
                                pw_biases: Sequence[Tensor | None] | None, *,
                                dilations: Sequence[int] = (1, 2, 5)) -> str | None:
    """As :func:`hdc_conv_cuda_declines`, plus the band kernels' shared memory: every stage must
    stage at least one row band (else its backward would run the pixel kernels)."""
    why = hdc_conv_cuda_declines(x, dw_weights, dw_biases, pw_weights, pw_biases,
                                 dilations=dilations)
    if why:
        return why
    _, _, H, W = x.shape
    props = torch.cuda.get_device_properties(x.device)
    limit = int(getattr(props, "shared_memory_per_block_optin", 48 * 1024)) - BAND_STATIC_SMEM
    for d in dilations:
        d_eff = min(d, max(H, W, 1))
        if not band_rows_fit(W, d_eff, limit):
            return (f"a row band of width {W} with dilation {d_eff} does not fit in "
                    f"{limit + BAND_STATIC_SMEM} bytes of shared memory")
    return None


def hdc_conv_cuda_supported(x: Tensor, dw_weights: Sequence[Tensor],
                            dw_biases: Sequence[Tensor | None] | None,
                            pw_weights: Sequence[Tensor],
                            pw_biases: Sequence[Tensor | None] | None, *,
                            dilations: Sequence[int] = (1, 2, 5)) -> bool:
    """Whether the kernels take these (validated) arguments."""
    return hdc_conv_cuda_declines(x, dw_weights, dw_biases, pw_weights, pw_biases,
                                  dilations=dilations) is None


def hdc_stage_cuda(x: Tensor, dw_weight: Tensor, dw_bias: Tensor | None, pw_weight: Tensor,
                   pw_bias: Tensor | None, dilation: int, depthwise: str = "pixel") -> Tensor:
    """One fused stage ``relu(pw(dw_d(x)))`` through ``torch.ops.mtlkit.hdc_stage``."""
    return torch.ops.mtlkit.hdc_stage(
        x.contiguous(), dw_weight.contiguous(),
        None if dw_bias is None else dw_bias.contiguous(), pw_weight.contiguous(),
        None if pw_bias is None else pw_bias.contiguous(), int(dilation), depthwise)


def _chain(x: Tensor, dw_weights: Sequence[Tensor], dw_biases: Sequence[Tensor | None] | None,
           pw_weights: Sequence[Tensor], pw_biases: Sequence[Tensor | None] | None,
           dilations: Sequence[int], depthwise: str) -> Tensor:
    S = len(dilations)
    dw_b = [None] * S if dw_biases is None else list(dw_biases)
    pw_b = [None] * S if pw_biases is None else list(pw_biases)
    for s, d in enumerate(dilations):
        x = hdc_stage_cuda(x, dw_weights[s], dw_b[s], pw_weights[s], pw_b[s], d, depthwise)
    return x


def hdc_conv_cuda(x: Tensor, dw_weights: Sequence[Tensor],
                  dw_biases: Sequence[Tensor | None] | None, pw_weights: Sequence[Tensor],
                  pw_biases: Sequence[Tensor | None] | None, *,
                  dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """Implementation ``cuda``: the fused stages chained (BFCI eq. 7, one HDC block), the
    backward's depthwise gradients one pixel per thread. Returns (B, C_S, H, W)."""
    return _chain(x, dw_weights, dw_biases, pw_weights, pw_biases, dilations, "pixel")


def hdc_conv_cuda_band(x: Tensor, dw_weights: Sequence[Tensor],
                       dw_biases: Sequence[Tensor | None] | None, pw_weights: Sequence[Tensor],
                       pw_biases: Sequence[Tensor | None] | None, *,
                       dilations: Sequence[int] = (1, 2, 5)) -> Tensor:
    """Implementation ``cuda_band``: as :func:`hdc_conv_cuda`, the backward's depthwise
    gradients from row bands staged in shared memory."""
    return _chain(x, dw_weights, dw_biases, pw_weights, pw_biases, dilations, "band")


def _fake_forward(x: Tensor, dw_weight: Tensor, dw_bias: Tensor | None, pw_weight: Tensor,
                  pw_bias: Tensor | None, dilation: int, depthwise: str = "pixel") -> Tensor:
    B, _, H, W = x.shape
    return x.new_empty((B, pw_weight.shape[0], H, W))


def _fake_backward(grad_out: Tensor, x: Tensor, out: Tensor, dw_weight: Tensor,
                   dw_bias: Tensor | None, pw_weight: Tensor, dilation: int,
                   depthwise: str = "pixel") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(x), torch.empty_like(dw_weight),
            dw_weight.new_empty((dw_weight.shape[0],)), torch.empty_like(pw_weight),
            pw_weight.new_empty((pw_weight.shape[0],)))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, dw_weight, dw_bias, pw_weight, pw_bias, dilation, depthwise = inputs
    ctx.save_for_backward(x, output, dw_weight, dw_bias, pw_weight)
    ctx.dilation = dilation
    ctx.depthwise = depthwise
    ctx.has_pw_bias = pw_bias is not None


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    x, out, dw_weight, dw_bias, pw_weight = ctx.saved_tensors
    gx, gdw, gdb, gpw, gpb = torch.ops.mtlkit.hdc_stage_backward(
        grad_out.contiguous(), x, out, dw_weight, dw_bias, pw_weight, ctx.dilation,
        ctx.depthwise)
    return (gx, gdw, None if dw_bias is None else gdb, gpw,
            gpb if ctx.has_pw_bias else None, None, None)


def _check_schema() -> None:
    """Refuse an extension built from older sources (its ops lack the ``depthwise`` argument)."""
    for op in (torch.ops.mtlkit.hdc_stage, torch.ops.mtlkit.hdc_stage_backward):
        if "depthwise" not in [a.name for a in op.default._schema.arguments]:
            raise RuntimeError(f"the compiled extension is older than its sources ({op} has no "
                               "'depthwise' argument); rebuild it: pip install "
                               "--no-build-isolation -e .")


if HAS_CUDA_OPS:
    _check_schema()
    torch.library.register_fake("mtlkit::hdc_stage")(_fake_forward)
    torch.library.register_fake("mtlkit::hdc_stage_backward")(_fake_backward)
    torch.library.register_autograd("mtlkit::hdc_stage", _backward, setup_context=_setup_context)
