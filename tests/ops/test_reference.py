"""CPU tests of the op references (mtlkit.ops.reference) and the public dispatch (mtlkit.ops).

Each reference is compared with a naive loop restatement of its paper equations in float64
(BFCI eq. 1-4 for bfe_attention, eq. 5-6 for tpp_attention, TPIM eq. 6-8 for ifb, the BFCI TFR
HDC stack for hdc_conv), gradchecked on small float64 inputs, and its argument validation is
checked (ValueError naming the argument).
"""

from __future__ import annotations

import math

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import reference as ref

DT = torch.float64


def _rand(*shape: int, gen: torch.Generator, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DT).requires_grad_(requires_grad)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# --------------------------------------------------------------------------- naive restatements
def naive_bfe(q, feats, kw, vw, kb, vb, pool, heads):
    """Loops over every index of BFCI eq. 1-4."""
    B, Nq, E = q.shape
    _, T, C, H, W = feats.shape
    h, w = H // pool, W // pool
    D = E // heads
    out = torch.zeros(B, Nq, E, dtype=DT)
    for b in range(B):
        tokens = []  # eq. 1-2: pooled, flattened row-major, task-major concatenation
        for t in range(T):
            for y in range(h):
                for x in range(w):
                    tok = [sum(float(feats[b, t, c, y * pool + dy, x * pool + dx])
                               for dy in range(pool) for dx in range(pool)) / pool ** 2
                           for c in range(C)]
                    tokens.append(tok)
        Nk = len(tokens)
        K = [[sum(tokens[n][c] * float(kw[e, c]) for c in range(C))
              + (0.0 if kb is None else float(kb[e])) for e in range(E)] for n in range(Nk)]
        V = [[sum(tokens[n][c] * float(vw[e, c]) for c in range(C))
              + (0.0 if vb is None else float(vb[e])) for e in range(E)] for n in range(Nk)]
        for hd in range(heads):
            sl = range(hd * D, (hd + 1) * D)
            for i in range(Nq):
                s = [sum(float(q[b, i, e]) * K[n][e] for e in sl) / math.sqrt(D)
                     for n in range(Nk)]
                mx = max(s)
                p = [math.exp(v - mx) for v in s]
                z = sum(p)
                for e in sl:
                    out[b, i, e] = sum(p[n] / z * V[n][e] for n in range(Nk))
    return out


def naive_tpp(q, k, v, mw, mb):
    """Loops over BFCI eq. 5-6 with the 1x1 conv mixing the T maps."""
    B, T, N, D = q.shape
    Dv = v.shape[-1]
    M = mw.shape[0]
    out = torch.zeros(B, T, N, Dv, dtype=DT)
    for b in range(B):
        A = [[[float(q[b, j, i] @ k[b, j, n]) / math.sqrt(D) for n in range(N)]
              for i in range(N)] for j in range(T)]
        for j in range(T):
            m = 0 if M == 1 else j
            for i in range(N):
                row = [sum(float(mw[m, t]) * A[t][i][n] for t in range(T))
                       + (0.0 if mb is None else float(mb[m])) for n in range(N)]
                mx = max(row)
                p = [math.exp(r - mx) for r in row]
                z = sum(p)
                for d in range(Dv):
                    out[b, j, i, d] = sum(p[n] / z * float(v[b, j, n, d]) for n in range(N))
    return out


def naive_ifb(C, v, alpha, iters, variant):
    """TPIM eq. 6-8 with explicit matrix products."""
    a = float(alpha)
    B, N, c = v.shape
    cur = v.detach().clone()
    for _ in range(iters):
        cv = torch.zeros_like(cur)
        for b in range(B):
            for i in range(N):
                for d in range(c):
                    cv[b, i, d] = sum(float(C[b, i, n]) * float(cur[b, n, d]) for n in range(N))
        if variant == "A":
            cur = cv
        elif variant == "B":
            cur = a * cv + cur
        else:
            cur = a * cv + (1 - a) * cur
    return cur


def naive_hdc(x, dws, dwbs, pws, pwbs, dilations):
    """3x3 depthwise dilated conv (zero padding d) + 1x1 conv + ReLU per stage, by loops."""
    cur = x.detach().clone()
    for s, d in enumerate(dilations):
        B, C, H, W = cur.shape
        y = torch.zeros_like(cur)
        for b in range(B):
            for c in range(C):
                for i in range(H):
                    for j in range(W):
                        acc = 0.0 if dwbs[s] is None else float(dwbs[s][c])
                        for ki in range(3):
                            for kj in range(3):
                                ii, jj = i + (ki - 1) * d, j + (kj - 1) * d
                                if 0 <= ii < H and 0 <= jj < W:
                                    acc += float(dws[s][c, 0, ki, kj]) * float(cur[b, c, ii, jj])
                        y[b, c, i, j] = acc
        Co = pws[s].shape[0]
        z = torch.zeros(B, Co, H, W, dtype=DT)
        for o in range(Co):
            acc = (y * pws[s][o].detach()[None, :, None, None]).sum(1)
            if pwbs[s] is not None:
                acc = acc + float(pwbs[s][o])
            z[:, o] = acc.clamp_min(0)
        cur = z
    return cur


