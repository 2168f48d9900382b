"""CPU checks of the tpp_attention benchmark plumbing (mtlkit.profiling).

The folded-SDPA implementation (mix weights folded into the queries, BFCI eq. 5-6) must match the
reference for M == 1 and M == T, and the profiler must run on the CPU without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from mtlkit import profiling
from mtlkit.errors import UnknownNameError
from mtlkit.ops import compositions, reference


@pytest.mark.parametrize("M", [1, 3])
def test_folded_sdpa_matches_reference(M):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 9, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 9, 5, generator=g, dtype=torch.float64)
    mw = torch.randn(M, 3, generator=g, dtype=torch.float64)
    mb = torch.randn(M, generator=g, dtype=torch.float64)
    torch.testing.assert_close(compositions.tpp_sdpa(q, k, v, mw, mb),
                               reference.tpp_attention(q, k, v, mw, mb))


def test_profile_cpu_small_and_errors():
    rows = profiling.profile_kernel("tpp_attention", dtype="fp32", shape="small", device="cpu",
                                    warmup=0, repeats=1)
    assert [r.impl for r in rows] == ["reference", "sdpa", "cuda", "cuda_tc"]
    assert rows[3].median_ms is None and "GPU" in rows[3].note
    assert rows[0].max_rel_err < 1e-5 and rows[1].max_rel_err < 1e-5
    assert set(profiling.kernel_names()) >= {"bfe_attention", "tpp_attention", "ifb",
                                              "hdc_conv"}
    with pytest.raises(UnknownNameError):
        profiling.profile_kernel("nope")
    with pytest.raises(UnknownNameError):
        profiling.profile_kernel("tpp_attention", shape="nope", device="cpu")
