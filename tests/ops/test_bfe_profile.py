"""CPU checks of the bfe_attention benchmark plumbing (mtlkit.profiling).

The ``sdpa`` implementation (pool + fused K/V projection + SDPA) must compute the BFCI eq. 1-4
op exactly like the reference, and the profiler must run on the CPU without a GPU, with one row
per implementation name and the ``auto`` choice marked.
"""

from __future__ import annotations

import torch

from mtlkit import profiling
from mtlkit.ops import compositions, reference


def test_sdpa_composition_matches_reference():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 3, 5, 6, 4, generator=g, dtype=torch.float64)
    kw, vw = (torch.randn(12, 5, generator=g, dtype=torch.float64) for _ in range(2))
    kb, vb = (torch.randn(12, generator=g, dtype=torch.float64) for _ in range(2))
    for bias in ((kb, vb), (None, None), (kb, None), (None, vb)):
        want = reference.bfe_attention(q, feats, kw, vw, *bias, pool=2, heads=3)
        got = compositions.bfe_sdpa(q, feats, kw, vw, *bias, pool=2, heads=3)
        torch.testing.assert_close(got, want)


def test_profile_cpu_small():
    rows = profiling.profile_kernel("bfe_attention", dtype="fp32", backward=True,
                                    shape="small", device="cpu", warmup=0, repeats=1)
    by = {r.impl: r for r in rows}
    assert list(by) == ["reference", "sdpa", "cuda", "cuda_tc"]
    for name in ("cuda", "cuda_tc"):
        assert by[name].median_ms is None and "GPU" in by[name].note
    for name in ("reference", "sdpa"):
        assert by[name].median_ms > 0 and by[name].max_rel_err < 1e-5
    assert sum(r.auto for r in rows) == 1 and (by["reference"].auto or by["sdpa"].auto)
    best = min(by["reference"].median_ms, by["sdpa"].median_ms)
    assert by["sdpa"].speedup_vs_best_pytorch == best / by["sdpa"].median_ms


def test_results_table_is_plain_and_uncut():
    """Long implementation names and notes are printed whole, whatever the terminal width."""
    rows = profiling.profile_kernel("bfe_attention", dtype="fp32", shape="small", device="cpu",
                                    warmup=0, repeats=1)
    rows[0].note = "a deliberately long note " * 8
    text = profiling.results_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("bfe_attention (small, fp32, fwd) on cpu")
    assert rows[0].note.strip() in text
    assert "<- auto" in text and "cuda_tc" in text
    header, rule = lines[1], lines[2]
    assert header.split()[:2] == ["implementation", "auto"] and set(rule) <= {"-", " "}
