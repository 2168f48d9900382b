"""Float64 emulation of the tiled kernels of csrc/attention_core.cu (runs on the CPU).

The CUDA kernels cannot run without a GPU, so this test restates their algorithm block by block,
with the same data layouts (``PartLayout``/``AttnProblem`` of attention_core.h, filled exactly as
``make_problem`` in bfe_attention.cu and tpp_attention.cu), the same tiling (64-row blocks,
32-row inner tiles, masked tails), the online softmax of the forward and the three
FlashAttention-2 style backward kernels (dq with the mix-weight gradient, dk, dv). It checks the
math and the index arithmetic against autograd on the references (BFCI eq. 1-6); the CUDA-level
details (shared memory, barriers, shuffles) are covered by the ``cuda``-marked tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from mtlkit.ops import reference

BR, BC = 64, 32
DT = torch.float64


@dataclass
class Layout:
    batch_stride: int
    map_stride: int
    part_stride: int
    row_stride: int
    parts: int
    part_dim: int


@dataclass
class Problem:
    batch: int
    maps: int
    nq: int
    nk: int
    q: Layout
    k: Layout
    v: Layout
    o: Layout
    weight: torch.Tensor | None  # (maps, q.parts)
    scale: float
    shared_qk: bool


def _offsets(L: Layout, b: int, g: int, rows: torch.Tensor, nrows: int, cols: torch.Tensor):
    j, d = cols // L.part_dim, cols % L.part_dim
    r = rows.clamp(max=nrows - 1)
    off = (b * L.batch_stride + g * L.map_stride + j[None, :] * L.part_stride
           + r[:, None] * L.row_stride + d[None, :])
    return off, (rows < nrows)[:, None].expand_as(off)


def load(flat, L, b, g, rows, nrows, w=None, scale=1.0):
    """View<T>::load over the whole feature vector (parts concatenated), times scale * w[j]."""
    cols = torch.arange(L.parts * L.part_dim)
    off, valid = _offsets(L, b, g, rows, nrows, cols)
    x = torch.where(valid, flat[off], 0.0)
    mult = scale * (w[cols // L.part_dim] if w is not None else torch.ones(len(cols), dtype=DT))
    return x * mult[None, :]


def load_part(flat, L, b, g, rows, nrows, j):
    cols = torch.arange(L.part_dim) + j * L.part_dim
    off, valid = _offsets(L, b, g, rows, nrows, cols)
    return torch.where(valid, flat[off], 0.0)


def store_part(flat, L, b, g, rows, nrows, j, vals):
    cols = torch.arange(L.part_dim) + j * L.part_dim
    off, valid = _offsets(L, b, g, rows, nrows, cols)
    flat[off[valid]] = vals[valid]


def weight_row(p: Problem, g: int):
    return None if p.weight is None else p.weight[g]


def forward(p: Problem, qf, kf, vf):
    out = torch.zeros(p.batch * p.o.batch_stride, dtype=DT)
    lse = torch.zeros(p.batch, p.maps, p.nq, dtype=DT)
    for b in range(p.batch):
        for g in range(p.maps):
            for r0 in range(0, p.nq, BR):
                rows = torch.arange(r0, r0 + BR)
                Q = load(qf, p.q, b, g, rows, p.nq, weight_row(p, g), p.scale)
                for j in range(p.v.parts):
                    m = torch.full((BR,), -math.inf, dtype=DT)
                    l_ = torch.zeros(BR, dtype=DT)
                    acc = torch.zeros(BR, p.v.part_dim, dtype=DT)
                    for c0 in range(0, p.nk, BC):
                        cols = torch.arange(c0, c0 + BC)
                        s = Q @ load(kf, p.k, b, g, cols, p.nk).T
                        s[:, cols >= p.nk] = -math.inf
                        m_new = torch.maximum(m, s.max(1).values)
                        corr = torch.exp(m - m_new)
                        P = torch.exp(s - m_new[:, None])
                        l_ = l_ * corr + P.sum(1)
                        acc = acc * corr[:, None] + P @ load_part(vf, p.v, b, g, cols, p.nk, j)
                        m = m_new
                    store_part(out, p.o, b, g, rows, p.nq, j, acc / l_[:, None])
                    if j == 0:
                        valid = rows < p.nq
                        lse[b, g, rows[valid]] = (m + torch.log(l_))[valid]
    return out, lse


def backward(p: Problem, qf, kf, vf, dof, lse, drow):
    dq = torch.full_like(qf, math.nan)
    dk = torch.full_like(kf, math.nan)
    dv = torch.full_like(vf, math.nan)
    dw = None if p.weight is None else torch.zeros_like(p.weight)
    gmaps = 1 if p.shared_qk else p.maps
    lmaps = p.maps if p.shared_qk else 1
    for b in range(p.batch):
        for gz in range(gmaps):
            g_out = 0 if p.shared_qk else gz
            # dq kernel (rows = queries)
            for r0 in range(0, p.nq, BR):
                rows = torch.arange(r0, r0 + BR)
                valid_r = rows < p.nq
                for j in range(p.q.parts):
                    acc = torch.zeros(BR, p.q.part_dim, dtype=DT)
                    for lm in range(lmaps):
                        g = gz * lmaps + lm
                        Q = load(qf, p.q, b, g, rows, p.nq, weight_row(p, g), p.scale)
                        dO = load(dof, p.o, b, g, rows, p.nq)
                        lse_r = torch.where(valid_r, lse[b, g, rows.clamp(max=p.nq - 1)], 0.0)
                        dr = torch.where(valid_r, drow[b, g, rows.clamp(max=p.nq - 1)], 0.0)
                        gacc = torch.zeros(BR, p.q.part_dim, dtype=DT)
                        for c0 in range(0, p.nk, BC):
                            cols = torch.arange(c0, c0 + BC)
                            s = Q @ load(kf, p.k, b, g, cols, p.nk).T
                            dp = dO @ load(vf, p.v, b, g, cols, p.nk).T
                            ds = torch.exp(s - lse_r[:, None]) * (dp - dr[:, None])
                            ds[:, cols >= p.nk] = 0.0
                            gacc += ds @ load_part(kf, p.k, b, g, cols, p.nk, j)
                        G = gacc * p.scale
                        wj = 1.0 if p.weight is None else float(p.weight[g, j])
                        if dw is not None:
                            dw[g, j] += (G * load_part(qf, p.q, b, g, rows, p.nq, j)).sum()
                        acc += wj * G
                    store_part(dq, p.q, b, g_out, rows, p.nq, j, acc)
            # dk kernel (rows = keys)
            for r0 in range(0, p.nk, BR):
                rows = torch.arange(r0, r0 + BR)
                for j in range(p.k.parts):
                    acc = torch.zeros(BR, p.k.part_dim, dtype=DT)
                    for lm in range(lmaps):
                        g = gz * lmaps + lm
                        K = load(kf, p.k, b, g, rows, p.nk)
                        V = load(vf, p.v, b, g, rows, p.nk)
                        gacc = torch.zeros(BR, p.k.part_dim, dtype=DT)
                        for c0 in range(0, p.nq, BC):
                            cols = torch.arange(c0, c0 + BC)
                            valid_c = cols < p.nq
                            cc = cols.clamp(max=p.nq - 1)
                            lse_c = torch.where(valid_c, lse[b, g, cc], 0.0)
                            dr_c = torch.where(valid_c, drow[b, g, cc], 0.0)
                            s = K @ load(qf, p.q, b, g, cols, p.nq, weight_row(p, g), p.scale).T
                            dp = V @ load(dof, p.o, b, g, cols, p.nq).T
                            ds = torch.exp(s - lse_c[None, :]) * (dp - dr_c[None, :])
                            ds[:, ~valid_c] = 0.0
                            gacc += ds @ load_part(qf, p.q, b, g, cols, p.nq, j)
                        wj = 1.0 if p.weight is None else float(p.weight[g, j])
                        acc += wj * p.scale * gacc
                    store_part(dk, p.k, b, g_out, rows, p.nk, j, acc)
        # dv kernel (rows = keys, every value part belongs to one map)
        for g in range(p.maps):
            for r0 in range(0, p.nk, BR):
                rows = torch.arange(r0, r0 + BR)
                K = load(kf, p.k, b, g, rows, p.nk)
                for j in range(p.v.parts):
                    acc = torch.zeros(BR, p.v.part_dim, dtype=DT)
                    for c0 in range(0, p.nq, BC):
                        cols = torch.arange(c0, c0 + BC)
                        valid_c = cols < p.nq
                        lse_c = torch.where(valid_c, lse[b, g, cols.clamp(max=p.nq - 1)], 0.0)
                        s = K @ load(qf, p.q, b, g, cols, p.nq, weight_row(p, g), p.scale).T
                        P = torch.exp(s - lse_c[None, :])
                        P[:, ~valid_c] = 0.0
                        acc += P @ load_part(dof, p.o, b, g, cols, p.nq, j)
                    store_part(dv, p.v, b, g, rows, p.nk, j, acc)
    return dq, dk, dv, dw


# --------------------------------------------------------------------------- problem builders
def tpp_problem(q, k, v, mw) -> Problem:
    """Mirror of make_problem in csrc/tpp_attention.cu."""
    B, T, N, D = q.shape
    Dv = v.shape[-1]
    M = mw.shape[0]
    qk = Layout(T * N * D, 0, N * D, D, T, D)
    if M == T:
        vl = Layout(T * N * Dv, N * Dv, 0, Dv, 1, Dv)
    else:
        vl = Layout(T * N * Dv, 0, N * Dv, Dv, T, Dv)
    return Problem(B, M, N, N, qk, qk, vl, vl, mw, 1 / math.sqrt(D), True)


def bfe_problem(B, Nq, Nk, E, heads) -> Problem:
    """Mirror of make_problem in csrc/bfe_attention.cu."""
    D = E // heads

    def lay(rows):
        return Layout(rows * E, D, 0, E, 1, D)

    return Problem(B, heads, Nq, Nk, lay(Nq), lay(Nk), lay(Nk), lay(Nq), None, 1 / math.sqrt(D),
                   False)


@pytest.mark.parametrize("T,M,N,D,Dv", [(3, 1, 70, 5, 4), (3, 3, 45, 4, 6), (1, 1, 33, 3, 3),
                                         (2, 2, 130, 2, 3)])
def test_tpp_emulation_matches_reference(T, M, N, D, Dv):
    g = torch.Generator().manual_seed(T * 100 + N)
    B = 2
    q, k = (torch.randn(B, T, N, D, generator=g, dtype=DT, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, N, Dv, generator=g, dtype=DT, requires_grad=True)
    mw = torch.randn(M, T, generator=g, dtype=DT, requires_grad=True)
    out_ref = reference.tpp_attention(q, k, v, mw)
    grad = torch.randn(out_ref.shape, generator=g, dtype=DT)
    dq_r, dk_r, dv_r, dw_r = torch.autograd.grad(out_ref, (q, k, v, mw), grad)

    p = tpp_problem(q, k, v, mw.detach())
    qf, kf, vf = (t.detach().reshape(-1) for t in (q, k, v))
    out, lse = forward(p, qf, kf, vf)
    torch.testing.assert_close(out.view_as(out_ref), out_ref.detach())
    prod = (grad * out.view_as(out_ref)).sum(-1)
    drow = prod if M == T else prod.sum(1, keepdim=True)
    dq, dk, dv, dw = backward(p, qf, kf, vf, grad.reshape(-1), lse, drow)
    torch.testing.assert_close(dq.view_as(q), dq_r)
    torch.testing.assert_close(dk.view_as(k), dk_r)
    torch.testing.assert_close(dv.view_as(v), dv_r)
    torch.testing.assert_close(dw, dw_r)


@pytest.mark.parametrize("Nq,Nk,E,heads", [(70, 45, 12, 3), (5, 100, 8, 1), (64, 32, 6, 2)])
def test_bfe_emulation_matches_attention(Nq, Nk, E, heads):
    g = torch.Generator().manual_seed(Nq + Nk)
    B, D = 2, E // heads
    q = torch.randn(B, Nq, E, generator=g, dtype=DT, requires_grad=True)
    K = torch.randn(B, Nk, E, generator=g, dtype=DT, requires_grad=True)
    V = torch.randn(B, Nk, E, generator=g, dtype=DT, requires_grad=True)
    # BFCI eq. 3-4 on given K, V (the projections and pooling are ATen ops around the kernels)
    qh, Kh, Vh = (t.view(B, -1, heads, D).transpose(1, 2) for t in (q, K, V))
    ref = (torch.softmax(qh @ Kh.transpose(-1, -2) / math.sqrt(D), -1) @ Vh)
    ref = ref.transpose(1, 2).reshape(B, Nq, E)
    grad = torch.randn(ref.shape, generator=g, dtype=DT)
    dq_r, dK_r, dV_r = torch.autograd.grad(ref, (q, K, V), grad)

    p = bfe_problem(B, Nq, Nk, E, heads)
    qf, kf, vf = (t.detach().reshape(-1) for t in (q, K, V))
    out, lse = forward(p, qf, kf, vf)
    torch.testing.assert_close(out.view_as(ref), ref.detach())
    drow = (grad * out.view_as(ref)).view(B, Nq, heads, D).sum(-1).permute(0, 2, 1)
    dq, dK, dV, dw = backward(p, qf, kf, vf, grad.reshape(-1), lse, drow)
    assert dw is None
    torch.testing.assert_close(dq.view_as(q), dq_r)
    torch.testing.assert_close(dK.view_as(K), dK_r)
    torch.testing.assert_close(dV.view_as(V), dV_r)
