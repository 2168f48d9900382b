"""CPU tests of hdc_conv (BFCI Task Feature Refiner, paper 000, eq. 7; HDC) edge cases.

- gradcheck of the public op (reference path, float64) for dilations other than (1, 2, 5):
  single stages, dilations larger than the image, four stages, per-stage missing biases;
- closed forms (a dilation >= H and W keeps only the centre tap; the kernels' dilation clamp);
- the index math of the CUDA kernels (csrc/hdc_conv.cu: flat tap offsets with in-image masks,
  the mirrored tap 8 - t for the input gradient, per-tap weight-gradient sums, the ReLU mask
  from the stage output) restated in float64 PyTorch and compared with autograd of the
  reference, so it is checked without a GPU;
- the CUDA glue (mtlkit/ops/hdc.py): support predicate, fake kernels on meta tensors when the
  extension is built.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import mtlkit.ops as ops
from mtlkit.ops import reference

DT = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def _params(gen, chans, bias=True, requires_grad=False):
    def r(*s):
        return torch.randn(*s, generator=gen, dtype=DT).requires_grad_(requires_grad)

    S = len(chans) - 1
    dws = [r(chans[s], 1, 3, 3) for s in range(S)]
    pws = [r(chans[s + 1], chans[s]) for s in range(S)]
    dwbs = [r(chans[s]) if bias else None for s in range(S)]
    pwbs = [r(chans[s + 1]) if bias else None for s in range(S)]
    return dws, dwbs, pws, pwbs


def _gradcheck(x, dws, dwbs, pws, pwbs, dilations):
    S = len(dilations)
    leaves = [x, *dws, *[b for b in dwbs if b is not None], *pws,
              *[b for b in pwbs if b is not None]]

    def fn(*flat):
        it = iter(flat)
        x_ = next(it)
        dw = [next(it) for _ in range(S)]
        db = [None if b is None else next(it) for b in dwbs]
        pw = [next(it) for _ in range(S)]
        pb = [None if b is None else next(it) for b in pwbs]
        return ops.hdc_conv(x_, dw, db, pw, pb, dilations=dilations)

    return torch.autograd.gradcheck(fn, tuple(leaves), fast_mode=True)


# --------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("dilations,chans,hw", [
    ((3,), [2, 3], (7, 5)),           # one stage, odd sizes
    ((2, 7), [3, 2, 2], (5, 6)),      # dilation 7 > H, W: only the centre tap is inside
    ((1, 3, 1, 4), [2, 2, 3, 2, 1], (5, 6)),  # four stages, repeated dilation
    ((4,), [1, 1], (1, 1)),           # 1x1 image, one channel
])
def test_gradcheck_dilations(gen, dilations, chans, hw):
    x = torch.randn(2, chans[0], *hw, generator=gen, dtype=DT, requires_grad=True)
    dws, dwbs, pws, pwbs = _params(gen, chans, requires_grad=True)
    assert _gradcheck(x, dws, dwbs, pws, pwbs, dilations)


def test_gradcheck_mixed_missing_biases(gen):
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=DT, requires_grad=True)
    dws, dwbs, pws, pwbs = _params(gen, [2, 3, 2], requires_grad=True)
    dwbs[1] = None
    pwbs[0] = None
    assert _gradcheck(x, dws, dwbs, pws, pwbs, (2, 3))


# --------------------------------------------------------------------------- closed forms
def test_large_dilation_is_centre_tap_only(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=DT)
    dws, dwbs, pws, pwbs = _params(gen, [3, 4])
    got = ops.hdc_conv(x, dws, dwbs, pws, pwbs, dilations=(5,))
    y = x * dws[0][:, 0, 1, 1][None, :, None, None] + dwbs[0][None, :, None, None]
    want = torch.relu(torch.einsum("oc,bchw->bohw", pws[0], y) + pwbs[0][None, :, None, None])
    torch.testing.assert_close(got, want)


def test_dilation_clamp_equivalence(gen):
    """csrc/hdc_conv.cu runs min(d, max(H, W)); the op must not depend on d beyond that."""
    x = torch.randn(1, 2, 6, 9, generator=gen, dtype=DT)
    dws, dwbs, pws, pwbs = _params(gen, [2, 3])
    torch.testing.assert_close(ops.hdc_conv(x, dws, dwbs, pws, pwbs, dilations=(1000,)),
                               ops.hdc_conv(x, dws, dwbs, pws, pwbs, dilations=(9,)))
    # d = 7 < W = 9: horizontal taps still inside, vertical ones not.
    y = ops.hdc_conv(x, dws, dwbs, pws, pwbs, dilations=(7,))
    assert not torch.allclose(y, ops.hdc_conv(x, dws, dwbs, pws, pwbs, dilations=(9,)))


# --------------------------------------------------------------------------- kernel index math
def _taps(H: int, W: int, d: int):
    """(mask (9, P) bool, off (9,) flat offsets) exactly as tap_mask / tap_off in the kernel."""
    h = torch.arange(H).repeat_interleave(W)
    w = torch.arange(W).repeat(H)
    masks, offs = [], []
    for t in range(9):
        dy, dx = t // 3 - 1, t % 3 - 1
        hh, ww = h + dy * d, w + dx * d
        masks.append((hh >= 0) & (hh < H) & (ww >= 0) & (ww < W))
        offs.append(dy * d * W + dx * d)
    return torch.stack(masks), offs


def _shift(z: torch.Tensor, off: int, mask: torch.Tensor) -> torch.Tensor:
    """z[..., p + off] where mask[p], else 0 (z: (..., P))."""
    P = z.shape[-1]
    idx = (torch.arange(P) + off).clamp(0, P - 1)
    return torch.where(mask, z[..., idx], torch.zeros((), dtype=z.dtype))


def kernel_stage_math(x, dw_w, dw_b, pw_w, pw_b, d, grad_out):
    """Forward and backward of one stage with the kernels' flat-offset formulation."""
    B, Cin, H, W = x.shape
    P = H * W
    mask, off = _taps(H, W, d)
    xf = x.reshape(B, Cin, P)
    w9 = dw_w.reshape(Cin, 9)
    y = sum(w9[None, :, t, None] * _shift(xf, off[t], mask[t]) for t in range(9))
    if dw_b is not None:
        y = y + dw_b[None, :, None]
    z = torch.einsum("oc,bcp->bop", pw_w, y)
    if pw_b is not None:
        z = z + pw_b[None, :, None]
    out = torch.relu(z)
    # backward (hdc_grad_dw_kernel, hdc_grad_pw_kernel, hdc_grad_x_kernel)
    gz = grad_out.reshape(out.shape) * (out > 0)
    gy = torch.einsum("oc,bop->bcp", pw_w, gz)
    g_pw_w = torch.einsum("bop,bcp->oc", gz, y)
    g_pw_b = gz.sum((0, 2))
    gx = sum(w9[None, :, t, None] * _shift(gy, -off[t], mask[8 - t]) for t in range(9))
    g_dw = torch.stack([(gy * _shift(xf, off[t], mask[t])).sum((0, 2)) for t in range(9)], 1)
    g_dw_b = gy.sum((0, 2))
    return (out.reshape(B, -1, H, W), gx.reshape(x.shape), g_dw.reshape(Cin, 1, 3, 3), g_dw_b,
            g_pw_w, g_pw_b)


