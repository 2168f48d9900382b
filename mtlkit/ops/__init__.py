"""Public functional ops of mtlkit (contract: ``OPS.md``); models call only these.

- ``bfe_attention(q, feats, k_weight, v_weight, k_bias=None, v_bias=None, *, pool, heads)``
  BFCI Bridge Feature Extractor cross-attention (paper 000, eq. 1-4).
- ``ifb(affinity, v, alpha, *, iters, variant="C")`` TPIM Iterative Fusion Block (002, eq. 6-8).
- ``tpp_attention(q, k, v, mix_weight, mix_bias=None)`` BFCI Task Pattern Propagation (eq. 5-6).
- ``hdc_conv(x, dw_weights, dw_biases, pw_weights, pw_biases, *, dilations=(1, 2, 5))`` BFCI TFR
  hybrid dilated depthwise-separable stack (eq. 7).

Each op validates its arguments (``ValueError`` naming the argument and the expected shape), casts
its tensors to one dtype (the autocast dtype inside autocast, else the promoted dtype), then runs
the CUDA kernel when :func:`kernels_enabled` is true, every tensor is on a CUDA device and the
dtype is float32/bfloat16/float16; otherwise it runs the reference of
:mod:`mtlkit.ops.reference`. ``MTLKIT_KERNELS=0`` forces the reference everywhere (read per call).

Pattern for the CUDA glue of an op ``<op>`` (``mtlkit/ops/bfe.py``, ``tpp.py``, ``ifb.py``,
``hdc.py``), which this module imports inside ``try/except ImportError``:

1. C++: schemas ``mtlkit::<op>`` and ``mtlkit::<op>_backward`` in ``csrc/`` with
   ``TORCH_LIBRARY`` (register.cpp) or ``TORCH_LIBRARY_FRAGMENT(mtlkit, m)`` (other files), CUDA
   kernels with ``TORCH_LIBRARY_IMPL(mtlkit, CUDA, m)``. Tensor lists / optional tensors as
   ``Tensor[]`` / ``Tensor?`` in the schema.
2. Python module ``mtlkit/ops/<module>.py``: ``from mtlkit.ops._loader import HAS_CUDA_OPS``;
   under ``if HAS_CUDA_OPS:`` call ``torch.library.register_fake("mtlkit::<op>")`` for every op
   (forward and backward) and ``torch.library.register_autograd("mtlkit::<op>", backward,
   setup_context=...)`` where ``backward`` calls ``torch.ops.mtlkit.<op>_backward``.
3. The module defines ``<op>_cuda(...)`` with exactly the public signature (same names, order,
   keyword-only args). It receives validated arguments, all CUDA tensors of one dtype in
   {float32, bfloat16, float16}, and returns the op's output through ``torch.ops.mtlkit.<op>``.
   It may define ``<op>_cuda_supported(...) -> bool`` (same signature) to decline arguments its
   kernel does not handle (e.g. too large a head dim); the reference then runs.
   Names: ``bfe_attention_cuda``, ``tpp_attention_cuda``, ``ifb_cuda``, ``hdc_conv_cuda``.
4. Optionally define ``make_bench() -> mtlkit.profiling.KernelBench`` in the glue module (import
   ``mtlkit.profiling`` inside that function, not at module level, to avoid an import cycle);
   ``mtlkit profile`` then uses it instead of its built-in bench for the op.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.ops import reference
from mtlkit.ops._loader import CUDA_OPS_ERROR, HAS_CUDA_OPS
from mtlkit.ops.reference import check_bfe_args, check_hdc_args, check_ifb_args, check_tpp_args

__all__ = [
    "bfe_attention",
    "ifb",
    "tpp_attention",
    "hdc_conv",
    "HAS_CUDA_OPS",
    "CUDA_OPS_ERROR",
    "kernels_enabled",
    "reference",
]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Dtypes the CUDA kernels accept; other dtypes (float64) use the reference."""


GLUE_ERRORS: dict[str, str] = {}
"""Glue modules that failed to import (e.g. an extension built without their sources): why."""


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    """``mtlkit.ops.<module>.<name>`` or None when the glue module or the name is missing.

    A glue module that fails for another reason (say, registering a fake kernel for an op the
    compiled extension lacks) must not break ``import mtlkit.ops``: the op then uses its
    reference, and the reason is kept in :data:`GLUE_ERRORS` and emitted as a warning.
    """
    try:
        mod = importlib.import_module(f"mtlkit.ops.{module}")
    except ImportError as exc:
        if exc.name != f"mtlkit.ops.{module}":  # the module exists but an import inside failed
            GLUE_ERRORS[module] = f"{type(exc).__name__}: {exc}"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no kernel", never a crash
        GLUE_ERRORS[module] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"mtlkit.ops.{module} failed to load ({exc}); using the PyTorch "
                      "reference for its op", RuntimeWarning, stacklevel=2)
        return None
    return getattr(mod, name, None)


_bfe_cuda = _optional("bfe", "bfe_attention_cuda")
_bfe_supported = _optional("bfe", "bfe_attention_cuda_supported")
_tpp_cuda = _optional("tpp", "tpp_attention_cuda")
_tpp_supported = _optional("tpp", "tpp_attention_cuda_supported")
_ifb_cuda = _optional("ifb", "ifb_cuda")
_ifb_supported = _optional("ifb", "ifb_cuda_supported")
_hdc_cuda = _optional("hdc", "hdc_conv_cuda")
_hdc_supported = _optional("hdc", "hdc_conv_cuda_supported")


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


def _use_kernel(fn: Callable[..., Any] | None, tensors: Sequence[Tensor],
                dtype: torch.dtype) -> bool:
    return (fn is not None and kernels_enabled() and dtype in KERNEL_DTYPES
            and all(t.is_cuda for t in tensors))


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
    if _use_kernel(_bfe_cuda, ts, dtype) and (
            _bfe_supported is None or _bfe_supported(*args, pool=pool, heads=heads)):
        return _bfe_cuda(*args, pool=pool, heads=heads)
    return reference.bfe_attention(*args, pool=pool, heads=heads)


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
    if _use_kernel(_tpp_cuda, ts, dtype) and (_tpp_supported is None or _tpp_supported(*args)):
        return _tpp_cuda(*args)
    return reference.tpp_attention(*args)


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
    if _use_kernel(_ifb_cuda, _tensors(affinity, v, alpha), dtype) and (
            _ifb_supported is None
            or _ifb_supported(affinity, v, alpha, iters=iters, variant=variant)):
        return _ifb_cuda(affinity, v, alpha, iters=iters, variant=variant)
    return reference.ifb(affinity, v, alpha, iters=iters, variant=variant)


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
    if _use_kernel(_hdc_cuda, ts, dtype) and (
            _hdc_supported is None or _hdc_supported(*args, dilations=dilations)):
        return _hdc_cuda(*args, dilations=dilations)
    return reference.hdc_conv(*args, dilations=dilations)