# --------------------------------------------------------------------------- bfe_attention
@pytest.mark.parametrize("T,pool,heads,bias", [(1, 1, 1, True), (3, 2, 2, False),
                                                (2, 3, 1, True)])
def test_bfe_matches_naive(gen, T, pool, heads, bias):
    B, Nq, C, H, W, E = 2, 3, 3, 3 * pool, 2 * pool, 4 * heads
    q = _rand(B, Nq, E, gen=gen)
    feats = _rand(B, T, C, H, W, gen=gen)
    kw, vw = _rand(E, C, gen=gen), _rand(E, C, gen=gen)
    kb = _rand(E, gen=gen) if bias else None
    vb = _rand(E, gen=gen) if bias else None
    got = ops.bfe_attention(q, feats, kw, vw, kb, vb, pool=pool, heads=heads)
    want = naive_bfe(q, feats, kw, vw, kb, vb, pool, heads)
    assert got.shape == (B, Nq, E) and got.dtype == DT
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        ref.bfe_attention(q, feats, kw, vw, kb, vb, pool=pool, heads=heads), got)


def test_bfe_gradcheck(gen):
    B, Nq, T, C, H, W, E, heads, pool = 1, 3, 2, 2, 4, 2, 4, 2, 2
    args = (_rand(B, Nq, E, gen=gen, requires_grad=True),
            _rand(B, T, C, H, W, gen=gen, requires_grad=True),
            _rand(E, C, gen=gen, requires_grad=True), _rand(E, C, gen=gen, requires_grad=True),
            _rand(E, gen=gen, requires_grad=True), _rand(E, gen=gen, requires_grad=True))
    assert torch.autograd.gradcheck(
        lambda *a: ops.bfe_attention(*a, pool=pool, heads=heads), args)


@pytest.mark.parametrize("change,name", [
    (dict(q=(2, 3, 5)), "q"),                 # E not divisible by heads
    (dict(q=(3, 3, 4)), "feats"),             # batch mismatch
    (dict(feats=(2, 2, 3, 5, 4)), "feats"),   # H not divisible by pool
    (dict(k_weight=(4, 2)), "k_weight"),
    (dict(v_weight=(5, 3)), "v_weight"),
    (dict(k_bias=(3,)), "k_bias"),
    (dict(v_bias=(4, 1)), "v_bias"),
    (dict(q=(2, 3)), "q"),
])
def test_bfe_bad_shapes(gen, change, name):
    shapes = dict(q=(2, 3, 4), feats=(2, 2, 3, 4, 4), k_weight=(4, 3), v_weight=(4, 3),
                  k_bias=(4,), v_bias=(4,))
    shapes.update(change)
    t = {k: _rand(*s, gen=gen) for k, s in shapes.items()}
    with pytest.raises(ValueError, match=name):
        ops.bfe_attention(t["q"], t["feats"], t["k_weight"], t["v_weight"], t["k_bias"],
                          t["v_bias"], pool=2, heads=2)


def test_bfe_bad_pool_heads(gen):
    q, f, w = _rand(1, 2, 4, gen=gen), _rand(1, 1, 3, 4, 4, gen=gen), _rand(4, 3, gen=gen)
    with pytest.raises(ValueError, match="pool"):
        ops.bfe_attention(q, f, w, w, pool=0, heads=1)
    with pytest.raises(ValueError, match="heads"):
        ops.bfe_attention(q, f, w, w, pool=2, heads=0)


def test_bfe_keyword_only():
    q = torch.zeros(1, 1, 2)
    with pytest.raises(TypeError):
        ops.bfe_attention(q, torch.zeros(1, 1, 1, 2, 2), torch.zeros(2, 1), torch.zeros(2, 1),
                          None, None, 2, 1)  # type: ignore[misc]


