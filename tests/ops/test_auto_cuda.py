"""Implementations and ``auto`` on a GPU (issue 15). Marked ``cuda``: skipped without one.

Every implementation usable on the GPU against the float64 restatements of OPS.md
(test_implementations.py), float32 and bfloat16, forward and every input gradient; ``auto``
with the real timer (CUDA events); the static table; an explicit ``cuda_tc`` on a problem it
declines; no timing under CUDA graph capture or ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch

import mtlkit.ops as ops
from mtlkit.ops import dispatch, impls, tuning
from tests.ops.conftest import FakeTimer
from tests.ops.test_implementations import (
    bfe_inputs,
    eq_bfe,
    eq_hdc,
    eq_ifb,
    eq_tpp,
    hdc_inputs,
    ifb_inputs,
    leaves,
    tpp_inputs,
)

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("fresh_tuning")]


def _to(args, dtype, device="cuda"):
    def c(a):
        if isinstance(a, torch.Tensor):
            return a.detach().to(device=device, dtype=dtype).requires_grad_(a.requires_grad)
        if isinstance(a, (list, tuple)):
            return [c(t) for t in a]
        return a

    return [c(a) for a in args]


def _norm_err(x, truth):
    x, truth = x.double(), truth.double()
    return ((x - truth).norm() / truth.norm().clamp_min(1e-30)).item()


def _run(op, impl, args, kwargs, g_out):
    with ops.use(**{op: impl}), dispatch.recording() as log:
        out = getattr(ops, op)(*args, **kwargs)
    grads = torch.autograd.grad(out, leaves(args), g_out.to(out.dtype), allow_unused=True)
    return out, grads, {r.impl for r in log}


CASES = {
    "bfe_attention": (eq_bfe, lambda g: bfe_inputs((2, 77, 3, 16, 12, 20, 64, 2, 4), g, "both")),
    "tpp_attention": (eq_tpp, lambda g: tpp_inputs((2, 4, 50, 32, 32, 4), g)),
    "ifb": (eq_ifb, lambda g: ifb_inputs((2, 70, 16, 6, "C", True), g)),
    "hdc_conv": (eq_hdc, lambda g: hdc_inputs((2, [16, 32, 16], 15, 19, (1, 2, 5)), g)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", sorted(CASES))
def test_every_gpu_implementation_vs_float64(op, dtype):
    truth_fn, make = CASES[op]
    args64, kwargs = make(torch.Generator().manual_seed(0))
    args64 = _to(args64, torch.float64)
    want = truth_fn(*args64, **kwargs)
    g_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).cuda().double()
    want_grads = torch.autograd.grad(want, leaves(args64), g_out, allow_unused=True)
    args = _to(args64, dtype)
    _, ref_grads, _ = _run(op, "reference", args, kwargs, g_out)
    ref_out = getattr(ops, op)
    with ops.use(**{op: "reference"}):
        ref_out = ref_out(*args, **kwargs)
    for impl in ops.implementations(op, device="cuda"):
        if impls.get(op, impl).declines(*args, **kwargs):
            continue
        out, grads, ran = _run(op, impl, args, kwargs, g_out)
        assert ran == {impl} and out.dtype == dtype
        pairs = [(out, ref_out, want)] + list(zip(grads, ref_grads, want_grads, strict=True))
        for got, ref, truth in pairs:
            if truth is None or truth.norm() <= 1e-9 * want.norm():
                continue  # zero in exact arithmetic (a bias under softmax)
            if dtype == torch.float32:
                assert _norm_err(got, truth) < 2e-3, (op, impl)
            else:
                assert _norm_err(got, truth) <= 3 * _norm_err(ref, truth) + 5e-3, (op, impl)


@pytest.mark.parametrize("grad", [True, False])
def test_auto_measures_with_cuda_events_and_matches_reference(grad, fresh_tuning):
    args, kwargs = bfe_inputs((8, 1200, 4, 64, 60, 80, 128, 2, 4), torch.Generator()
                              .manual_seed(0), "both")
    args = _to(args, torch.bfloat16)
    for a in leaves(args):
        a.requires_grad_(grad)
    with dispatch.recording() as log:
        out = ops.bfe_attention(*args, **kwargs)
    (d,) = tuning.decisions().values()
    assert d.source == "measured" and " sm_" in d.device
    usable = [n for n in ops.implementations("bfe_attention", device="cuda")
              if not impls.get("bfe_attention", n).declines(*args, **kwargs)]
    assert {"reference", "sdpa"} <= set(d.times_ms) <= set(usable)
    assert all(n in d.times_ms or n in d.notes for n in usable)  # timed, or why not
    assert {r.impl for r in log} == {d.choice}
    with ops.use(bfe_attention="reference"):
        ref = ops.bfe_attention(*args, **kwargs)
    assert _norm_err(out, ref) < 2e-2
    assert fresh_tuning.exists()


def test_static_table_on_a_gpu(monkeypatch):
    monkeypatch.setenv("MTLKIT_TUNE", "0")
    g = torch.Generator().manual_seed(0)
    with tuning.use_timer(FakeTimer(check=lambda: pytest.fail("measured"))), \
            dispatch.recording() as log:
        a, kw = bfe_inputs((2, 9, 2, 8, 4, 4, 32, 2, 2), g, "both")
        ops.bfe_attention(*_to(a, torch.bfloat16), **kw)
        a, kw = ifb_inputs((2, 20, 8, 3, "C", True), g)
        ops.ifb(*_to(a, torch.float32), **kw)
        a, kw = hdc_inputs((1, [8, 8], 6, 7, (1,)), g)
        ops.hdc_conv(*_to(a, torch.bfloat16), **kw)
        ops.hdc_conv(*_to(a, torch.float32), **kw)
    ran = {(r.op, r.dtype): r.impl for r in log}
    kernels = ops.kernels_enabled()
    assert ran[("bfe_attention", "bfloat16")] == "sdpa"
    assert ran[("ifb", "float32")] == ("cuda" if kernels else "reference")
    assert ran[("hdc_conv", "bfloat16")] == ("cuda" if kernels else "reference")
    assert ran[("hdc_conv", "float32")] == "reference"


def test_explicit_cuda_tc_on_float32_warns_and_runs_cuda():
    if "cuda_tc" not in ops.implementations("bfe_attention", device="cuda"):
        pytest.skip("no mtlkit kernels here")
    args, kw = bfe_inputs((1, 20, 2, 8, 4, 4, 32, 2, 2), torch.Generator().manual_seed(0),
                          "both")
    args = _to(args, torch.float32)
    with ops.use(bfe_attention="cuda_tc"), dispatch.recording() as log, \
            pytest.warns(RuntimeWarning, match="'cuda_tc'.*float32.*running 'cuda'"):
        ops.bfe_attention(*args, **kw)
    assert {r.impl for r in log} == {"cuda"}


def test_no_timing_under_cuda_graph_capture():
    never = FakeTimer(check=lambda: pytest.fail("measured while capturing"))
    q = torch.randn(2, 3, 64, 32, device="cuda")
    mw = torch.randn(1, 3, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), ops.use(tpp_attention="sdpa"):  # warm-up, nothing measured
        ops.tpp_attention(q, q, q, mw)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with tuning.use_timer(never), dispatch.recording() as log, torch.cuda.graph(graph):
        out = ops.tpp_attention(q, q, q, mw)
    graph.replay()
    torch.cuda.synchronize()
    assert {(r.impl, r.source) for r in log} == {("sdpa", "auto: static")}
    with ops.use(tpp_attention="sdpa"):
        torch.testing.assert_close(out, ops.tpp_attention(q, q, q, mw))


def test_no_timing_while_inductor_compiles():
    def not_compiling() -> None:
        assert not torch.compiler.is_compiling()

    timer = FakeTimer({"reference": 2.0, "sdpa": 1.0}, check=not_compiling)
    q = torch.randn(2, 3, 64, 32, device="cuda", requires_grad=True)
    mw = torch.randn(3, 3, device="cuda")

    def f(x):
        return ops.tpp_attention(x, x, x, mw).sum()

    with tuning.use_timer(timer):
        out = torch.compile(f)(q)
        out.backward()
    assert q.grad is not None and timer.calls
    torch.testing.assert_close(out, f(q), rtol=1e-4, atol=1e-4)
