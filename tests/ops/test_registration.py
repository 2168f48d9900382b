"""Registration of the compiled ops in ``torch.ops.mtlkit`` (needs ``mtlkit._C``, not a GPU).

Skipped when the extension is not built, unless ``MTLKIT_REQUIRE_EXT=1`` (then it fails). Checks,
for every op of OPS.md, that the forward and backward schemas exist, have CUDA kernels, fake
(meta) kernels that produce the right shapes, and an autograd kernel on the forward.
"""

from __future__ import annotations

import os

import pytest
import torch

try:
    import mtlkit._C  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the build
    if os.environ.get("MTLKIT_REQUIRE_EXT") == "1":
        raise
    pytest.skip(f"mtlkit._C is not built ({exc})", allow_module_level=True)

import mtlkit.ops as ops  # noqa: E402  (registers fakes and autograd)

FIXED = {
    "bfe_attention": "bfe_attention(Tensor q, Tensor feats, Tensor k_weight, Tensor v_weight, "
                     "Tensor? k_bias, Tensor? v_bias, int pool, int heads, "
                     "str core=\"simt\") -> (Tensor, Tensor)",
    "bfe_attention_backward": None,
    "tpp_attention": "tpp_attention(Tensor q, Tensor k, Tensor v, Tensor mix_weight, "
                     "Tensor? mix_bias, str core=\"simt\") -> (Tensor, Tensor)",
    "tpp_attention_backward": None,
}
# Ops of the kernels-II worker (csrc/ifb.cu, csrc/hdc_conv.cu): names start with these prefixes.
PREFIXES = ("ifb", "hdc")


def _mtlkit_ops() -> list[str]:
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("mtlkit::"))


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mtlkit::{op}", key)


def test_extension_flag():
    assert ops.HAS_CUDA_OPS and ops.CUDA_OPS_ERROR is None
    assert ops.GLUE_ERRORS == {}  # e.g. an extension built from older sources


@pytest.mark.parametrize("name,arg,default", [
    ("bfe_attention", "core", "simt"), ("bfe_attention_backward", "core", "simt"),
    ("tpp_attention", "core", "simt"), ("tpp_attention_backward", "core", "simt"),
    ("hdc_stage", "depthwise", "pixel"), ("hdc_stage_backward", "depthwise", "pixel"),
])
def test_kernel_variants_are_schema_arguments(name, arg, default):
    """The kernel variants (implementations cuda / cuda_tc, cuda / cuda_band) are arguments of
    the ops, last and defaulted, not environment variables read in C++."""
    schema = getattr(torch.ops.mtlkit, name).default._schema
    last = schema.arguments[-1]
    assert last.name == arg and str(last.type) == "str" and last.default_value == default


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_ops_registered(name):
    assert name in _mtlkit_ops()
    op = getattr(torch.ops.mtlkit, name).default
    if FIXED[name] is not None:
        assert str(op._schema) == f"mtlkit::{FIXED[name]}"
    assert _has_kernel(name, "CUDA")
    if not name.endswith("_backward"):
        assert _has_kernel(name, "Autograd") or _has_kernel(name, "AutogradCUDA")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefixed_ops_have_backward(prefix):
    names = [n for n in _mtlkit_ops() if n.startswith(prefix)]
    forwards = [n for n in names if not n.endswith("_backward")]
    assert forwards, f"no torch.ops.mtlkit op starting with {prefix!r}"
    for f in forwards:
        assert f"{f}_backward" in names
        assert _has_kernel(f, "CUDA") and _has_kernel(f"{f}_backward", "CUDA")
        assert _has_kernel(f, "Autograd") or _has_kernel(f, "AutogradCUDA")


