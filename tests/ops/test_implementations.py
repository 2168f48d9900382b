"""Every implementation usable on a CPU against a float64 restatement of OPS.md (issue 15).

The restatements below are written with other operations than the implementations (einsum,
reshaped means, shifted slices) so that a shared mistake is unlikely; they are themselves checked
against the naive index loops of ``test_reference.py`` on small cases. Each implementation runs
through the public op under :func:`mtlkit.ops.use`, on odd shapes (Nq, Nk, N not multiples of
anything, T = 1..6, heads 1-4, M = 1 and M = T, batch 1), forward and every input gradient;
``sdpa`` is also gradchecked.
"""

from __future__ import annotations

import math

import pytest
import torch

import mtlkit.ops as ops
from tests.ops.test_reference import naive_bfe, naive_hdc, naive_ifb, naive_tpp

DT = torch.float64


# --------------------------------------------------------------------------- OPS.md in float64
def eq_bfe(q, feats, kw, vw, kb, vb, pool, heads):
    """OPS.md bfe_attention: pool, task-major row-major tokens, projections, per-head softmax."""
    B, Nq, E = q.shape
    _, T, C, H, W = feats.shape
    h, w = H // pool, W // pool
    P = feats.reshape(B, T, C, h, pool, w, pool).mean(dim=(4, 6))     # (B, T, C, h, w)
    X = P.permute(0, 1, 3, 4, 2).reshape(B, T * h * w, C)              # (B, Nk, C)
    K = torch.einsum("bnc,ec->bne", X, kw) + (0 if kb is None else kb)
    V = torch.einsum("bnc,ec->bne", X, vw) + (0 if vb is None else vb)
    D = E // heads
    qh, Kh, Vh = (t.reshape(B, -1, heads, D) for t in (q, K, V))
    S = torch.einsum("bihd,bnhd->bhin", qh, Kh) / math.sqrt(D)
    O = torch.einsum("bhin,bnhd->bihd", torch.softmax(S, dim=-1), Vh)
    return O.reshape(B, Nq, E)


def eq_tpp(q, k, v, mw, mb):
    """OPS.md tpp_attention: T maps mixed by mix_weight (+ mix_bias), softmax, per-task values."""
    D = q.shape[-1]
    A = torch.einsum("btid,btnd->btin", q, k) / math.sqrt(D)
    Abar = torch.einsum("mt,btin->bmin", mw, A)
    if mb is not None:
        Abar = Abar + mb[None, :, None, None]
    Pm = torch.softmax(Abar, dim=-1)
    T, M = q.shape[1], mw.shape[0]
    outs = [Pm[:, 0 if M == 1 else j] @ v[:, j] for j in range(T)]
    return torch.stack(outs, dim=1)


def eq_ifb(C, v, alpha, iters, variant):
    """OPS.md ifb: V_{k+1} = C V_k (A), alpha C V_k + V_k (B), alpha C V_k + (1-alpha) V_k (C)."""
    out = v
    for _ in range(iters):
        cv = torch.einsum("bij,bjc->bic", C, out)
        out = {"A": cv, "B": alpha * cv + out, "C": alpha * cv + (1 - alpha) * out}[variant]
    return out


def eq_hdc(x, dws, dwbs, pws, pwbs, dilations):
    """OPS.md hdc_conv: 3x3 depthwise (dilation d, zero padding d) as 9 shifted slices, 1x1 conv,
    ReLU, per stage."""
    for s, d in enumerate(dilations):
        B, C, H, W = x.shape
        xp = torch.nn.functional.pad(x, (d, d, d, d))
        y = sum(dws[s][None, :, 0, ki, kj, None, None]
                * xp[:, :, ki * d:ki * d + H, kj * d:kj * d + W]
                for ki in range(3) for kj in range(3))
        if dwbs[s] is not None:
            y = y + dwbs[s][None, :, None, None]
        z = torch.einsum("oc,bchw->bohw", pws[s], y)
        if pwbs[s] is not None:
            z = z + pwbs[s][None, :, None, None]
        x = torch.relu(z)
    return x


# --------------------------------------------------------------------------- inputs
def _r(g, *shape, scale=1.0):
    return (torch.randn(shape, generator=g, dtype=DT) * scale).requires_grad_()


def bfe_inputs(case, g, bias):
    B, Nq, T, C, H, W, E, heads, pool = case
    kb = _r(g, E, scale=0.3) if bias in ("both", "k") else None
    vb = _r(g, E, scale=0.3) if bias in ("both", "v") else None
    return ((_r(g, B, Nq, E), _r(g, B, T, C, H, W), _r(g, E, C, scale=C ** -0.5),
             _r(g, E, C, scale=C ** -0.5), kb, vb), {"pool": pool, "heads": heads})


def tpp_inputs(case, g, bias=True):
    B, T, N, D, Dv, M = case
    return ((_r(g, B, T, N, D), _r(g, B, T, N, D), _r(g, B, T, N, Dv),
             _r(g, M, T, scale=T ** -0.5), _r(g, M) if bias else None), {})