@pytest.mark.parametrize("d,hw", [(1, (5, 7)), (2, (6, 5)), (5, (11, 13)), (3, (1, 9)),
                                  (8, (4, 4))])
def test_kernel_index_math_matches_autograd(gen, d, hw):
    x = torch.randn(2, 3, *hw, generator=gen, dtype=DT, requires_grad=True)
    (dw,), (db,), (pw,), (pb,) = _params(gen, [3, 4], requires_grad=True)
    out = reference.hdc_conv(x, [dw], [db], [pw], [pb], dilations=(d,))
    g = torch.randn(out.shape, generator=gen, dtype=DT)
    want = (out, *torch.autograd.grad(out, (x, dw, db, pw, pb), g))
    got = kernel_stage_math(x.detach(), dw.detach(), db.detach(), pw.detach(), pb.detach(), d, g)
    for w, k in zip(want, got, strict=True):
        torch.testing.assert_close(k, w.detach(), rtol=1e-10, atol=1e-10)


def test_reference_stage_matches_torch_conv(gen):
    x = torch.randn(1, 4, 9, 8, generator=gen, dtype=DT)
    (dw,), (db,), (pw,), (pb,) = _params(gen, [4, 6])
    y = F.conv2d(x, dw, db, padding=3, dilation=3, groups=4)
    want = torch.relu(F.conv2d(y, pw[:, :, None, None], pb))
    got, *_ = kernel_stage_math(x, dw, db, pw, pb, 3, torch.zeros(1, 6, 9, 8, dtype=DT))
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- CUDA glue (no GPU)
def test_cuda_supported_predicate():
    glue = importlib.import_module("mtlkit.ops.hdc")

    x = torch.empty(2, 8, 16, 16)
    dws = [torch.empty(8, 1, 3, 3)]
    pws = [torch.empty(4, 8)]
    assert glue.hdc_conv_cuda_supported(x, dws, None, pws, None, dilations=(2,))
    assert not glue.hdc_conv_cuda_supported(x, dws, None, [torch.empty(70000, 8)], None,
                                            dilations=(2,))


