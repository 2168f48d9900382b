"""The tensor-core attention kernels (csrc/attention_tc_kernels.cuh) run on the CPU.

The emulator (``_emu.py``) compiles the real kernel source as C++ against a CPU emulation of the
CUDA pieces it uses (threads as fibers, ``__syncthreads``, warp shuffles, ``cp.async``, ``ldmatrix``
and ``mma.sync.m16n8k16`` as the PTX ISA defines them), with the launch geometry of
``attention_tc.cu``. Each case builds an ``AttnProblem`` in the layouts that bfe_attention.cu and
tpp_attention.cu build, runs the forward and the three backward kernels, and compares with a
float64 restatement of BFCI eq. 3-6 (softmax attention over gathered part layouts; autograd for
the gradients). This checks fragment layouts, tile indexing, remainders, output groups and
synchronisation without a GPU; it says nothing about speed, and the emulation is not the
hardware (see tests/ops/emu/cuda_emu.h for what it models).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import pytest
import torch

from ._emu import MODES, emulator, options

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fiber emulation uses glibc ucontext"
)


@pytest.fixture(scope="module")
def emu():
    return emulator()


Layout = tuple[int, int, int, int, int, int]  # batch, map, part, row strides; parts; part_dim


@dataclass
class Problem:
    """An AttnProblem (csrc/attention_core.h) over flat storages q, k, v (16-bit)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    lq: Layout
    lk: Layout
    lv: Layout
    lo: Layout  # out / grad_out (nq rows, the parts of v)
    o_shape: tuple[int, ...]
    batch: int
    maps: int
    nq: int
    nk: int
    weight: torch.Tensor | None
    scale: float
    shared_qk: bool