def ifb_inputs(case, g):
    B, N, c, iters, variant, tensor_alpha = case
    C = torch.softmax(torch.randn(B, N, N, generator=g, dtype=DT), dim=-1).requires_grad_()
    alpha = _r(g, scale=0.3).detach().add(0.4).requires_grad_() if tensor_alpha else 0.35
    return (C, _r(g, B, N, c), alpha), {"iters": iters, "variant": variant}


def hdc_inputs(case, g, bias=True):
    B, chans, H, W, dilations = case
    S = len(dilations)
    return ((_r(g, B, chans[0], H, W),
             [_r(g, chans[s], 1, 3, 3, scale=1 / 3) for s in range(S)],
             [_r(g, chans[s], scale=0.1) if bias else None for s in range(S)],
             [_r(g, chans[s + 1], chans[s], scale=chans[s] ** -0.5) for s in range(S)],
             [_r(g, chans[s + 1], scale=0.1) if bias else None for s in range(S)]),
            {"dilations": dilations})


def leaves(args):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, torch.Tensor) and t.requires_grad)
    return out


def cast(args, dtype):
    def c(a):
        if isinstance(a, torch.Tensor):
            return a.detach().to(dtype).requires_grad_(a.requires_grad)
        if isinstance(a, (list, tuple)):
            return [c(t) for t in a]
        return a

    return [c(a) for a in args]


def check(op, impl, truth_fn, args, kwargs):
    """impl (float64 and float32) vs the float64 restatement: output and every input grad."""
    fn = getattr(ops, op)
    want = truth_fn(*args, **kwargs)
    g_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(7), dtype=DT)
    want_grads = torch.autograd.grad(want, leaves(args), g_out, allow_unused=True)
    for dtype, tol in ((DT, 1e-10), (torch.float32, 2e-5)):
        a = cast(args, dtype)
        with ops.use(**{op: impl}), ops.dispatch.recording() as log:
            out = fn(*a, **kwargs)
        assert [r.impl for r in log] == [impl]
        assert out.dtype == dtype and out.shape == want.shape
        grads = torch.autograd.grad(out, leaves(a), g_out.to(dtype), allow_unused=True)
        pairs = [("out", out, want)] + [
            (f"grad {i}", gr, torch.zeros_like(leaf, dtype=DT) if w is None else w)
            for i, (gr, w, leaf) in enumerate(zip(grads, want_grads, leaves(a), strict=True))]
        scale = max(w.abs().max().item() for _, _, w in pairs)
        for name, got, w in pairs:
            got = torch.zeros_like(w) if got is None else got.double()
            if w.abs().max().item() <= 1e-9 * scale:  # zero in exact arithmetic (k_bias)
                assert got.abs().max().item() <= 1e3 * tol * scale, (op, impl, dtype, name)
                continue
            err = (got - w).abs().max().item() / max(w.abs().max().item(), 1e-3 * scale)
            assert err < tol, (op, impl, dtype, name, err)


def cpu_impls(op):
    return ops.implementations(op, device="cpu")


# --------------------------------------------------------------------------- the restatements
def _detached(args):
    return [[t.detach() if t is not None else None for t in a] if isinstance(a, list)
            else a.detach() if isinstance(a, torch.Tensor) else a for a in args]


def test_restatements_match_the_naive_loops():
    g = torch.Generator().manual_seed(0)
    args, kw = bfe_inputs((1, 5, 2, 3, 4, 6, 4, 2, 2), g, "both")
    args = _detached(args)
    torch.testing.assert_close(eq_bfe(*args, **kw), naive_bfe(*args, kw["pool"], kw["heads"]))
    for M in (1, 3):
        args = _detached(tpp_inputs((1, 3, 5, 2, 3, M), g)[0])
        torch.testing.assert_close(eq_tpp(*args), naive_tpp(*args))
    for variant in "ABC":
        args, kw = ifb_inputs((1, 4, 3, 3, variant, False), g)
        args = _detached(args)
        torch.testing.assert_close(eq_ifb(*args, **kw), naive_ifb(*args, 3, variant))
    args, kw = hdc_inputs((1, [2, 3, 2], 5, 6, (1, 4)), g)
    args = _detached(args)
    torch.testing.assert_close(eq_hdc(*args, **kw), naive_hdc(*args, (1, 4)))


# --------------------------------------------------------------------------- names
def test_implementation_names():
    assert ops.implementations("bfe_attention") == ["reference", "sdpa", "cuda", "cuda_tc"]
    assert ops.implementations("tpp_attention") == ["reference", "sdpa", "cuda", "cuda_tc"]
    assert ops.implementations("ifb") == ["reference", "cuda"]
    assert ops.implementations("hdc_conv") == ["reference", "cuda", "cuda_band"]
    assert cpu_impls("bfe_attention") == cpu_impls("tpp_attention") == ["reference", "sdpa"]
    assert cpu_impls("ifb") == cpu_impls("hdc_conv") == ["reference"]
    assert ops.implementations("ifb", device=torch.device("cpu")) == ["reference"]
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        ops.implementations("nope")


