"""CUDA kernel of bfe_attention (BFCI eq. 1-4) against the float64 reference.

Marked ``cuda``: skipped without a GPU (tests/conftest.py). With a GPU but no compiled extension
the tests skip too, unless ``MTLKIT_REQUIRE_EXT=1`` (then they fail).
Accuracy rule (OPS.md): float32 relative error well under 1e-4; bfloat16 error at most ~2x the
error of the PyTorch reference computed in bfloat16.
"""

from __future__ import annotations

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import bfe as glue
from mtlkit.ops import reference
from tests.ops._kernels import attn_core, core_arg, cuda_kernels, rel_err, to64  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("cuda_kernels")]


def make_inputs(B, Nq, T, C, H, W, E, pool, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).cuda().to(dtype).requires_grad_()

    return dict(q=r(B, Nq, E), feats=r(B, T, C, H, W), k_weight=r(E, C, scale=C ** -0.5),
                v_weight=r(E, C, scale=C ** -0.5),
                k_bias=r(E, scale=0.1) if bias else None,
                v_bias=r(E, scale=0.1) if bias else None)


def run(fn, x, pool, heads, grad):
    out = fn(x["q"], x["feats"], x["k_weight"], x["v_weight"], x["k_bias"], x["v_bias"],
             pool=pool, heads=heads)
    leaves = [t for t in x.values() if t is not None]
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out, grads


CASES = [
    # B, Nq, T, C, H, W, E, heads, pool
    (1, 1, 1, 8, 2, 2, 16, 1, 2),          # batch 1, a single query and key
    (2, 77, 3, 16, 12, 20, 32, 2, 4),      # odd Nq, Nk = 3 * 3 * 5 = 45
    (1, 130, 6, 24, 16, 16, 256, 2, 2),    # T = 6, head dim 128, Nk = 384
    (3, 65, 2, 12, 10, 14, 48, 3, 2),      # head dim 16, Nk = 70
    (2, 33, 4, 20, 9, 9, 128, 2, 3),       # head dim 64, pool 3, Nk = 36
    (1, 200, 5, 8, 18, 6, 80, 1, 1),       # head dim 80, pool 1, Nk = 540
]


@pytest.mark.usefixtures("attn_core")
@pytest.mark.filterwarnings("ignore:mtlkit.ops.bfe_attention")  # cuda_tc declining float32
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_vs_float64(case, dtype):
    B, Nq, T, C, H, W, E, heads, pool = case
    x = make_inputs(B, Nq, T, C, H, W, E, pool, dtype, bias=(Nq % 2 == 1))
    grad = torch.randn(B, Nq, E, generator=torch.Generator().manual_seed(1)).cuda()
    out, grads = run(ops.bfe_attention, x, pool, heads, grad)
    out64, grads64 = run(reference.bfe_attention, to64(x), pool, heads, grad.double())
    assert out.dtype == dtype and out.shape == (B, Nq, E)
    names = [k for k, v in x.items() if v is not None]
    scale = max(g.abs().max().item() for g in grads64)
    if dtype == torch.float32:
        assert rel_err(out, out64) < 2e-5
        for name, g, g64 in zip(names, grads, grads64, strict=True):
            if name == "k_bias":  # zero in exact arithmetic (softmax shift invariance)
                assert g.abs().max().item() < 1e-4 * scale
            else:
                assert rel_err(g, g64) < 1e-4, name
    else:
        ref_out, ref_grads = run(reference.bfe_attention, x, pool, heads, grad)
        tol = 2.0 * rel_err(ref_out, out64) + 1e-3
        assert rel_err(out, out64) <= tol
        for name, g, rg, g64 in zip(names, grads, ref_grads, grads64, strict=True):
            if name == "k_bias":
                bound = max(2.0 * rg.abs().max().item(), 1e-2 * scale)
                assert g.abs().max().item() <= bound
            else:
                assert rel_err(g, g64) <= 2.0 * rel_err(rg, g64) + 2e-3, name


def test_fresh_random_inputs_many_seeds():
    for seed in range(5):
        x = make_inputs(2, 50, 2, 16, 8, 8, 64, 2, torch.float32, seed=seed)
        out = ops.bfe_attention(*x.values(), pool=2, heads=2)
        out64 = reference.bfe_attention(*to64(x).values(), pool=2, heads=2)
        assert rel_err(out, out64) < 2e-5


def test_kernel_switch_and_fallback(monkeypatch):
    x = make_inputs(1, 20, 2, 8, 4, 4, 32, 2, torch.float32)
    args = list(x.values())
    a = ops.bfe_attention(*args, pool=2, heads=2)
    monkeypatch.setenv("MTLKIT_KERNELS", "0")  # the cuda request falls back (one warning)
    with pytest.warns(RuntimeWarning, match="MTLKIT_KERNELS=0"):
        b = ops.bfe_attention(*args, pool=2, heads=2)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("MTLKIT_KERNELS", "1")
    # head dim 160 > 128: the kernel declines, a stock implementation runs, with a warning
    y = make_inputs(1, 5, 1, 8, 2, 2, 160, 2, torch.float32)
    with pytest.warns(RuntimeWarning, match="head dim 160"):
        out = ops.bfe_attention(*y.values(), pool=2, heads=1)
    assert out.shape == (1, 5, 160)


