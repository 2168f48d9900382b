"""The depthwise kernels of hdc_conv's backward (csrc/hdc_depthwise.cuh) run on the CPU.

The emulator (``_emu.py``) runs the pixel kernels (checked on an H100) and the band kernels
(``MTLKIT_HDC_DW=band``, not yet run on a GPU) with hdc_conv.cu's launch geometry, including
band plans that need the opt-in shared memory and the fallback when no band fits. They are
compared with float64 ``conv2d`` and its autograd (BFCI eq. 7: 3x3 depthwise, dilation d,
zero padding d), and band with pixel, which must agree bit for bit on y and gx (same taps in the
same order).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from ._emu import emulator, options

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fiber emulation uses glibc ucontext"
)

# (B, C, H, W, dilation), the band cases of test_hdc_cuda.py (geometry notes there)
CASES = [
    (2, 7, 13, 29, 1),
    (2, 7, 13, 29, 3),
    (2, 3, 13, 29, 20),
    (2, 3, 13, 29, 100),
    (1, 3, 1, 1, 1),
    (2, 2, 45, 50, 5),
    (1, 3, 60, 80, 2),
    (1, 1, 9, 1900, 1),
    (1, 1, 5, 3000, 1),
    (1, 1, 4, 3000, 5),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# max|x - x64| / max|x64| bounds for y and gx (one rounding to the dtype) and the weight/bias
# gradients (float32 sums of rounded products)
TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1.5e-3}


@pytest.fixture(scope="module")
def emu():
    return emulator()


def inputs(case: tuple, dtype: torch.dtype, misaligned: bool = False):
    B, C, H, W, d = case
    gen = torch.Generator().manual_seed(B * 1000 + C * 100 + H + W + d)
    size = B * C * H * W

    def make(n: int) -> torch.Tensor:
        t = torch.randn(n + 2, generator=gen).to(dtype)
        return t[2:] if misaligned else t[:n]  # 2 elements past a 16-byte boundary: no vectors

    x, gy = make(size).view(B, C, H, W), make(size).view(B, C, H, W)
    w, b = torch.randn(C, 9, generator=gen).to(dtype), torch.randn(C, generator=gen).to(dtype)
    return x, gy, w, b, min(d, max(H, W, 1))  # hdc_conv.cu's effective_dilation


def reference(x, gy, w, b, d):
    """float64 y, gx, d dw_w (C, 9), d dw_b (C,) of sum(y * gy)."""
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    C = x.shape[1]
    y = F.conv2d(x64, w64.view(C, 1, 3, 3), b64, padding=d, dilation=d, groups=C)
    (y * gy.double()).sum().backward()
    return y.detach(), x64.grad, w64.grad, b64.grad


def run(emu, x, gy, w, b, d, band: bool, mode: str = "lockstep"):
    opt = options(mode)
    y = emu.hdc_dw(x, w, b, d, band, opt)
    gx, part = emu.hdc_grad_x(gy, x, w, d, band, opt)
    dws = part.sum(0)
    return y, gx, dws[:, :9], dws[:, 9]


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("variant", ["pixel", "band", "band_greedy"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_depthwise_kernels_match_float64(emu, case: tuple, dtype: str, variant: str) -> None:
    x, gy, w, b, d = inputs(case, DTYPES[dtype])
    mode = "greedy" if variant == "band_greedy" else "lockstep"
    got = run(emu, x, gy, w, b, d, band=variant != "pixel", mode=mode)
    ref = reference(x, gy, w, b, d)
    errs = {n: rel(g, r) for n, g, r in zip(["y", "gx", "dw", "db"], got, ref, strict=True)}
    bad = {n: e for n, e in errs.items() if not e <= TOL[DTYPES[dtype]]}
    assert not bad, f"{case} {dtype} {variant}: {bad} (all {errs})"


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_band_equals_pixel(emu, case: tuple, misaligned: bool) -> None:
    """y and gx bit for bit (bf16: every rounding shows); the weight sums in another order."""
    x, gy, w, b, d = inputs(case, torch.bfloat16, misaligned)
    pixel = run(emu, x, gy, w, b, d, band=False)
    band = run(emu, x, gy, w, b, d, band=True, mode="greedy")
    assert torch.equal(pixel[0], band[0]) and torch.equal(pixel[1], band[1])
    for p, q in zip(pixel[2:], band[2:], strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5)
