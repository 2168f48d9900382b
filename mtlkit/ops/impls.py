"""The named implementations of every op, and where each one can run (issue 15).

=================  ==========================================================================
op                 implementations (in this order)
=================  ==========================================================================
``bfe_attention``  ``reference`` (:func:`mtlkit.ops.reference.bfe_attention`, materialized
                   scores), ``sdpa`` (pool + one fused K/V projection +
                   ``F.scaled_dot_product_attention``), ``cuda`` (CUDA-core kernel),
                   ``cuda_tc`` (tensor-core kernel, 16-bit)
``tpp_attention``  ``reference``, ``sdpa`` (mix weights folded into the queries), ``cuda``,
                   ``cuda_tc``
``ifb``            ``reference`` (one ``baddbmm`` per iteration), ``cuda``
``hdc_conv``       ``reference`` (eager cuDNN / ATen convolutions), ``cuda`` (fused stage
                   kernels), ``cuda_band`` (the same with shared-memory row-band depthwise
                   gradients)
=================  ==========================================================================

``reference`` and ``sdpa`` run on every device; the ``cuda*`` ones need a CUDA tensor, the
compiled extension (:data:`mtlkit.ops.HAS_CUDA_OPS`), ``MTLKIT_KERNELS`` not ``"0"`` and, for
``cuda_tc`` and the hdc kernels, compute capability >= 8.0. A usable implementation may still
decline particular arguments (:meth:`Implementation.declines`, e.g. a head dim above 128).
``cuda_tc`` and ``cuda_band`` are *experimental*: compiled and checked on a CPU emulation of
CUDA but not yet run on a GPU, so ``auto`` never picks them; they run when named explicitly.

Each implementation's ``fn`` has its op's public signature and receives validated arguments of
one dtype (:mod:`mtlkit.ops` checks and casts them). :func:`register` adds one (tests register
deliberately wrong ones to check that ``auto`` rejects them).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlkit.ops import compositions, reference
from mtlkit.ops._loader import CUDA_OPS_ERROR, HAS_CUDA_OPS

OPS = ("bfe_attention", "tpp_attention", "ifb", "hdc_conv")
"""The ops, in the order of ``OPS.md``."""

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Dtypes the CUDA kernels accept; other dtypes (float64) run the stock implementations."""

HALF_DTYPES = (torch.bfloat16, torch.float16)

GLUE_ERRORS: dict[str, str] = {}
"""Glue modules that failed to import (e.g. an extension older than the sources): why."""


@dataclass(frozen=True)
class Implementation:
    """One named implementation of an op."""

    op: str
    name: str
    fn: Callable[..., Tensor]
    """Same signature as the public op; validated arguments of one dtype."""
    kernel: bool = False
    """A CUDA kernel of mtlkit (needs the extension; ``MTLKIT_KERNELS=0`` switches it off)."""
    min_capability: tuple[int, int] = (0, 0)
    """Smallest CUDA compute capability (kernels only)."""
    check: Callable[..., str | None] | None = None
    """``check(*args, **kwargs)``: why these arguments cannot run (None when they can)."""
    fallback: str | None = None
    """What runs when this one declines an explicit request: another name, or None for auto."""
    experimental: bool = False
    """Not yet run on a GPU: never an ``auto`` candidate (a kernel fault could not be caught),
    only run when named explicitly. Cleared once its CUDA tests pass on a GPU."""
    description: str = ""

    def unavailable(self, device: torch.device | str) -> str | None:
        """Why this implementation cannot run on ``device`` at all (None when it can)."""
        if not self.kernel:
            return None
        device = torch.device(device)
        if device.type != "cuda":
            return "needs a CUDA GPU"
        if not HAS_CUDA_OPS:
            return f"the CUDA extension is not available: {CUDA_OPS_ERROR}"
        if self.fn is _missing:
            return f"its CUDA glue did not load: {GLUE_ERRORS.get(_GLUE[self.op], 'missing')}"
        if os.environ.get("MTLKIT_KERNELS", "1") == "0":
            return "MTLKIT_KERNELS=0"
        if not torch.cuda.is_available():
            return "no CUDA GPU is available"
        if self.min_capability > (0, 0):
            cap = torch.cuda.get_device_capability(device)
            if cap < self.min_capability:
                major, minor = self.min_capability
                return f"needs compute capability >= {major}.{minor}, the GPU has {cap[0]}.{cap[1]}"
        return None

    def declines(self, *args: Any, **kwargs: Any) -> str | None:
        """Why these (validated) arguments cannot run here (None when they can)."""
        if self.kernel:
            dtype = args[0].dtype
            if dtype not in KERNEL_DTYPES:
                return f"the CUDA kernels take float32, bfloat16 or float16, not {dtype}"
        return None if self.check is None else self.check(*args, **kwargs)


_REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}


def register(impl: Implementation) -> Implementation:
    """Add (or replace) ``impl`` under its op; returns it."""
    if impl.op not in _REGISTRY:
        raise ValueError(f"unknown op {impl.op!r}; the ops are {', '.join(OPS)}")
    _REGISTRY[impl.op][impl.name] = impl
    return impl


def unregister(op: str, name: str) -> None:
    """Remove implementation ``name`` of ``op`` (no error when it is absent)."""
    _REGISTRY.get(op, {}).pop(name, None)


