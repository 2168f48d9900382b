"""Shared by the CUDA kernel tests: the extension gate and the relative-error measure.

The tests are marked ``cuda`` (skipped without a GPU, tests/conftest.py). With a GPU but no
compiled extension they skip too, unless ``MTLKIT_REQUIRE_EXT=1`` (then they fail).
"""

from __future__ import annotations

import os

import pytest
import torch

import mtlkit.ops as ops


@pytest.fixture
def cuda_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Require the compiled extension and force the kernels on (``MTLKIT_KERNELS=1``)."""
    if not ops.HAS_CUDA_OPS:
        if os.environ.get("MTLKIT_REQUIRE_EXT") == "1":
            pytest.fail(f"mtlkit._C required but unavailable: {ops.CUDA_OPS_ERROR}")
        pytest.skip(f"CUDA extension unavailable: {ops.CUDA_OPS_ERROR}")
    monkeypatch.setenv("MTLKIT_KERNELS", "1")


def rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    """max |x - truth| / max |truth|, in float64."""
    truth = truth.double()
    return ((x.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()



def to64(x: dict) -> dict:
    """The same inputs as float64 leaves that require grad (None stays None)."""
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in x.items()}

@pytest.fixture(params=["simt", "tc"])
def attn_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run an attention test with each attention core (``MTLKIT_ATTN_CORE``): the CUDA-core
    kernels and the tensor-core kernels (bfloat16/float16 problems whose head dims are multiples
    of 16; others fall back to the CUDA-core kernels inside the extension)."""
    monkeypatch.setenv("MTLKIT_ATTN_CORE", request.param)
    return request.param
