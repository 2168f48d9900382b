"""CUDA kernel of ifb (TPIM Iterative Fusion Block, paper 002, eq. 6-8) against float64.

Marked ``cuda``: skipped without a GPU (tests/conftest.py). With a GPU but no compiled extension
the tests skip too, unless ``MTLKIT_REQUIRE_EXT=1`` (then they fail).

Accuracy rule (OPS.md): float32 relative error well under 1e-4 (3xTF32 tensor cores keep float32
accuracy); bfloat16 at most ~2x the error of the PyTorch reference run in bfloat16. Relative
error = max |x - x64| / max |x64| over each tensor.
"""

from __future__ import annotations

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import reference
from tests.ops._kernels import cuda_kernels  # noqa: F401
from tests.ops._kernels import rel_err as max_rel_err

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("cuda_kernels")]


def rel_err(x: torch.Tensor | None, truth: torch.Tensor | None) -> float:
    """:func:`max_rel_err`, with a missing gradient (None) standing for zeros."""
    if truth is None:
        return 0.0 if x is None else x.double().abs().max().item()
    return max_rel_err(torch.zeros_like(truth) if x is None else x, truth)


def make_inputs(B, N, c, dtype, seed=0, stochastic=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N, N, generator=g)
    # N = 1: a softmax row is exactly 1, C V = V and d alpha is exactly 0 for variant C (no
    # meaningful relative error), so use raw logits there.
    C = torch.softmax(logits, -1) if stochastic and N > 1 else logits / N ** 0.5
    v = torch.randn(B, N, c, generator=g)
    alpha = torch.tensor(0.3)
    return [t.cuda().to(dtype).requires_grad_() for t in (C, v)] + [
        alpha.cuda().requires_grad_()]


def run(fn, C, v, alpha, iters, variant, grad):
    out = fn(C, v, alpha, iters=iters, variant=variant)
    grads = torch.autograd.grad(out, (C, v, alpha), grad.to(out.dtype), allow_unused=True)
    return out, grads


def to64(*ts):
    return [t.detach().double().requires_grad_() for t in ts]


CASES = [
    # B, N, c, iters
    (1, 1, 16, 1),       # batch 1, N = 1
    (2, 37, 16, 18),     # N not a multiple of any tile, 18 iterations
    (1, 130, 24, 3),     # c not a multiple of the 16-byte vector (scalar load path)
    (3, 64, 64, 2),      # exact tiles
    (2, 100, 100, 4),    # c in (64, 128]: 128-wide column tiles with a tail
    (1, 257, 256, 18),   # N = 4 * 64 + 1, c = 256
    (1, 70, 512, 1),     # c = 512: four column tiles
    (2, 33, 7, 5),       # tiny odd c
]


@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_vs_float64(case, dtype, variant):
    B, N, c, iters = case
    C, v, alpha = make_inputs(B, N, c, dtype)
    # the truth sees the same dtype-rounded grad_out as the kernel
    grad = torch.randn(B, N, c, generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
    out, grads = run(ops.ifb, C, v, alpha, iters, variant, grad)
    out64, grads64 = run(reference.ifb, *to64(C, v, alpha), iters, variant, grad.double())
    assert out.dtype == dtype and out.shape == (B, N, c)
    if variant == "A":
        assert grads[2] is None or grads[2].item() == 0
        grads, grads64 = grads[:2], grads64[:2]
    if dtype == torch.float32:
        assert rel_err(out, out64) < 2e-5
        for name, g, g64 in zip("C v alpha".split(), grads, grads64, strict=False):
            assert rel_err(g, g64) < 1e-4, name
    else:
        ref_out, ref_grads = run(reference.ifb, C, v, alpha, iters, variant, grad)
        assert rel_err(out, out64) <= 2.0 * rel_err(ref_out, out64) + 2e-3
        for name, g, rg, g64 in zip("C v alpha".split(), grads, ref_grads, grads64, strict=False):
            floor = 2e-2 if name == "alpha" else 2e-3  # a scalar: one rounding decides
            assert rel_err(g, g64) <= 2.0 * rel_err(rg, g64) + floor, name


@pytest.mark.parametrize("iters", [0, 1, 18])
def test_iters_edge_cases(iters):
    C, v, alpha = make_inputs(2, 45, 32, torch.float32, seed=3)
    grad = torch.randn(2, 45, 32, device="cuda")
    out, grads = run(ops.ifb, C, v, alpha, iters, "C", grad)
    out64, grads64 = run(reference.ifb, *to64(C, v, alpha), iters, "C", grad.double())
    assert rel_err(out, out64) < 2e-5
    if iters == 0:
        assert out.data_ptr() != v.data_ptr()  # a copy, not an alias
        torch.testing.assert_close(grads[1], grad)
        assert grads[0] is None or not grads[0].any()
    for g, g64 in zip(grads, grads64, strict=True):
        assert rel_err(g, g64) < 1e-4


def test_unnormalised_affinity_and_float_alpha():
    C, v, _ = make_inputs(2, 50, 40, torch.float32, seed=5, stochastic=False)
    for variant in "ABC":
        out = ops.ifb(C, v, 0.45, iters=6, variant=variant)
        out64 = reference.ifb(*to64(C, v), 0.45, iters=6, variant=variant)
        assert rel_err(out, out64) < 2e-5


def test_no_grad_path_matches_and_saves_nothing():
    C, v, alpha = make_inputs(2, 90, 64, torch.bfloat16, seed=2)
    with torch.no_grad():
        a = ops.ifb(C, v, alpha, iters=7, variant="B")
    b = ops.ifb(C, v, alpha, iters=7, variant="B")
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    _, states = torch.ops.mtlkit.ifb(C.detach(), v.detach(), alpha.detach().float(), 7, "B",
                                     False)
    assert states.shape == (2, 90, 0, 64)


def test_only_alpha_requires_grad():
    C, v, alpha = make_inputs(1, 40, 16, torch.float32, seed=4)
    C, v = C.detach(), v.detach()
    out = ops.ifb(C, v, alpha, iters=5, variant="C")
    (ga,) = torch.autograd.grad(out.sum(), (alpha,))
    a64 = alpha.detach().double().requires_grad_()
    (ga64,) = torch.autograd.grad(
        reference.ifb(C.double(), v.double(), a64, iters=5, variant="C").sum(), (a64,))
    assert rel_err(ga, ga64) < 1e-4


def test_kernel_switch(monkeypatch):
    C, v, alpha = make_inputs(1, 80, 48, torch.float32)
    a = ops.ifb(C, v, alpha, iters=4)
    monkeypatch.setenv("MTLKIT_KERNELS", "0")
    torch.testing.assert_close(a, ops.ifb(C, v, alpha, iters=4), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_opcheck(dtype, variant):
    C, v, alpha = make_inputs(2, 37, 24, dtype)
    alpha = alpha.detach().float().requires_grad_()
    for iters in (0, 3):
        torch.library.opcheck(torch.ops.mtlkit.ifb.default, (C, v, alpha, iters, variant, True))


def test_torch_compile():
    C, v, alpha = make_inputs(2, 40, 32, torch.float32)
    fn = torch.compile(lambda a, b, c: ops.ifb(a, b, c, iters=3, variant="C"), fullgraph=False)
    out = fn(C, v, alpha)
    out.sum().backward()
    out64 = reference.ifb(*to64(C, v, alpha), iters=3, variant="C")
    assert rel_err(out, out64) < 2e-5
    assert C.grad is not None and v.grad is not None and alpha.grad is not None