def test_bfe_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 7, 12)
        feats = torch.empty(2, 3, 5, 8, 4)
        w = torch.empty(12, 5)
        b = torch.empty(12)
        out, lse = torch.ops.mtlkit.bfe_attention(q, feats, w, w, b, None, 2, 3)
        assert out.shape == (2, 7, 12) and lse.shape == (2, 3, 7)
        assert lse.dtype == torch.float32
        grads = torch.ops.mtlkit.bfe_attention_backward(out, q, feats, w, w, b, None, out, lse,
                                                        2, 3)
        assert [g.shape for g in grads] == [q.shape, feats.shape, w.shape, w.shape, (12,),
                                            (12,)]
        out, lse = torch.ops.mtlkit.bfe_attention(q, feats, w, w, b, None, 2, 3, "tc")
        assert out.shape == (2, 7, 12) and lse.shape == (2, 3, 7)


@pytest.mark.parametrize("M", [1, 3])
def test_tpp_fake_shapes(M):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 3, 9, 4, dtype=torch.bfloat16)
        v = torch.empty(2, 3, 9, 5, dtype=torch.bfloat16)
        mw = torch.empty(M, 3, dtype=torch.bfloat16)
        out, lse = torch.ops.mtlkit.tpp_attention(q, q, v, mw, None)
        assert out.shape == v.shape and out.dtype == torch.bfloat16
        assert lse.shape == (2, M, 9) and lse.dtype == torch.float32
        grads = torch.ops.mtlkit.tpp_attention_backward(out, q, q, v, mw, out, lse)
        assert [g.shape for g in grads] == [q.shape, q.shape, v.shape, mw.shape]


def test_opcheck_on_meta_tensors():
    """Schema, autograd registration, fake kernels and AOT dispatch, without a GPU."""
    kw = dict(device="meta", requires_grad=True)
    q, feats = torch.randn(2, 7, 12, **kw), torch.randn(2, 3, 5, 8, 4, **kw)
    w, b = torch.randn(12, 5, **kw), torch.randn(12, **kw)
    torch.library.opcheck(torch.ops.mtlkit.bfe_attention.default,
                          (q, feats, w, w, b, None, 2, 3))
    qt, vt = torch.randn(2, 3, 9, 4, **kw), torch.randn(2, 3, 9, 5, **kw)
    for M in (1, 3):
        mw, mb = torch.randn(M, 3, **kw), torch.randn(M, **kw)
        torch.library.opcheck(torch.ops.mtlkit.tpp_attention.default, (qt, qt, vt, mw, mb))
        torch.library.opcheck(torch.ops.mtlkit.tpp_attention.default,
                              (qt, qt, vt, mw, mb, "tc"))
    torch.library.opcheck(torch.ops.mtlkit.bfe_attention.default,
                          (q, feats, w, w, b, None, 2, 3, "tc"))


@pytest.mark.parametrize("core", ["simt", "tc"])  # (an id "cuda" would mark it a GPU test)
def test_core_reaches_the_backward_on_meta(core, monkeypatch):
    """The forward's core is saved for the backward (autograd wiring, meta tensors)."""
    impl = {"simt": "cuda", "tc": "cuda_tc"}[core]
    import mtlkit.ops.bfe as bfe_glue
    import mtlkit.ops.tpp as tpp_glue

    seen = []
    real = torch.ops.mtlkit.bfe_attention_backward

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(torch.ops.mtlkit, "bfe_attention_backward", spy)
    kw = dict(device="meta", requires_grad=True)
    q, feats = torch.randn(2, 7, 32, **kw), torch.randn(2, 3, 5, 8, 4, **kw)
    w = torch.randn(32, 5, **kw)
    fn = getattr(bfe_glue, "bfe_attention_" + impl)
    fn(q, feats, w, w, None, None, pool=2, heads=2).sum().backward()
    assert seen == [core] and q.grad.shape == q.shape
    qt, vt = torch.randn(2, 3, 9, 16, **kw), torch.randn(2, 3, 9, 16, **kw)
    mw = torch.randn(3, 3, **kw)
    getattr(tpp_glue, "tpp_attention_" + impl)(qt, qt, vt, mw).sum().backward()
    assert qt.grad.shape == qt.shape and mw.grad.shape == mw.shape