@pytest.mark.skipif(not ops.HAS_CUDA_OPS, reason="mtlkit._C not built")
def test_fake_kernels_on_meta():
    x = torch.empty(2, 5, 7, 9, device="meta")
    dw = torch.empty(5, 1, 3, 3, device="meta")
    pw = torch.empty(6, 5, device="meta")
    out = torch.ops.mtlkit.hdc_stage(x, dw, None, pw, None, 2)
    assert out.shape == (2, 6, 7, 9)
    gx, gdw, gdb, gpw, gpb = torch.ops.mtlkit.hdc_stage_backward(out, x, out, dw, None, pw, 2)
    assert (gx.shape, gdw.shape, gdb.shape, gpw.shape, gpb.shape) == (
        x.shape, dw.shape, (5,), pw.shape, (6,))


@pytest.mark.skipif(not ops.HAS_CUDA_OPS, reason="mtlkit._C not built")
def test_autograd_wiring_on_meta():
    """hdc_conv_cuda -> mtlkit::hdc_stage chain -> register_autograd -> hdc_stage_backward."""
    glue = importlib.import_module("mtlkit.ops.hdc")

    def m(*s):
        return torch.empty(*s, device="meta", requires_grad=True)

    x = m(2, 4, 5, 6)
    dws, pws = [m(4, 1, 3, 3), m(3, 1, 3, 3)], [m(3, 4), m(2, 3)]
    dbs, pbs = [m(4), None], [None, m(2)]
    for fn in (glue.hdc_conv_cuda, glue.hdc_conv_cuda_band):  # depthwise carried to backward
        y = fn(x, dws, dbs, pws, pbs, dilations=(1, 3))
        assert y.shape == (2, 2, 5, 6)
        y.sum().backward()
        for t in (x, *dws, *pws, dbs[0], pbs[1]):
            assert t.grad is not None and t.grad.shape == t.shape
            t.grad = None


@pytest.mark.skipif(not ops.HAS_CUDA_OPS, reason="mtlkit._C not built")
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_on_meta(bias):
    """Schema, fake kernel, autograd registration and AOT dispatch (kernels need a GPU)."""

    def m(*s):
        return torch.empty(*s, device="meta", requires_grad=True)

    args = (m(2, 4, 5, 6), m(4, 1, 3, 3), m(4) if bias else None, m(3, 4), m(3) if bias else None,
            2)
    torch.library.opcheck(torch.ops.mtlkit.hdc_stage.default, args)


def test_profile_rows_include_the_band_variant():
    """`mtlkit profile --kernel hdc_conv` has a row per implementation name, among them
    `cuda_band` (skipped on a CPU), and marks the one auto picks."""
    from mtlkit import profiling

    rows = profiling.profile_kernel("hdc_conv", dtype="fp32", shape="small", device="cpu",
                                    warmup=0, repeats=1)
    by = {r.impl: r for r in rows}
    assert list(by)[:3] == ["reference", "cuda", "cuda_band"]
    band = by["cuda_band"]
    assert band.median_ms is None and "GPU" in band.note
    assert by["reference"].median_ms > 0 and by["reference"].max_rel_err < 1e-5
    assert by["reference"].auto  # the only implementation usable on a CPU
