"""CPU checks of the bfe_attention benchmark plumbing (mtlkit.profiling).

The "pytorch best" composition (pool + cat + linear + SDPA) must compute the BFCI eq. 1-4 op
exactly like the reference, and the profiler must run on the CPU without a GPU.
"""

from __future__ import annotations

import os

import torch

from mtlkit import profiling
from mtlkit.ops import reference


def test_sdpa_composition_matches_reference():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 3, 5, 6, 4, generator=g, dtype=torch.float64)
    kw, vw = (torch.randn(12, 5, generator=g, dtype=torch.float64) for _ in range(2))
    kb, vb = (torch.randn(12, generator=g, dtype=torch.float64) for _ in range(2))
    for bias in ((kb, vb), (None, None)):
        want = reference.bfe_attention(q, feats, kw, vw, *bias, pool=2, heads=3)
        got = profiling.bfe_sdpa(q, feats, kw, vw, *bias, pool=2, heads=3)
        torch.testing.assert_close(got, want)


def test_profile_cpu_small():
    rows = profiling.profile_kernel("bfe_attention", dtype="fp32", backward=True,
                                    shape="small", device="cpu", warmup=0, repeats=1)
    by = {r.impl: r for r in rows}
    assert set(by) == {"cuda kernel", "cuda kernel (tensor cores)", "pytorch reference",
                       "pytorch best"}
    assert by["cuda kernel"].median_ms is None and "GPU" in by["cuda kernel"].note
    for name in ("pytorch reference", "pytorch best"):
        assert by[name].median_ms > 0 and by[name].max_rel_err < 1e-5


def test_implementation_environment_is_set_and_restored(monkeypatch):
    """An Impl's env (the tensor-core row sets MTLKIT_ATTN_CORE=tc) holds only while it runs."""
    bench = profiling.benches()["bfe_attention"]
    tc = next(i for i in bench.impls if i.name == "cuda kernel (tensor cores)")
    assert tc.env == {"MTLKIT_ATTN_CORE": "tc"}
    monkeypatch.setenv("MTLKIT_ATTN_CORE", "simt")
    monkeypatch.delenv("MTLKIT_PROFILE_TEST", raising=False)
    with profiling._environment({"MTLKIT_ATTN_CORE": "tc", "MTLKIT_PROFILE_TEST": "1"}):
        assert os.environ["MTLKIT_ATTN_CORE"] == "tc"
        assert os.environ["MTLKIT_PROFILE_TEST"] == "1"
    assert os.environ["MTLKIT_ATTN_CORE"] == "simt"
    assert "MTLKIT_PROFILE_TEST" not in os.environ