# --------------------------------------------------------------------------- tpp_attention
@pytest.mark.parametrize("T,M,bias", [(1, 1, False), (3, 1, True), (3, 3, True), (2, 2, False)])
def test_tpp_matches_naive(gen, T, M, bias):
    B, N, D, Dv = 2, 5, 3, 4
    q, k, v = _rand(B, T, N, D, gen=gen), _rand(B, T, N, D, gen=gen), _rand(B, T, N, Dv, gen=gen)
    mw = _rand(M, T, gen=gen)
    mb = _rand(M, gen=gen) if bias else None
    got = ops.tpp_attention(q, k, v, mw, mb)
    assert got.shape == (B, T, N, Dv)
    torch.testing.assert_close(got, naive_tpp(q, k, v, mw, mb), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("M", [1, 3])
def test_tpp_gradcheck(gen, M):
    T, N, D = 3, 4, 2
    args = (_rand(1, T, N, D, gen=gen, requires_grad=True),
            _rand(1, T, N, D, gen=gen, requires_grad=True),
            _rand(1, T, N, 3, gen=gen, requires_grad=True),
            _rand(M, T, gen=gen, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *a: ops.tpp_attention(*a), args)


def test_tpp_mix_bias_has_no_effect(gen):
    T, M = 3, 3
    q, k, v = (_rand(2, T, 5, 4, gen=gen) for _ in range(3))
    mw = _rand(M, T, gen=gen)
    mb = _rand(M, gen=gen, requires_grad=True)
    with_bias = ops.tpp_attention(q, k, v, mw, mb * 100)
    torch.testing.assert_close(with_bias, ops.tpp_attention(q, k, v, mw, None))
    (grad,) = torch.autograd.grad(with_bias.square().sum(), mb)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-9, rtol=0)


@pytest.mark.parametrize("change,name", [
    (dict(q=(2, 3, 5)), "q"),
    (dict(k=(2, 3, 5, 3)), "k"),
    (dict(v=(2, 3, 4, 2)), "v"),
    (dict(mix_weight=(2, 3)), "mix_weight"),
    (dict(mix_weight=(1, 2)), "mix_weight"),
    (dict(mix_bias=(3,)), "mix_bias"),
])
def test_tpp_bad_shapes(gen, change, name):
    shapes = dict(q=(2, 3, 5, 4), k=(2, 3, 5, 4), v=(2, 3, 5, 2), mix_weight=(1, 3),
                  mix_bias=(1,))
    shapes.update(change)
    t = {k: _rand(*s, gen=gen) for k, s in shapes.items()}
    with pytest.raises(ValueError, match=name):
        ops.tpp_attention(t["q"], t["k"], t["v"], t["mix_weight"], t["mix_bias"])


# --------------------------------------------------------------------------- ifb
@pytest.mark.parametrize("variant", ["A", "B", "C"])
@pytest.mark.parametrize("iters", [0, 1, 3])
def test_ifb_matches_naive(gen, variant, iters):
    C = torch.softmax(_rand(2, 5, 5, gen=gen), dim=-1)
    v = _rand(2, 5, 3, gen=gen)
    for alpha in (0.3, torch.tensor(0.7, dtype=DT)):
        got = ops.ifb(C, v, alpha, iters=iters, variant=variant)
        torch.testing.assert_close(got, naive_ifb(C, v, alpha, iters, variant),
                                   rtol=1e-10, atol=1e-10)
    if iters == 0:
        torch.testing.assert_close(ops.ifb(C, v, 0.3, iters=0), v)


def test_ifb_default_variant_is_c(gen):
    C, v = _rand(1, 4, 4, gen=gen), _rand(1, 4, 2, gen=gen)
    torch.testing.assert_close(ops.ifb(C, v, 0.3, iters=2),
                               ops.ifb(C, v, 0.3, iters=2, variant="C"))


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_ifb_gradcheck(gen, variant):
    args = ((_rand(1, 4, 4, gen=gen) / 2).requires_grad_(),
            _rand(1, 4, 3, gen=gen, requires_grad=True),
            torch.tensor(0.3, dtype=DT, requires_grad=True))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.ifb(a, b, c, iters=3, variant=variant), args)


def test_ifb_bad_args(gen):
    C, v = _rand(2, 4, 4, gen=gen), _rand(2, 4, 3, gen=gen)
    with pytest.raises(ValueError, match="affinity"):
        ops.ifb(_rand(2, 4, 3, gen=gen), v, 0.3, iters=1)
    with pytest.raises(ValueError, match="v"):
        ops.ifb(C, _rand(2, 5, 3, gen=gen), 0.3, iters=1)
    with pytest.raises(ValueError, match="alpha"):
        ops.ifb(C, v, torch.ones(2, dtype=DT), iters=1)
    with pytest.raises(ValueError, match="iters"):
        ops.ifb(C, v, 0.3, iters=-1)
    with pytest.raises(ValueError, match="variant"):
        ops.ifb(C, v, 0.3, iters=1, variant="D")


