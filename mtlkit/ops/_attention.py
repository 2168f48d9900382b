"""The attention kernels' ``core`` argument, shared by the glue of bfe_attention and tpp_attention.

``core="simt"`` runs the CUDA-core kernels (implementation ``cuda``), ``core="tc"`` the
tensor-core kernels (``cuda_tc``). The C++ side raises ``core='tc' declined`` for a problem the
tensor-core kernels cannot take (csrc/attention_core.cu: dtype, head dims, alignment, shared
memory): in the forward this becomes :class:`ImplementationDeclined` (the dispatcher runs
``cuda`` instead and warns); in the backward, which cannot choose again, it is rerun on
``core="simt"`` with one warning per problem shape.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor

from mtlkit.ops._errors import ImplementationDeclined

CORES = ("simt", "tc")
TC_DECLINED = "core='tc' declined"
"""Marker of csrc/attention_core.cu's error for a problem the tensor-core kernels cannot take."""

_WARNED: set[str] = set()


def tc_problem_declines(dtype: Any, dims: dict[str, int]) -> str | None:
    """Why the tensor-core kernels cannot take a problem of ``dtype`` and these head dims."""
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return f"the tensor-core kernels take bfloat16 or float16, not {dtype}"
    for name, d in dims.items():
        if d % 16:
            return f"the tensor-core kernels need {name} to be a multiple of 16, got {d}"
    return None


def forward(call: Callable[[str], Any], core: str) -> Any:
    """``call(core)``; a tensor-core decline becomes :class:`ImplementationDeclined`."""
    try:
        return call(core)
    except RuntimeError as exc:
        if core == "tc" and TC_DECLINED in str(exc):
            raise ImplementationDeclined(str(exc).splitlines()[0]) from None
        raise


def backward(call: Callable[[str], Any], core: str, op: str, shapes: tuple[Any, ...]) -> Any:
    """``call(core)``; a tensor-core decline reruns on ``simt`` with one warning per shape."""
    try:
        return call(core)
    except RuntimeError as exc:
        if core != "tc" or TC_DECLINED not in str(exc):
            raise
    key = f"{op} {shapes}"
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{op}: the tensor-core backward kernels declined {shapes} (shared memory "
                      "or alignment); the CUDA-core kernels ran instead", RuntimeWarning,
                      stacklevel=3)
    return call("simt")


def shapes_of(*tensors: Tensor | None) -> tuple[Any, ...]:
    """The shapes of ``tensors`` (None stays None), for warnings."""
    return tuple(None if t is None else tuple(t.shape) for t in tensors)