def test_non_contiguous_inputs():
    x = make_inputs(2, 24, 2, 8, 4, 4, 32, 2, torch.float32)
    q = x["q"].detach().transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    q2 = torch.cat([x["q"].detach(), x["q"].detach()], dim=-1)[..., :32]
    assert not q2.is_contiguous()
    args = [x["feats"], x["k_weight"], x["v_weight"], x["k_bias"], x["v_bias"]]
    out = ops.bfe_attention(q2, *args, pool=2, heads=2)
    torch.testing.assert_close(out, ops.bfe_attention(q, *args, pool=2, heads=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype, attn_core):  # noqa: F811 (the fixture)
    x = make_inputs(2, 37, 3, 8, 8, 4, 32, 2, dtype)
    core = core_arg(attn_core, glue.bfe_attention_cuda_tc_declines(*x.values(), pool=2, heads=2))
    torch.library.opcheck(torch.ops.mtlkit.bfe_attention.default,
                          (x["q"], x["feats"], x["k_weight"], x["v_weight"], x["k_bias"],
                           x["v_bias"], 2, 2, core))
    y = make_inputs(1, 9, 1, 8, 4, 4, 16, 1, dtype, bias=False)
    core = core_arg(attn_core, glue.bfe_attention_cuda_tc_declines(*y.values(), pool=2, heads=1))
    torch.library.opcheck(torch.ops.mtlkit.bfe_attention.default,
                          (y["q"], y["feats"], y["k_weight"], y["v_weight"], None, None, 2, 1,
                           core))


def test_peak_memory_linear_in_n():
    """Nq = Nk = n: the extra memory of forward + backward grows ~linearly (no n^2 scores)."""

    def peak(n: int) -> int:
        x = make_inputs(2, n, 1, 16, n // 32, 32, 64, 1, torch.float32)  # pool 1: Nk = n
        grad = torch.randn(2, n, 64, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(ops.bfe_attention, x, 1, 2, grad)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    small, large = peak(1024), peak(8192)
    scores_large = 2 * 2 * 8192 * 8192 * 4  # B * heads * n^2 float32
    assert large < scores_large / 8
    assert large <= 8 * 2.0 * small + 2**20  # 8x the tokens, ~8x the memory


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_core_core_is_used_and_agrees(dtype):
    """``cuda_tc`` really switches kernels (16-bit results differ in the last bits: the
    tensor-core path rounds P and dS to 16 bits) and agrees with ``cuda``."""
    x = make_inputs(2, 150, 3, 16, 12, 20, 128, 2, 2, dtype)  # head dim 64, Nk = 180
    grad = torch.randn(2, 150, 128, generator=torch.Generator().manual_seed(2)).cuda()
    results = {}
    for impl in ("cuda", "cuda_tc"):
        with ops.use(bfe_attention=impl):
            results[impl] = run(ops.bfe_attention, x, 2, 2, grad)
    (o_s, g_s), (o_t, g_t) = results["cuda"], results["cuda_tc"]
    assert not torch.equal(o_s, o_t)
    assert rel_err(o_t, o_s) < 2e-2
    for a, b in zip(g_t, g_s, strict=True):
        assert rel_err(a, b) < 3e-2


def test_core_argument_is_checked_and_tc_declines_loudly():
    """The op's core argument: an unknown value is an error naming it; core="tc" on a problem
    the tensor-core kernels cannot take (float32) is an error, never a silent fallback, and the
    public op turns it into a warning and the CUDA-core kernels."""
    x = make_inputs(1, 8, 1, 8, 4, 4, 32, 2, torch.bfloat16)
    args = (*x.values(), 2, 2)
    with pytest.raises(RuntimeError, match="core must be 'simt'"):
        torch.ops.mtlkit.bfe_attention(*args, "wgmma")
    y = make_inputs(1, 8, 1, 8, 4, 4, 32, 2, torch.float32)
    with pytest.raises(RuntimeError, match="core='tc' declined"):
        torch.ops.mtlkit.bfe_attention(*y.values(), 2, 2, "tc")
    with ops.use(bfe_attention="cuda_tc"), pytest.warns(RuntimeWarning, match="cuda_tc"):
        out = ops.bfe_attention(*y.values(), pool=2, heads=2)
    with ops.use(bfe_attention="cuda"):
        torch.testing.assert_close(out, ops.bfe_attention(*y.values(), pool=2, heads=2))