def check_op(op: str) -> str:
    """``op`` when it is an op name, else ``ValueError`` naming the ops."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OPS)}")
    return op


def get(op: str, name: str) -> Implementation:
    """The implementation ``name`` of ``op`` (``ValueError`` naming the choices otherwise)."""
    impls = _REGISTRY[check_op(op)]
    if name not in impls:
        raise ValueError(f"{op} has no implementation {name!r}; choose one of "
                         f"{', '.join([*impls, 'auto'])}")
    return impls[name]


def all_implementations(op: str) -> list[Implementation]:
    """Every registered implementation of ``op``, in registration order."""
    return list(_REGISTRY[check_op(op)].values())


def implementations(op: str, device: torch.device | str | None = None) -> list[str]:
    """Names of the implementations of ``op`` usable on ``device`` (every name when None).

    ``reference`` and ``sdpa`` run everywhere, the ``cuda*`` kernels on a CUDA device with the
    extension loaded and ``MTLKIT_KERNELS`` not ``"0"``.
    """
    impls = all_implementations(op)
    if device is None:
        return [i.name for i in impls]
    return [i.name for i in impls if i.unavailable(device) is None]


# --------------------------------------------------------------------------- CUDA glue
_GLUE = {"bfe_attention": "bfe", "tpp_attention": "tpp", "ifb": "ifb", "hdc_conv": "hdc"}


def _missing(*args: Any, **kwargs: Any) -> Tensor:
    raise RuntimeError("this mtlkit kernel is not available")


def _glue(module: str) -> Any | None:
    """``mtlkit.ops.<module>`` (the CUDA glue of an op), or None when it cannot be used.

    A glue module that fails (say, an extension built from older sources) must not break
    ``import mtlkit.ops``: its op then runs the stock implementations, and the reason is kept
    in :data:`GLUE_ERRORS` and emitted once as a warning.
    """
    try:
        return importlib.import_module(f"mtlkit.ops.{module}")
    except ImportError as exc:
        if exc.name != f"mtlkit.ops.{module}":  # the module exists but an import inside failed
            GLUE_ERRORS[module] = f"{type(exc).__name__}: {exc}"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no kernel", never a crash
        GLUE_ERRORS[module] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"mtlkit.ops.{module} failed to load ({exc}); {module}'s op runs its "
                      "stock PyTorch implementations", RuntimeWarning, stacklevel=2)
        return None


def _attr(module: Any | None, name: str) -> Callable[..., Any]:
    fn = getattr(module, name, None) if module is not None else None
    return fn if fn is not None else _missing


def _check(module: Any | None, name: str) -> Callable[..., str | None] | None:
    return getattr(module, name, None) if module is not None else None


def _register_builtins() -> None:
    bfe, tpp, ifb, hdc = (_glue(m) for m in ("bfe", "tpp", "ifb", "hdc"))

    register(Implementation("bfe_attention", "reference", reference.bfe_attention,
                            description="materialized scores (the executable OPS.md)"))
    register(Implementation("bfe_attention", "sdpa", compositions.bfe_sdpa,
                            description="pool + fused K/V projection + SDPA"))
    register(Implementation("bfe_attention", "cuda", _attr(bfe, "bfe_attention_cuda"),
                            kernel=True, check=_check(bfe, "bfe_attention_cuda_declines"),
                            description="fused flash-style kernel on CUDA cores"))
    register(Implementation("bfe_attention", "cuda_tc", _attr(bfe, "bfe_attention_cuda_tc"),
                            kernel=True, min_capability=(8, 0),
                            check=_check(bfe, "bfe_attention_cuda_tc_declines"), fallback="cuda",
                            experimental=True,
                            description="fused flash-style kernel on tensor cores (16-bit)"))

    register(Implementation("tpp_attention", "reference", reference.tpp_attention,
                            description="materialized T maps (the executable OPS.md)"))
    register(Implementation("tpp_attention", "sdpa", compositions.tpp_sdpa,
                            description="mix weights folded into the queries + SDPA"))
    register(Implementation("tpp_attention", "cuda", _attr(tpp, "tpp_attention_cuda"),
                            kernel=True, check=_check(tpp, "tpp_attention_cuda_declines"),
                            description="one folded pass on CUDA cores"))
    register(Implementation("tpp_attention", "cuda_tc", _attr(tpp, "tpp_attention_cuda_tc"),
                            kernel=True, min_capability=(8, 0),
                            check=_check(tpp, "tpp_attention_cuda_tc_declines"), fallback="cuda",
                            experimental=True,
                            description="one folded pass on tensor cores (16-bit)"))

    register(Implementation("ifb", "reference", compositions.ifb_baddbmm,
                            description="one baddbmm per iteration"))
    register(Implementation("ifb", "cuda", _attr(ifb, "ifb_cuda"), kernel=True,
                            check=_check(ifb, "ifb_cuda_declines"),
                            description="cuBLAS step GEMMs + stacked-state backward"))

    register(Implementation("hdc_conv", "reference", compositions.hdc_eager,
                            description="eager cuDNN / ATen convolutions"))
    register(Implementation("hdc_conv", "cuda", _attr(hdc, "hdc_conv_cuda"), kernel=True,
                            min_capability=(8, 0), check=_check(hdc, "hdc_conv_cuda_declines"),
                            description="fused depthwise + pointwise stages"))
    register(Implementation("hdc_conv", "cuda_band", _attr(hdc, "hdc_conv_cuda_band"),
                            kernel=True, min_capability=(8, 0),
                            check=_check(hdc, "hdc_conv_cuda_band_declines"), fallback="cuda",
                            experimental=True,
                            description="fused stages, row-band depthwise gradients"))


_register_builtins()
