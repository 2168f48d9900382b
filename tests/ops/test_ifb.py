"""CPU tests of ifb (TPIM Iterative Fusion Block, paper 002, eq. 6-8) edge cases.

- gradcheck of the public op (reference path, float64) for iters 0, 1 and 18 and every variant;
- closed forms (identity and row-stochastic affinities, alpha 0 and 1, batch independence);
- the backward algorithm of the CUDA kernel (csrc/ifb.cu: stacked iterates, one GEMM for
  grad_affinity, trace identity for grad_alpha) restated in float64 PyTorch and compared with
  autograd of the reference, so its math is checked without a GPU;
- the CUDA glue (mtlkit/ops/ifb.py): support predicate, and the fake kernels on meta tensors
  when the extension is built.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import reference

DT = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def _stochastic(B: int, N: int, gen: torch.Generator) -> torch.Tensor:
    """A row-softmax affinity like the TPIM one (rows sum to 1)."""
    return torch.softmax(torch.randn(B, N, N, generator=gen, dtype=DT), dim=-1)


# --------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("iters", [0, 1, 18])
def test_gradcheck_iters(gen, variant, iters):
    C = _stochastic(2, 4, gen).requires_grad_()
    v = torch.randn(2, 4, 3, generator=gen, dtype=DT, requires_grad=True)
    alpha = torch.tensor(0.3, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.ifb(a, b, c, iters=iters, variant=variant), (C, v, alpha))


@pytest.mark.parametrize("variant", ["B", "C"])
def test_gradcheck_float_alpha_batch1_n1(gen, variant):
    C = torch.randn(1, 1, 1, generator=gen, dtype=DT, requires_grad=True)
    v = torch.randn(1, 1, 1, generator=gen, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.ifb(a, b, 0.45, iters=5, variant=variant), (C, v))


def test_iters0_gradient_is_identity(gen):
    C = _stochastic(1, 3, gen).requires_grad_()
    v = torch.randn(1, 3, 2, generator=gen, dtype=DT, requires_grad=True)
    alpha = torch.tensor(0.3, dtype=DT, requires_grad=True)
    out = ops.ifb(C, v, alpha, iters=0)
    torch.testing.assert_close(out, v)
    g = torch.randn_like(out)
    gC, gv, ga = torch.autograd.grad(out, (C, v, alpha), g, allow_unused=True)
    torch.testing.assert_close(gv, g)
    assert gC is None or not gC.any()
    assert ga is None or ga.item() == 0


def test_variant_a_ignores_alpha(gen):
    C, v = _stochastic(2, 5, gen), torch.randn(2, 5, 3, generator=gen, dtype=DT)
    C.requires_grad_()
    alpha = torch.tensor(0.3, dtype=DT, requires_grad=True)
    out = ops.ifb(C, v, alpha, iters=4, variant="A")
    torch.testing.assert_close(out, ops.ifb(C, v, 0.9, iters=4, variant="A"))
    (ga,) = torch.autograd.grad(out.sum(), (alpha,), allow_unused=True)
    assert ga is None or ga.item() == 0


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("iters", [1, 18])
def test_identity_affinity(gen, iters):
    v = torch.randn(2, 6, 4, generator=gen, dtype=DT)
    eye = torch.eye(6, dtype=DT).expand(2, 6, 6)
    a = 0.3
    torch.testing.assert_close(ops.ifb(eye, v, a, iters=iters, variant="A"), v)
    torch.testing.assert_close(ops.ifb(eye, v, a, iters=iters, variant="C"), v)
    torch.testing.assert_close(ops.ifb(eye, v, a, iters=iters, variant="B"), (1 + a) ** iters * v)


def test_stochastic_affinity_fixes_constants(gen):
    C = _stochastic(3, 7, gen)
    v = torch.ones(3, 7, 2, dtype=DT) * torch.tensor([2.0, -1.0], dtype=DT)
    for variant in ("A", "C"):
        torch.testing.assert_close(ops.ifb(C, v, 0.3, iters=18, variant=variant), v)


def test_alpha_limits(gen):
    C, v = _stochastic(2, 5, gen), torch.randn(2, 5, 3, generator=gen, dtype=DT)
    torch.testing.assert_close(ops.ifb(C, v, 0.0, iters=6, variant="C"), v)
    torch.testing.assert_close(ops.ifb(C, v, 1.0, iters=6, variant="C"),
                               ops.ifb(C, v, 0.3, iters=6, variant="A"))
    torch.testing.assert_close(ops.ifb(C, v, 0.0, iters=6, variant="B"), v)


def test_batch_independence(gen):
    C, v = _stochastic(3, 5, gen), torch.randn(3, 5, 4, generator=gen, dtype=DT)
    full = ops.ifb(C, v, 0.3, iters=5, variant="B")
    for b in range(3):
        torch.testing.assert_close(full[b:b + 1],
                                   ops.ifb(C[b:b + 1], v[b:b + 1], 0.3, iters=5, variant="B"))


# --------------------------------------------------------------------------- kernel backward math
def kernel_backward_math(C, v, alpha, iters, variant, grad_out):
    """csrc/ifb.cu's algorithm in float64 PyTorch: (grad_affinity, grad_v, grad_alpha)."""
    B, N, c = v.shape
    a = 1.0 if variant == "A" else alpha
    b = 0.0 if variant == "A" else (1.0 if variant == "B" else 1 - alpha)
    if iters == 0:
        return torch.zeros_like(C), grad_out.clone(), torch.zeros(())
    states = torch.empty(B, N, iters, c, dtype=v.dtype)  # slot k = V_k
    cur = v
    for k in range(iters):
        states[:, :, k] = cur
        cur = a * (C @ cur) + b * cur
    Gs = torch.empty(B, N, iters, c, dtype=v.dtype)  # slot j = G_{j+1}
    Gs[:, :, iters - 1] = grad_out
    for k in range(iters - 1, 0, -1):
        g = Gs[:, :, k]
        Gs[:, :, k - 1] = a * (C.transpose(1, 2) @ g) + b * g
    g1 = Gs[:, :, 0]
    grad_v = a * (C.transpose(1, 2) @ g1) + b * g1
    # one GEMM over the stacked iterations: K = iters * c (views, no copies)
    S = Gs.view(B, N, iters * c) @ states.view(B, N, iters * c).transpose(1, 2)
    if variant == "A":
        return S, grad_v, torch.zeros(())
    grad_alpha = (C * S).sum()
    if variant == "C":
        grad_alpha = grad_alpha - (Gs * states).sum()
    return alpha * S, grad_v, grad_alpha