def gather_index(lay: Layout, batch: int, maps: int, rows: int) -> torch.Tensor:
    """Flat element index of (b, g, row, c) for c < parts * part_dim (attention_core.h)."""
    bs, ms, ps, rs, parts, pd = lay
    b = torch.arange(batch).view(-1, 1, 1, 1)
    g = torch.arange(maps).view(1, -1, 1, 1)
    r = torch.arange(rows).view(1, 1, -1, 1)
    c = torch.arange(parts * pd).view(1, 1, 1, -1)
    return b * bs + g * ms + (c // pd) * ps + r * rs + c % pd


def gather(flat: torch.Tensor, lay: Layout, p: Problem, rows: int) -> torch.Tensor:
    return flat.reshape(-1)[gather_index(lay, p.batch, p.maps, rows)]


def reference(p: Problem, dout: torch.Tensor):
    """float64 out (v's storage layout), lse (batch, maps, nq) and grads of sum(out * dout)."""
    q, k, v = (t.detach().double().requires_grad_() for t in (p.q, p.k, p.v))
    w = None if p.weight is None else p.weight.detach().double().requires_grad_()
    Q, K, V = gather(q, p.lq, p, p.nq), gather(k, p.lk, p, p.nk), gather(v, p.lv, p, p.nk)
    if w is not None:
        pd = p.lq[5]
        Q = Q * w.repeat_interleave(pd, dim=1)[None, :, None, :]  # BFCI eq. 6 folded
    s = p.scale * Q @ K.transpose(-1, -2)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.softmax(s, dim=-1) @ V
    idx = gather_index(p.lo, p.batch, p.maps, p.nq)
    dO = dout.reshape(-1)[idx].double()
    (out * dO).sum().backward()
    flat = torch.zeros(math.prod(p.o_shape), dtype=torch.float64)
    flat[idx.reshape(-1)] = out.detach().reshape(-1)
    return flat.view(p.o_shape), lse.detach(), q.grad, k.grad, v.grad, None if w is None else w.grad


def run_emulated(emu, p: Problem, dout: torch.Tensor, mode: str = "lockstep", seed: int = 1):
    """The forward and the three backward kernels, emulated in `mode` with thread order `seed`."""
    opt = options(mode, seed)
    out = torch.empty(p.o_shape, dtype=p.v.dtype)
    lse = torch.empty(p.batch, p.maps, p.nq)
    ops = [emu.Operand(t, list(lay)) for t, lay in ((p.q, p.lq), (p.k, p.lk), (p.v, p.lv))]
    common = (p.batch, p.maps, p.nq, p.nk, p.weight, p.scale, p.shared_qk)
    emu.tc_forward(*ops, emu.Operand(out, list(p.lo)), *common, lse, opt)
    # Drow = rowsum(dout * out) per map, from the kernel's own output as the op computes it
    idx = gather_index(p.lo, p.batch, p.maps, p.nq)
    drow = (dout.reshape(-1)[idx].float() * out.reshape(-1)[idx].float()).sum(-1).contiguous()
    dq, dk, dv = (torch.full(t.shape, float("nan")) for t in (p.q, p.k, p.v))
    dw = None if p.weight is None else torch.zeros_like(p.weight)
    emu.tc_backward(*ops, emu.Operand(dout, list(p.lo)), *common, lse, drow, dq, dk, dv, dw, opt)
    return out, lse, dq, dk, dv, dw


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def bfe_problem(dtype, B, heads, D, nq, nk, gen) -> Problem:
    """bfe_attention.cu's problem: q (B, Nq, E), K, V (B, Nk, E), one D-wide part per head."""
    E = heads * D
    q, k, v = (torch.randn(B, n, E, generator=gen).to(dtype) for n in (nq, nk, nk))
    lay = lambda n: (n * E, D, 0, E, 1, D)  # noqa: E731
    return Problem(q, k, v, lay(nq), lay(nk), lay(nk), lay(nq), (B, nq, E), B, heads, nq, nk,
                   None, 1 / math.sqrt(D), False)


def tpp_problem(dtype, B, T, M, N, D, Dv, gen) -> Problem:
    """tpp_attention.cu's problem: q, k (B, T, N, D) shared by the M maps, v (B, T, N, Dv)."""
    q, k = (torch.randn(B, T, N, D, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(B, T, N, Dv, generator=gen).to(dtype)
    lqk = (T * N * D, 0, N * D, D, T, D)
    lv = (T * N * Dv, N * Dv, 0, Dv, 1, Dv) if M == T else (T * N * Dv, 0, N * Dv, Dv, T, Dv)
    w = torch.randn(M, T, generator=gen)
    return Problem(q, k, v, lqk, lqk, lv, lv, tuple(v.shape), B, M, N, N, w, 1 / math.sqrt(D),
                   True)


CASES = {
    # name: (builder, args) -- odd row counts exercise the zero-filled tile remainders
    "bfe_d32_nq70_nk90": (bfe_problem, dict(B=2, heads=2, D=32, nq=70, nk=90)),
    "bfe_d128_nq64_nk65": (bfe_problem, dict(B=1, heads=1, D=128, nq=64, nk=65)),
    "tpp_m1_two_groups": (tpp_problem, dict(B=1, T=3, M=1, N=40, D=16, Dv=48)),
    "tpp_m1_td128": (tpp_problem, dict(B=1, T=2, M=1, N=66, D=64, Dv=64)),
    "tpp_mt_shared_qk": (tpp_problem, dict(B=2, T=2, M=2, N=33, D=32, Dv=32)),
}
# Bounds on max|x - x64| / max|x64| (measured in this emulation: bf16 <= 3.2e-3 for out and
# q/k/v grads, 1.2e-2 for the 4-entry dweight sums; f16 <= 4.5e-4, dweight 1.5e-3): 16-bit
# operands, P and dS rounded to 16 bits before their products, float32 accumulation.
TOL = {
    torch.bfloat16: {"out": 8e-3, "lse": 1e-5, "grad": 8e-3, "dweight": 3e-2},
    torch.float16: {"out": 1.5e-3, "lse": 1e-5, "grad": 1.5e-3, "dweight": 5e-3},
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tc_kernels_match_float64(emu, case: str, dtype: torch.dtype, mode: str) -> None:
    build, args = CASES[case]
    gen = torch.Generator().manual_seed(sorted(CASES).index(case))
    p = build(dtype, gen=gen, **args)
    dout = torch.randn(p.o_shape, generator=gen).to(dtype)
    out, lse, dq, dk, dv, dw = run_emulated(emu, p, dout, mode)
    r_out, r_lse, r_dq, r_dk, r_dv, r_dw = reference(p, dout)
    tol = TOL[dtype]
    errs = {
        "out": rel(out, r_out),
        "lse": rel(lse, r_lse),
        "dq": rel(dq, r_dq),
        "dk": rel(dk, r_dk),
        "dv": rel(dv, r_dv),
    }
    if dw is not None:
        errs["dweight"] = rel(dw, r_dw)
    bad = {n: e for n, e in errs.items() if not e <= tol.get(n, tol["grad"])}
    assert not bad, f"{case} {dtype}: errors over the bound {bad} (all: {errs})"


def test_schedule_does_not_change_the_result(emu) -> None:
    """Other thread orders and modes give bit-identical results: no result depends on an
    unsynchronised order between threads (the dweight atomics are compared with a tolerance)."""
    gen = torch.Generator().manual_seed(7)
    p = tpp_problem(torch.bfloat16, B=1, T=2, M=2, N=70, D=16, Dv=16, gen=gen)
    dout = torch.randn(p.o_shape, generator=gen).to(torch.bfloat16)
    first = run_emulated(emu, p, dout, "lockstep", seed=1)
    for seed, mode in enumerate(sorted(MODES), start=2):
        again = run_emulated(emu, p, dout, mode, seed=seed)
        for a, b in zip(first[:5], again[:5], strict=True):
            assert torch.equal(a, b), mode
        torch.testing.assert_close(first[5], again[5], rtol=1e-5, atol=1e-6)
