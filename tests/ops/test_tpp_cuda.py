"""CUDA kernel of tpp_attention (BFCI eq. 5-6) against the float64 reference.

Marked ``cuda``: skipped without a GPU (tests/conftest.py). With a GPU but no compiled extension
the tests skip too, unless ``MTLKIT_REQUIRE_EXT=1`` (then they fail).
"""

from __future__ import annotations

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import reference
from mtlkit.ops import tpp as glue
from tests.ops._kernels import attn_core, core_arg, cuda_kernels, to64  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("cuda_kernels")]


def rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    """max |x - truth| / max |truth|; a truth that is exactly zero (the q and k gradients when
    N = 1: a one-element softmax is constant) is compared in absolute terms instead."""
    truth = truth.double()
    err = (x.double() - truth).abs().max()
    scale = truth.abs().max()
    return (err if scale == 0 else err / scale).item()


def make_inputs(B, T, N, D, Dv, M, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).cuda().to(dtype).requires_grad_()

    return dict(q=r(B, T, N, D), k=r(B, T, N, D), v=r(B, T, N, Dv),
                mix_weight=r(M, T, scale=T ** -0.5), mix_bias=r(M) if bias else None)


def run(fn, x, grad):
    out = fn(x["q"], x["k"], x["v"], x["mix_weight"], x["mix_bias"])
    leaves = [t for t in x.values() if t is not None]
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out, grads


CASES = [
    # B, T, N, D, Dv, M
    (1, 1, 1, 16, 16, 1),      # batch 1, T 1, one token
    (2, 3, 77, 32, 24, 1),     # odd N, Dv != D, shared map
    (2, 3, 77, 32, 24, 3),     # one map per task
    (1, 6, 130, 16, 16, 6),    # T = 6
    (1, 6, 65, 128, 128, 1),   # head dim 128, feature dim T*D = 768
    (3, 2, 300, 64, 48, 2),    # NYUD-like token count
    (1, 4, 33, 80, 100, 1),    # head dims not multiples of 16
    (2, 4, 100, 64, 64, 1),    # T * D = 256: two 128-column output groups (tensor-core path)
    (2, 4, 100, 64, 64, 4),    # the same with one map per task
]


@pytest.mark.usefixtures("attn_core")
@pytest.mark.filterwarnings("ignore:mtlkit.ops.tpp_attention")  # cuda_tc declining a problem
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_vs_float64(case, dtype):
    B, T, N, D, Dv, M = case
    x = make_inputs(B, T, N, D, Dv, M, dtype)
    grad = torch.randn(B, T, N, Dv, generator=torch.Generator().manual_seed(1)).cuda()
    out, grads = run(ops.tpp_attention, x, grad)
    out64, grads64 = run(reference.tpp_attention, to64(x), grad.double())
    assert out.dtype == dtype and out.shape == (B, T, N, Dv)
    gb = grads[-1]
    torch.testing.assert_close(gb, torch.zeros_like(gb))  # mix_bias has no effect
    if dtype == torch.float32:
        assert rel_err(out, out64) < 2e-5
        for g, g64 in zip(grads[:-1], grads64[:-1], strict=True):
            assert rel_err(g, g64) < 1e-4
    else:
        ref_out, ref_grads = run(reference.tpp_attention, x, grad)
        assert rel_err(out, out64) <= 2.0 * rel_err(ref_out, out64) + 1e-3
        for g, rg, g64 in zip(grads[:-1], ref_grads[:-1], grads64[:-1], strict=True):
            assert rel_err(g, g64) <= 2.0 * rel_err(rg, g64) + 2e-3


def test_fresh_random_inputs_many_seeds():
    for seed in range(5):
        x = make_inputs(2, 4, 50, 32, 32, 1 + 3 * (seed % 2), torch.float32, seed=seed)
        out = ops.tpp_attention(*x.values())
        out64 = reference.tpp_attention(*to64(x).values())
        assert rel_err(out, out64) < 2e-5


def test_kernel_switch(monkeypatch):
    x = make_inputs(1, 3, 40, 16, 16, 3, torch.float32)
    args = list(x.values())
    a = ops.tpp_attention(*args)
    monkeypatch.setenv("MTLKIT_KERNELS", "0")
    with pytest.warns(RuntimeWarning, match="MTLKIT_KERNELS=0"):
        b = ops.tpp_attention(*args)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("Dv", [24, 32])
def test_opcheck(dtype, M, Dv, attn_core):  # noqa: F811 (the fixture)
    x = make_inputs(2, 3, 37, 16, Dv, M, dtype)
    core = core_arg(attn_core, glue.tpp_attention_cuda_tc_declines(*x.values()))
    torch.library.opcheck(torch.ops.mtlkit.tpp_attention.default,
                          (x["q"], x["k"], x["v"], x["mix_weight"], x["mix_bias"], core))
    torch.library.opcheck(torch.ops.mtlkit.tpp_attention.default,
                          (x["q"], x["k"], x["v"], x["mix_weight"], None, core))


def test_peak_memory_linear_in_n():
    """The extra memory of forward + backward grows ~linearly in N (no T x N x N maps)."""

    def peak(n: int) -> int:
        x = make_inputs(1, 4, n, 32, 32, 4, torch.float32)
        grad = torch.randn(1, 4, n, 32, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(ops.tpp_attention, x, grad)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    small, large = peak(1024), peak(8192)
    maps_large = 4 * 8192 * 8192 * 4  # T * N^2 float32
    assert large < maps_large / 8
    assert large <= 8 * 2.0 * small + 2**20