@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("iters", [0, 1, 2, 18])
def test_kernel_backward_math_matches_autograd(gen, variant, iters):
    C = (torch.randn(2, 6, 6, generator=gen, dtype=DT) / 3).requires_grad_()
    v = torch.randn(2, 6, 5, generator=gen, dtype=DT, requires_grad=True)
    alpha = torch.tensor(0.35, dtype=DT, requires_grad=True)
    out = reference.ifb(C, v, alpha, iters=iters, variant=variant)
    g = torch.randn(out.shape, generator=gen, dtype=DT)
    want = torch.autograd.grad(out, (C, v, alpha), g, allow_unused=True)
    got = kernel_backward_math(C.detach(), v.detach(), 0.35, iters, variant, g)
    for w, x in zip(want, got, strict=True):
        w = torch.zeros_like(x, dtype=DT) if w is None else w
        torch.testing.assert_close(torch.as_tensor(x, dtype=DT), w, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- CUDA glue (no GPU)
def test_cuda_supported_predicate():
    glue = importlib.import_module("mtlkit.ops.ifb")

    C, v = torch.empty(2, 8, 8), torch.empty(2, 8, 16)
    assert glue.ifb_cuda_supported(C, v, 0.3, iters=18, variant="C")
    assert not glue.ifb_cuda_supported(torch.empty(70000, 1, 1), torch.empty(70000, 1, 1), 0.3,
                                       iters=1)


@pytest.mark.skipif(not ops.HAS_CUDA_OPS, reason="mtlkit._C not built")
def test_fake_kernels_on_meta():
    C = torch.empty(3, 37, 37, device="meta")
    v = torch.empty(3, 37, 24, device="meta")
    alpha = torch.empty((), device="meta")
    out, states = torch.ops.mtlkit.ifb(C, v, alpha, 5, "C", True)
    assert out.shape == (3, 37, 24) and states.shape == (3, 37, 5, 24)
    _, states = torch.ops.mtlkit.ifb(C, v, alpha, 5, "B", False)
    assert states.shape == (3, 37, 0, 24)
    ga, gv, gal = torch.ops.mtlkit.ifb_backward(out, C, alpha, states, 5, "C")
    assert ga.shape == C.shape and gv.shape == v.shape and gal.shape == ()


@pytest.mark.skipif(not ops.HAS_CUDA_OPS, reason="mtlkit._C not built")
def test_autograd_wiring_on_meta():
    """ifb_cuda -> mtlkit::ifb -> register_autograd -> mtlkit::ifb_backward, with meta tensors."""
    glue = importlib.import_module("mtlkit.ops.ifb")
    C = torch.empty(2, 9, 9, device="meta", requires_grad=True)
    v = torch.empty(2, 9, 5, device="meta", requires_grad=True)
    alpha = torch.empty((), device="meta", requires_grad=True)
    out = glue.ifb_cuda(C, v, alpha, iters=4, variant="C")
    out.sum().backward()
    assert C.grad.shape == C.shape and v.grad.shape == v.shape and alpha.grad.shape == ()
    # without saved states, differentiating the raw op must fail loudly
    out, _ = torch.ops.mtlkit.ifb(C, v, alpha.detach(), 3, "B", False)
    with pytest.raises(RuntimeError, match="save_states"):
        out.sum().backward()


@pytest.mark.skipif(not ops.HAS_CUDA_OPS, reason="mtlkit._C not built")
@pytest.mark.parametrize("iters,variant", [(0, "A"), (1, "B"), (4, "C")])
def test_opcheck_on_meta(iters, variant):
    """Schema, fake kernel, autograd registration and AOT dispatch (kernels need a GPU)."""
    C = torch.empty(2, 9, 9, device="meta", requires_grad=True)
    v = torch.empty(2, 9, 5, device="meta", requires_grad=True)
    alpha = torch.empty((), device="meta", requires_grad=True)
    torch.library.opcheck(torch.ops.mtlkit.ifb.default, (C, v, alpha, iters, variant, True))
