"""Shared by the CUDA kernel tests: the extension gate and the relative-error measure.

The tests are marked ``cuda`` (skipped without a GPU, tests/conftest.py). With a GPU but no
compiled extension they skip too, unless ``MTLKIT_REQUIRE_EXT=1`` (then they fail).
"""

from __future__ import annotations

import os

import pytest
import torch

import mtlkit.ops as ops

KERNELS = "bfe_attention=cuda,tpp_attention=cuda,ifb=cuda,hdc_conv=cuda"
"""``MTLKIT_IMPL`` that runs every public op on its ``cuda`` implementation."""


@pytest.fixture
def cuda_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Require the compiled extension and run the public ops on their ``cuda`` implementations
    (``MTLKIT_KERNELS=1``, ``MTLKIT_IMPL`` = :data:`KERNELS`)."""
    if not ops.HAS_CUDA_OPS:
        if os.environ.get("MTLKIT_REQUIRE_EXT") == "1":
            pytest.fail(f"mtlkit._C required but unavailable: {ops.CUDA_OPS_ERROR}")
        pytest.skip(f"CUDA extension unavailable: {ops.CUDA_OPS_ERROR}")
    if ops.GLUE_ERRORS:
        pytest.fail(f"CUDA glue failed to load: {ops.GLUE_ERRORS}")
    monkeypatch.setenv("MTLKIT_KERNELS", "1")
    monkeypatch.setenv("MTLKIT_IMPL", KERNELS)


def rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    """max |x - truth| / max |truth|, in float64."""
    truth = truth.double()
    return ((x.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()



def to64(x: dict) -> dict:
    """The same inputs as float64 leaves that require grad (None stays None)."""
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in x.items()}

@pytest.fixture(params=["cuda", "cuda_tc"])
def attn_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
              cuda_kernels: None) -> str:
    """Run an attention test with each attention kernel implementation: ``cuda`` (CUDA cores)
    and ``cuda_tc`` (tensor cores; a problem they decline, e.g. float32, falls back to ``cuda``
    with a warning). Returns the implementation name."""
    impl = request.param
    monkeypatch.setenv("MTLKIT_IMPL", KERNELS.replace("_attention=cuda", f"_attention={impl}"))
    return impl


def core_arg(impl: str, declines: str | None) -> str:
    """The ``core`` argument of a direct ``torch.ops.mtlkit`` attention call for implementation
    ``impl``: ``tc`` for ``cuda_tc`` where the tensor-core kernels take the problem (their
    ``*_declines`` returned None), else ``simt``."""
    return "tc" if impl == "cuda_tc" and declines is None else "simt"