# --------------------------------------------------------------------------- hdc_conv
def _hdc_params(gen, chans, bias=True, requires_grad=False):
    S = len(chans) - 1
    dws = [_rand(chans[s], 1, 3, 3, gen=gen, requires_grad=requires_grad) for s in range(S)]
    pws = [_rand(chans[s + 1], chans[s], gen=gen, requires_grad=requires_grad)
           for s in range(S)]
    dwbs = [_rand(chans[s], gen=gen, requires_grad=requires_grad) if bias else None
            for s in range(S)]
    pwbs = [_rand(chans[s + 1], gen=gen, requires_grad=requires_grad) if bias else None
            for s in range(S)]
    return dws, dwbs, pws, pwbs


@pytest.mark.parametrize("bias", [True, False])
def test_hdc_matches_naive(gen, bias):
    x = _rand(2, 3, 7, 6, gen=gen)
    dws, dwbs, pws, pwbs = _hdc_params(gen, [3, 4, 4, 2], bias=bias)
    got = ops.hdc_conv(x, dws, dwbs, pws, pwbs)  # default dilations (1, 2, 5)
    assert got.shape == (2, 2, 7, 6)
    torch.testing.assert_close(got, naive_hdc(x, dws, dwbs, pws, pwbs, (1, 2, 5)),
                               rtol=1e-10, atol=1e-10)
    if not bias:
        torch.testing.assert_close(ops.hdc_conv(x, dws, None, pws, None), got)


def test_hdc_gradcheck(gen):
    x = _rand(1, 2, 5, 5, gen=gen, requires_grad=True)
    dws, dwbs, pws, pwbs = _hdc_params(gen, [2, 3, 2], requires_grad=True)
    flat = [x, *dws, *dwbs, *pws, *pwbs]

    def fn(*a):
        x_, dw, db, pw, pb = a[0], a[1:3], a[3:5], a[5:7], a[7:9]
        return ops.hdc_conv(x_, list(dw), list(db), list(pw), list(pb), dilations=(1, 2))

    assert torch.autograd.gradcheck(fn, tuple(flat))


def test_hdc_bad_args(gen):
    x = _rand(1, 3, 5, 5, gen=gen)
    dws, dwbs, pws, pwbs = _hdc_params(gen, [3, 4, 4, 2])
    with pytest.raises(ValueError, match=r"dw_weights\[1\]"):
        ops.hdc_conv(x, [dws[0], _rand(3, 1, 3, 3, gen=gen), dws[2]], dwbs, pws, pwbs)
    with pytest.raises(ValueError, match=r"pw_weights\[0\]"):
        ops.hdc_conv(x, dws, dwbs, [_rand(4, 2, gen=gen), pws[1], pws[2]], pwbs)
    with pytest.raises(ValueError, match="dw_weights"):
        ops.hdc_conv(x, dws[:2], dwbs, pws, pwbs)
    with pytest.raises(ValueError, match=r"pw_biases\[2\]"):
        ops.hdc_conv(x, dws, dwbs, pws, [pwbs[0], pwbs[1], _rand(3, gen=gen)])
    with pytest.raises(ValueError, match="x"):
        ops.hdc_conv(x[0], dws, dwbs, pws, pwbs)
    with pytest.raises(ValueError, match="dilations"):
        ops.hdc_conv(x, dws, dwbs, pws, pwbs, dilations=(1, 0, 2))


# --------------------------------------------------------------------------- dispatch
def test_flags_and_env(monkeypatch):
    assert isinstance(ops.HAS_CUDA_OPS, bool)
    assert ops.HAS_CUDA_OPS or isinstance(ops.CUDA_OPS_ERROR, str)
    monkeypatch.setenv("MTLKIT_KERNELS", "0")
    assert ops.kernels_enabled() is False


def test_mixed_dtypes_are_promoted(gen):
    q = _rand(1, 2, 4, gen=gen).float()
    feats = _rand(1, 1, 3, 2, 2, gen=gen)
    w = _rand(4, 3, gen=gen).float()
    out = ops.bfe_attention(q, feats, w, w, pool=2, heads=1)
    assert out.dtype == DT


def test_autocast_dtype_cpu(gen):
    q, k, v = (_rand(1, 2, 3, 4, gen=gen).float() for _ in range(3))
    mw = _rand(1, 2, gen=gen).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.tpp_attention(q, k, v, mw)
    assert out.dtype in (torch.bfloat16, torch.float32)
    torch.testing.assert_close(out.float(), ops.tpp_attention(q, k, v, mw), atol=0.05, rtol=0.05)