# --------------------------------------------------------------------------- every op
BFE_CASES = [
    # B, Nq, T, C, H, W, E, heads, pool
    (1, 1, 1, 3, 2, 2, 4, 1, 2),       # batch 1, one query, one key
    (2, 7, 3, 5, 6, 4, 12, 3, 2),      # Nq = 7, Nk = 18
    (1, 13, 6, 4, 3, 3, 8, 4, 1),      # T = 6, 4 heads of 2, pool 1 (Nk = 54)
    (2, 5, 2, 3, 9, 6, 6, 2, 3),       # pool 3, Nk = 12
    (1, 11, 4, 2, 4, 8, 15, 3, 4),     # T = 4, head dim 5, Nk = 8
    (3, 9, 5, 2, 2, 6, 4, 1, 2),       # T = 5, batch 3, Nk = 15
]


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("case", BFE_CASES)
def test_bfe_attention(impl, case):
    assert impl in cpu_impls("bfe_attention")
    g = torch.Generator().manual_seed(sum(case))
    for bias in ("both", "none", "k", "v"):
        args, kw = bfe_inputs(case, g, bias)
        check("bfe_attention", impl, eq_bfe, args, kw)


TPP_CASES = [
    # B, T, N, D, Dv, M
    (1, 1, 5, 3, 2, 1),
    (1, 2, 8, 2, 7, 2),                # Dv > T * D: sdpa pads q and k
    (2, 2, 7, 4, 3, 2),
    (1, 3, 9, 2, 5, 1),
    (2, 4, 6, 3, 3, 4),
    (1, 5, 11, 2, 4, 1),
    (1, 6, 4, 3, 2, 6),
    (2, 6, 3, 1, 1, 1),
]


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("case", TPP_CASES)
def test_tpp_attention(impl, case):
    assert impl in cpu_impls("tpp_attention")
    g = torch.Generator().manual_seed(sum(case))
    for bias in (True, False):
        args, kw = tpp_inputs(case, g, bias)
        check("tpp_attention", impl, eq_tpp, args, kw)


IFB_CASES = [
    # B, N, c, iters, variant, alpha is a tensor
    (1, 5, 3, 0, "C", True),
    (2, 7, 4, 3, "A", False),
    (1, 9, 2, 4, "B", True),
    (1, 9, 2, 4, "B", False),
    (2, 6, 5, 5, "C", True),
    (3, 11, 1, 2, "C", False),
]


@pytest.mark.parametrize("case", IFB_CASES)
def test_ifb(case):
    args, kw = ifb_inputs(case, torch.Generator().manual_seed(sum(case[:4])))
    check("ifb", "reference", eq_ifb, args, kw)


HDC_CASES = [
    # B, channels, H, W, dilations
    (1, [3, 4, 2], 5, 7, (1, 2)),
    (2, [2, 3], 6, 5, (5,)),             # dilation beyond the image
    (1, [4, 4, 4, 3], 9, 11, (1, 2, 5)),
    (1, [1, 1], 1, 1, (1,)),             # one pixel, one channel
]


@pytest.mark.parametrize("case", HDC_CASES)
def test_hdc_conv(case):
    g = torch.Generator().manual_seed(len(case[1]) + case[2])
    for bias in (True, False):
        args, kw = hdc_inputs(case, g, bias)
        check("hdc_conv", "reference", eq_hdc, args, kw)


def test_sdpa_gradcheck():
    g = torch.Generator().manual_seed(3)
    args, kw = bfe_inputs((1, 3, 2, 2, 4, 2, 4, 2, 2), g, "both")
    with ops.use(bfe_attention="sdpa"):
        assert torch.autograd.gradcheck(lambda *a: ops.bfe_attention(*a, **kw), args,
                                        fast_mode=True)
    for M in (1, 3):
        args, _ = tpp_inputs((1, 3, 4, 2, 3, M), g)
        with ops.use(tpp_attention="sdpa"):
            assert torch.autograd.gradcheck(ops.tpp_attention, args, fast_mode=True)


@pytest.mark.parametrize("M,D,Dv", [(1, 4, 4), (3, 4, 4), (3, 2, 5), (1, 4, 20)])
def test_tpp_sdpa_memory_is_linear_in_n(M, D, Dv):
    """tpp ``sdpa`` keeps no (N x N) map alive for the backward, M = 1 and M = T, equal or
    different head dims: the saved tensors grow linearly in N (the reference keeps the maps)."""
    from mtlkit.ops import compositions, reference

    def saved_bytes(fn, n):
        args, _ = tpp_inputs((1, 3, n, D, Dv, M), torch.Generator().manual_seed(0))
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*args)
        return total

    small, large = (saved_bytes(compositions.tpp_sdpa, n) for n in (64, 512))
    assert large <= 8 * small * 1.5
    assert saved_bytes(reference.tpp_attention, 512) > 512 * 512 * 8  # the maps (float64)
