"""benchmarks/bench_ops.py on the CPU: per-op shape presets, the issue target shapes, JSON out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mtlkit import profiling

ROOT = Path(__file__).resolve().parents[1]

# The performance targets of the kernel issues, by op (the presets must stay in the profiler).
TARGETS = {
    "bfe_attention": ["b8_60x80_l2", "b8_60x80_l4", "b8_64x80_l8", "b8_64x64_t5_l2"],
    "tpp_attention": ["b16_n300_d128", "b16_n1200_d64", "b16_n1200_d64_mt"],
    "ifb": ["b16_n1200_c64", "b16_n1200_c256", "b16_n4800_c64", "b16_n4800_c256"],
    "hdc_conv": ["b8_c256_60x80", "b8_c256_120x160"],
}


def _bench_main():
    spec = importlib.util.spec_from_file_location("bench_ops", ROOT / "benchmarks" / "bench_ops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize("kernel", sorted(TARGETS))
def test_issue_target_presets(kernel):
    shapes = profiling.benches()[kernel].shapes
    for name in TARGETS[kernel]:
        assert name in shapes, f"{kernel} lost its target preset {name}"
    if kernel == "bfe_attention":  # the op needs H % pool == W % pool == 0
        for name in TARGETS[kernel]:
            d = shapes[name]
            assert d["H"] % d["pool"] == 0 and d["W"] % d["pool"] == 0, name


def test_bench_ops_skips_presets_of_other_ops(tmp_path):
    """A shape list naming several ops' presets runs each op only on its own ones."""
    out = tmp_path / "bench.json"
    rc = _bench_main()(["--kernels", "ifb,tpp_attention", "--shapes", "small,b8_60x80_l2",
                        "--dtypes", "fp32", "--forward-only", "--repeats", "2", "--warmup", "1",
                        "--out", str(out)])
    assert rc in (0, None)
    rows = json.loads(out.read_text())["results"]
    assert {(r["kernel"], r["shape"]) for r in rows} == {("ifb", "small"),
                                                          ("tpp_attention", "small")}
    ref = [r for r in rows if r["impl"] == "reference"]
    assert ref and all(r["median_ms"] > 0 and r["max_rel_err"] < 1e-5 for r in ref)
    # one row per implementation name, the auto choice marked once per table
    tpp = [r["impl"] for r in rows if r["kernel"] == "tpp_attention"]
    assert tpp == ["reference", "sdpa", "cuda", "cuda_tc"]
    assert sum(r["auto"] for r in rows if r["kernel"] == "tpp_attention") == 1
