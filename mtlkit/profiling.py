"""Timing, roofline and accuracy of the mtlkit ops (``mtlkit profile`` and ``benchmarks/``).

Every op has a :class:`KernelBench`: named shape presets, an input factory, implementations to
compare, model FLOPs / compulsory bytes, and a float64 truth. The implementations are

- ``cuda kernel``: the public op with the CUDA extension (needs a CUDA GPU and ``mtlkit._C``);
- ``pytorch reference``: :mod:`mtlkit.ops.reference` (the executable contract);
- ``pytorch best``: the fastest composition of stock PyTorch ops we know (for BFE: pool + cat +
  linear + ``F.scaled_dot_product_attention``; for TPP: mix weights folded into the queries,
  one SDPA over the concatenated task features; see :func:`bfe_sdpa` and :func:`tpp_sdpa`).

Numbers reported per implementation: median wall time over ``repeats`` runs after ``warmup``
runs (CUDA events on GPU, ``perf_counter`` on CPU), TFLOP/s from model FLOPs (recomputation in a
backward is not counted), GB/s from compulsory traffic (every input read once, every output
written once), % of roofline = ``max(flops / peak_flops, bytes / peak_bw) / time`` with the H100
SXM constants below (GPU runs only), max relative error against the float64 reference
(``max|x - x64| / max|x64|`` over the output and, with ``backward``, every input gradient that
is not zero in exact arithmetic), and peak extra device memory of one run.

Adding an op: write a function returning a :class:`KernelBench` and either call
:func:`register_bench` with it, or define ``make_bench() -> KernelBench`` in the op's glue module
``mtlkit/ops/<module>.py`` (listed in :data:`GLUE_MODULES`); such a ``make_bench`` replaces the
built-in bench of the same name when :func:`benches` first runs.
"""

from __future__ import annotations

import importlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError, UnknownNameError

# H100 SXM5 (80 GB) peak numbers from NVIDIA's H100 datasheet, dense (no sparsity):
H100_PEAK_TFLOPS = {
    torch.float32: 66.9,    # FP32 on CUDA cores (the mtlkit kernels' math for every dtype)
    torch.bfloat16: 989.4,  # BF16 tensor cores, FP32 accumulate
    torch.float16: 989.4,   # FP16 tensor cores, FP32 accumulate
}
H100_PEAK_TFLOPS_TF32 = 494.7  # TF32 tensor cores (not used by default for float32 matmuls)
H100_PEAK_GBPS = 3350.0        # HBM3 bandwidth, GB/s

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GLUE_MODULES = ("bfe", "tpp", "ifb", "hdc")


# --------------------------------------------------------------------------- data structures
@dataclass
class Impl:
    """One implementation of an op: ``run(inputs) -> output``."""

    name: str
    run: Callable[[dict[str, Any]], Tensor]
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    """Returns why this implementation cannot run on ``device`` (None when it can)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set while this implementation runs (forward and backward), e.g.
    ``MTLKIT_ATTN_CORE=tc`` for the tensor-core attention kernels."""


TENSOR_CORE_ATTENTION = {"MTLKIT_ATTN_CORE": "tc"}
"""Selects the mma.sync attention kernels (csrc/attention_tc.cu) for 16-bit problems."""


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` for the duration of the block, then restore the previous values."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class KernelBench:
    """Everything needed to profile one op."""

    name: str
    shapes: dict[str, dict[str, int]]
    make_inputs: Callable[[dict[str, int], torch.dtype, torch.device, torch.Generator],
                          dict[str, Any]]
    """Inputs as a dict: tensors (or lists of tensors) and plain keyword values."""
    impls: list[Impl]
    flops: Callable[[dict[str, int], bool], float]
    """Model FLOPs of a forward (False) or forward + backward (True)."""
    reference: Callable[[dict[str, Any]], Tensor]
    """The float64 truth (called on inputs cast to float64)."""
    description: str = ""
    cpu_shape: str = "small"
    gpu_shape: str = "nyud"


@dataclass
class Result:
    """One row of a profile table."""

    kernel: str
    impl: str
    shape: str
    dtype: str
    backward: bool
    device: str
    median_ms: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    roofline_pct: float | None = None
    max_rel_err: float | None = None
    peak_mib: float | None = None
    speedup_vs_best_pytorch: float | None = None
    note: str = ""
    dims: dict[str, int] = field(default_factory=dict)


_BENCHES: dict[str, KernelBench] = {}
_DISCOVERED = False


RunFn = Callable[[dict[str, Any]], Tensor]


def compiled_reference_impl(reference_fn: Callable[..., Tensor],
                            call: Callable[[Callable[..., Tensor]], RunFn]) -> Impl:
    """The "torch.compile reference" row: ``reference_fn`` compiled on first use (CUDA only)."""
    compiled: dict[str, Any] = {}

    def run(x: dict[str, Any]) -> Tensor:
        if "fn" not in compiled:
            compiled["fn"] = torch.compile(reference_fn)
        return call(compiled["fn"])(x)

    def cuda_only(device: torch.device) -> str | None:
        if os.environ.get("MTLKIT_PROFILE_COMPILE", "1") == "0":
            return "skipped: MTLKIT_PROFILE_COMPILE=0"
        return None if device.type == "cuda" else "skipped: torch.compile baseline on CUDA only"

    return Impl("torch.compile reference", run, cuda_only)


def register_bench(bench: KernelBench) -> KernelBench:
    """Add (or replace) the bench of ``bench.name``."""
    _BENCHES[bench.name] = bench
    return bench


def benches() -> dict[str, KernelBench]:
    """All benches by name (built-ins plus ``make_bench`` of the glue modules)."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        for module in GLUE_MODULES:
            try:
                mod = importlib.import_module(f"mtlkit.ops.{module}")
            except ImportError:
                continue
            make = getattr(mod, "make_bench", None)
            if callable(make):
                register_bench(make())
    return dict(_BENCHES)


# --------------------------------------------------------------------------- helpers
def _flat_tensors(inputs: dict[str, Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for v in inputs.values():
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(t for t in v if isinstance(t, Tensor))
    return out


def _map_tensors(inputs: dict[str, Any], fn: Callable[[Tensor], Tensor]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, Tensor):
            return fn(v)
        if isinstance(v, (list, tuple)):
            return [conv(t) for t in v]
        return v

    return {k: conv(v) for k, v in inputs.items()}


def _leaves(inputs: dict[str, Any], requires_grad: bool) -> dict[str, Any]:
    return _map_tensors(inputs, lambda t: t.detach().clone().requires_grad_(
        requires_grad and t.is_floating_point()))


def _forward_backward(fn: Callable[[dict[str, Any]], Tensor], inputs: dict[str, Any],
                      grad_out: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
    out = fn(inputs)
    if grad_out is None:
        return out, []
    leaves = [t for t in _flat_tensors(inputs) if t.requires_grad]
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype), allow_unused=True)
    return out, list(grads)


def _rel_err(x: Tensor | None, truth: Tensor | None) -> float:
    if x is None or truth is None:
        return 0.0
    truth = truth.detach().double()
    scale = truth.abs().max().item()
    return (x.detach().double() - truth).abs().max().item() / max(scale, 1e-30)


def _bytes(inputs: dict[str, Any], out: Tensor, grads: Sequence[Tensor | None]) -> float:
    total = sum(t.numel() * t.element_size() for t in _flat_tensors(inputs))
    total += out.numel() * out.element_size()
    if grads:  # read grad_out and the saved inputs again, write every gradient
        total *= 2
        total += sum(g.numel() * g.element_size() for g in grads if g is not None)
    return float(total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 10,
              repeats: int = 50) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    if device.type == "cuda":
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak device memory (MiB) allocated by one ``fn()`` above what was live before."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# --------------------------------------------------------------------------- main entry
def profile_kernel(name: str, *, dtype: str = "bf16", backward: bool = False,
                   shape: str | None = None, device: str | torch.device | None = None,
                   warmup: int = 10, repeats: int = 50, seed: int = 0) -> list[Result]:
    """Profile every implementation of op ``name``; one :class:`Result` per implementation.

    Without a CUDA device the references run on the CPU and the kernel row says why it was
    skipped. ``shape`` defaults to the bench's ``gpu_shape`` on CUDA, ``cpu_shape`` on CPU.
    """
    all_benches = benches()
    if name not in all_benches:
        raise UnknownNameError(f"unknown kernel {name!r}",
                               f"choose one of {', '.join(sorted(all_benches))} or all")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", f"choose one of {', '.join(DTYPES)}")
    bench = all_benches[name]
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    shape = shape or (bench.gpu_shape if dev.type == "cuda" else bench.cpu_shape)
    if shape not in bench.shapes:
        raise UnknownNameError(f"unknown shape {shape!r} for {name}",
                               f"choose one of {', '.join(bench.shapes)}")
    dims = bench.shapes[shape]
    tdtype = DTYPES[dtype]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base_inputs = bench.make_inputs(dims, tdtype, dev, gen)

    # float64 truth on the same device
    truth_inputs = _leaves(_map_tensors(base_inputs, lambda t: t.double()), backward)
    out64 = bench.reference(truth_inputs)
    grad64: Tensor | None = None
    grads64: list[Tensor | None] = []
    if backward:
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        grad64 = torch.randn(out64.shape, generator=g, dtype=torch.float64).to(dev)
        leaves = [t for t in _flat_tensors(truth_inputs) if t.requires_grad]
        grads64 = list(torch.autograd.grad(out64, leaves, grad64, allow_unused=True))

    flops = bench.flops(dims, backward)
    peak_flops = H100_PEAK_TFLOPS[tdtype] * 1e12
    results: list[Result] = []
    for impl in bench.impls:
        res = Result(kernel=name, impl=impl.name, shape=shape, dtype=dtype, backward=backward,
                     device=_device_name(dev), dims=dict(dims))
        reason = impl.unavailable(dev)
        if reason:
            res.note = reason
            results.append(res)
            continue
        inputs = _leaves(base_inputs, backward)
        grad_out = None if grad64 is None else grad64.to(tdtype)

        def step(impl: Impl = impl, inputs: dict[str, Any] = inputs,
                 grad_out: Tensor | None = grad_out) -> tuple[Tensor, list[Tensor | None]]:
            return _forward_backward(impl.run, inputs, grad_out)

        with _environment(impl.env):  # for the forward and the backward of this row only
            try:
                out, grads = step()
            except (RuntimeError, NotImplementedError) as exc:  # e.g. SDPA backend limits
                res.note = f"failed: {str(exc).splitlines()[0][:120]}"
                results.append(res)
                continue
            err = _rel_err(out, out64)
            # Gradients that vanish in exact arithmetic (k_bias and mix_bias: softmax is
            # invariant to a per-row shift) have no meaningful relative error; left out.
            gmax = max((g.abs().max().item() for g in grads64 if g is not None), default=0.0)
            for gk, g64 in zip(grads, grads64, strict=False):
                if g64 is not None and g64.abs().max().item() > 1e-9 * gmax:
                    err = max(err, _rel_err(gk, g64))
            res.max_rel_err = err
            nbytes = _bytes(inputs, out, grads)
            res.peak_mib = peak_memory_mib(step, dev)
            ms = time_call(step, dev, warmup=warmup, repeats=repeats)
        res.median_ms = ms
        res.tflops = flops / (ms * 1e-3) / 1e12
        res.gbps = nbytes / (ms * 1e-3) / 1e9
        if dev.type == "cuda":  # the roofline constants describe an H100, not a CPU
            bound_s = max(flops / peak_flops, nbytes / (H100_PEAK_GBPS * 1e9))
            res.roofline_pct = 100.0 * bound_s / (ms * 1e-3)
        results.append(res)

    best = next((r for r in results if r.impl == "pytorch best" and r.median_ms), None)
    for r in results:
        if best is not None and r.median_ms:
            r.speedup_vs_best_pytorch = best.median_ms / r.median_ms
    return results


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu"


def kernel_names() -> list[str]:
    return sorted(benches())


# --------------------------------------------------------------------------- availability
def _kernel_unavailable(glue_attr: str) -> Callable[[torch.device], str | None]:
    """Why the CUDA kernel of the op whose dispatcher is ``mtlkit.ops.<glue_attr>`` can't run."""

    def check(device: torch.device) -> str | None:
        import mtlkit.ops as ops

        if device.type != "cuda":
            return "skipped: needs a CUDA GPU"
        if not ops.HAS_CUDA_OPS:
            return f"skipped: {ops.CUDA_OPS_ERROR}"
        if getattr(ops, glue_attr, None) is None:
            return "skipped: no CUDA kernel registered for this op"
        if not ops.kernels_enabled():
            return "skipped: MTLKIT_KERNELS=0"
        return None

    return check


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, device: torch.device,
           scale: float = 1.0) -> Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- bfe_attention
def bfe_sdpa(q: Tensor, feats: Tensor, k_weight: Tensor, v_weight: Tensor,
             k_bias: Tensor | None, v_bias: Tensor | None, *, pool: int, heads: int) -> Tensor:
    """Best stock-PyTorch composition of BFCI eq. 1-4: avg_pool2d + cat + linear + SDPA."""
    B, Nq, E = q.shape
    _, T, C, H, W = feats.shape
    X = F.avg_pool2d(feats.reshape(B * T, C, H, W), pool).reshape(B, T, C, -1)
    X = X.transpose(2, 3).reshape(B, -1, C)
    D = E // heads
    K = F.linear(X, k_weight, k_bias).view(B, -1, heads, D).transpose(1, 2)
    V = F.linear(X, v_weight, v_bias).view(B, -1, heads, D).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.view(B, Nq, heads, D).transpose(1, 2), K, V)
    return out.transpose(1, 2).reshape(B, Nq, E)


def _bfe_inputs(d: dict[str, int], dtype: torch.dtype, device: torch.device,
                gen: torch.Generator) -> dict[str, Any]:
    B, T, C, H, W, E = d["B"], d["T"], d["C"], d["H"], d["W"], d["E"]
    return {
        "q": _randn(gen, B, d["Nq"], E, dtype=dtype, device=device),
        "feats": _randn(gen, B, T, C, H, W, dtype=dtype, device=device),
        "k_weight": _randn(gen, E, C, dtype=dtype, device=device, scale=C ** -0.5),
        "v_weight": _randn(gen, E, C, dtype=dtype, device=device, scale=C ** -0.5),
        "k_bias": _randn(gen, E, dtype=dtype, device=device, scale=0.1),
        "v_bias": _randn(gen, E, dtype=dtype, device=device, scale=0.1),
        "pool": d["pool"],
        "heads": d["heads"],
    }


def _bfe_call(fn: Callable[..., Tensor]) -> Callable[[dict[str, Any]], Tensor]:
    def run(x: dict[str, Any]) -> Tensor:
        return fn(x["q"], x["feats"], x["k_weight"], x["v_weight"], x["k_bias"], x["v_bias"],
                  pool=x["pool"], heads=x["heads"])

    return run


def _bfe_flops(d: dict[str, int], backward: bool) -> float:
    nk = d["T"] * (d["H"] // d["pool"]) * (d["W"] // d["pool"])
    attn = 4.0 * d["B"] * d["Nq"] * nk * d["E"]   # QK^T and PV over all heads
    proj = 4.0 * d["B"] * nk * d["C"] * d["E"]    # K and V projections
    return attn * 3.5 + proj * 3.0 if backward else attn + proj


def _make_bfe_bench() -> KernelBench:
    from mtlkit.ops import bfe_attention, reference

    # Scale-1 (stride 8) BFE of the paper's HRNet setting: queries downsampled by 2, keys by pool.
    shapes = {
        "small": dict(B=1, T=2, C=16, H=16, W=16, E=32, heads=2, pool=2, Nq=64),
        # NYUD-v2 480x640, stride 4 features 120x160, T=4, query stride 2 -> 60x80 tokens
        "nyud": dict(B=2, T=4, C=64, H=120, W=160, E=64, heads=2, pool=4, Nq=4800),
        # PASCAL-Context 512x512, stride 4 features 128x128, T=5
        "pascal": dict(B=2, T=5, C=64, H=128, W=128, E=64, heads=2, pool=4, Nq=4096),
        "large": dict(B=4, T=6, C=128, H=128, W=128, E=256, heads=2, pool=2, Nq=4096),
        # Issue-6 targets, NYUD at scale 1/8 (60x80), E = C = 256, 2 heads (D = 128), T = 4,
        # query stride d = 2 (Nq = 30x40); key pool l = 2, 4, 8 (l = 8 needs H padded to 64).
        "b8_60x80_l2": dict(B=8, T=4, C=256, H=60, W=80, E=256, heads=2, pool=2, Nq=1200),
        "b8_60x80_l4": dict(B=8, T=4, C=256, H=60, W=80, E=256, heads=2, pool=4, Nq=1200),
        "b8_64x80_l8": dict(B=8, T=4, C=256, H=64, W=80, E=256, heads=2, pool=8, Nq=1200),
        # PASCAL 512x512 at scale 1/8 (64x64), T = 5, Nq = 32x32
        "b8_64x64_t5_l2": dict(B=8, T=5, C=256, H=64, W=64, E=256, heads=2, pool=2, Nq=1024),
    }
    return KernelBench(
        name="bfe_attention",
        shapes=shapes,
        make_inputs=_bfe_inputs,
        impls=[
            Impl("cuda kernel", _bfe_call(bfe_attention), _kernel_unavailable("_bfe_cuda")),
            Impl("cuda kernel (tensor cores)", _bfe_call(bfe_attention),
                 _kernel_unavailable("_bfe_cuda"), env=TENSOR_CORE_ATTENTION),
            Impl("pytorch reference", _bfe_call(reference.bfe_attention)),
            Impl("pytorch best", _bfe_call(bfe_sdpa)),
        ],
        flops=_bfe_flops,
        reference=_bfe_call(reference.bfe_attention),
        description="BFCI BFE fused downsampled cross-attention (eq. 1-4)",
    )


# --------------------------------------------------------------------------- tpp_attention
def tpp_sdpa(q: Tensor, k: Tensor, v: Tensor, mix_weight: Tensor,
             mix_bias: Tensor | None = None) -> Tensor:
    """Best stock-PyTorch composition of BFCI eq. 5-6: the mix weights folded into the queries.

    ``sum_j w_mj q_j k_j^T = [w_m0 q_0, ..., w_m,T-1 q_{T-1}] [k_0, ..., k_{T-1}]^T``, so map m is
    one SDPA with feature dim T*D and scale 1/sqrt(D); for M == 1 the T values are concatenated
    and propagated by one call. ``mix_bias`` cancels in the softmax.
    """
    B, T, N, D = q.shape
    Dv = v.shape[-1]
    M = mix_weight.shape[0]
    w = mix_weight.to(q.dtype)
    qt = (w[None, :, :, None, None] * q[:, None]).permute(0, 1, 3, 2, 4).reshape(B, M, N, T * D)
    kt = k.permute(0, 2, 1, 3).reshape(B, 1, N, T * D)
    if M == 1:
        vt = v.permute(0, 2, 1, 3).reshape(B, 1, N, T * Dv)
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=D ** -0.5)
        return out.reshape(B, N, T, Dv).permute(0, 2, 1, 3)
    return F.scaled_dot_product_attention(qt, kt.expand(B, M, N, T * D), v, scale=D ** -0.5)


def _tpp_inputs(d: dict[str, int], dtype: torch.dtype, device: torch.device,
                gen: torch.Generator) -> dict[str, Any]:
    B, T, N, D, Dv, M = d["B"], d["T"], d["N"], d["D"], d["Dv"], d["M"]
    return {
        "q": _randn(gen, B, T, N, D, dtype=dtype, device=device),
        "k": _randn(gen, B, T, N, D, dtype=dtype, device=device),
        "v": _randn(gen, B, T, N, Dv, dtype=dtype, device=device),
        "mix_weight": _randn(gen, M, T, dtype=dtype, device=device, scale=T ** -0.5),
        "mix_bias": _randn(gen, M, dtype=dtype, device=device),
    }


def _tpp_call(fn: Callable[..., Tensor]) -> Callable[[dict[str, Any]], Tensor]:
    def run(x: dict[str, Any]) -> Tensor:
        return fn(x["q"], x["k"], x["v"], x["mix_weight"], x["mix_bias"])

    return run


def _tpp_flops(d: dict[str, int], backward: bool) -> float:
    B, T, N, D, Dv, M = d["B"], d["T"], d["N"], d["D"], d["Dv"], d["M"]
    fwd = 2.0 * B * N * N * (M * T * D + T * Dv)
    return fwd * 3.5 if backward else fwd


def _make_tpp_bench() -> KernelBench:
    from mtlkit.ops import reference, tpp_attention

    shapes = {
        "small": dict(B=1, T=3, N=64, D=16, Dv=16, M=1),
        # TPP runs on the last backbone scale (stride 32): NYUD 15x20, PASCAL 16x16 tokens
        "nyud": dict(B=4, T=4, N=300, D=64, Dv=64, M=1),
        "pascal": dict(B=4, T=5, N=256, D=64, Dv=64, M=1),
        "nyud-mt": dict(B=4, T=4, N=300, D=64, Dv=64, M=4),
        "large": dict(B=2, T=4, N=4096, D=64, Dv=64, M=1),
        # Issue-6 targets: batch 8 x 2 heads folded, NYUD stride 32 (15x20) with C = 256
        # (D = 128) and stride 16 (30x40) with D = 64; one shared map (M = 1) and M = T.
        "b16_n300_d128": dict(B=16, T=4, N=300, D=128, Dv=128, M=1),
        "b16_n1200_d64": dict(B=16, T=4, N=1200, D=64, Dv=64, M=1),
        "b16_n1200_d64_mt": dict(B=16, T=4, N=1200, D=64, Dv=64, M=4),
    }
    return KernelBench(
        name="tpp_attention",
        shapes=shapes,
        make_inputs=_tpp_inputs,
        impls=[
            Impl("cuda kernel", _tpp_call(tpp_attention), _kernel_unavailable("_tpp_cuda")),
            Impl("cuda kernel (tensor cores)", _tpp_call(tpp_attention),
                 _kernel_unavailable("_tpp_cuda"), env=TENSOR_CORE_ATTENTION),
            Impl("pytorch reference", _tpp_call(reference.tpp_attention)),
            Impl("pytorch best", _tpp_call(tpp_sdpa)),
        ],
        flops=_tpp_flops,
        reference=_tpp_call(reference.tpp_attention),
        description="BFCI TPP task-pattern-propagation attention (eq. 5-6)",
    )


# --------------------------------------------------------------------------- ifb (default)
def _ifb_inputs(d: dict[str, int], dtype: torch.dtype, device: torch.device,
                gen: torch.Generator) -> dict[str, Any]:
    B, N, c = d["B"], d["N"], d["c"]
    aff = torch.softmax(torch.randn(B, N, N, generator=gen), dim=-1)
    return {
        "affinity": aff.to(device=device, dtype=dtype),
        "v": _randn(gen, B, N, c, dtype=dtype, device=device),
        "alpha": torch.tensor(0.3, dtype=dtype, device=device),
        "iters": d["iters"],
        "variant": "C",
    }


def _ifb_call(fn: Callable[..., Tensor]) -> Callable[[dict[str, Any]], Tensor]:
    def run(x: dict[str, Any]) -> Tensor:
        return fn(x["affinity"], x["v"], x["alpha"], iters=x["iters"], variant=x["variant"])

    return run


def _ifb_flops(d: dict[str, int], backward: bool) -> float:
    fwd = 2.0 * d["B"] * d["N"] * d["N"] * d["c"] * d["iters"]
    return fwd * 3.0 if backward else fwd


def _make_ifb_bench() -> KernelBench:
    from mtlkit.ops import ifb, reference

    shapes = {
        "small": dict(B=1, N=64, c=16, iters=4),
        # TPIM on NYUD: affinities at 1/8 of 480x640 downscaled by sc=2 -> 30x40 tokens, 18 iters
        "nyud": dict(B=4, N=1200, c=64, iters=18),
        "pascal": dict(B=4, N=1024, c=64, iters=4),
    }
    return KernelBench(
        name="ifb",
        shapes=shapes,
        make_inputs=_ifb_inputs,
        impls=[
            Impl("cuda kernel", _ifb_call(ifb), _kernel_unavailable("_ifb_cuda")),
            Impl("pytorch reference", _ifb_call(reference.ifb)),
        ],
        flops=_ifb_flops,
        reference=_ifb_call(reference.ifb),
        description="TPIM Iterative Fusion Block (eq. 6-8)",
    )


# --------------------------------------------------------------------------- hdc_conv (default)
def _hdc_inputs(d: dict[str, int], dtype: torch.dtype, device: torch.device,
                gen: torch.Generator) -> dict[str, Any]:
    B, C, H, W, S = d["B"], d["C"], d["H"], d["W"], d["S"]
    return {
        "x": _randn(gen, B, C, H, W, dtype=dtype, device=device),
        "dw_weights": [_randn(gen, C, 1, 3, 3, dtype=dtype, device=device, scale=1 / 3)
                       for _ in range(S)],
        "dw_biases": [_randn(gen, C, dtype=dtype, device=device, scale=0.1) for _ in range(S)],
        "pw_weights": [_randn(gen, C, C, dtype=dtype, device=device, scale=C ** -0.5)
                       for _ in range(S)],
        "pw_biases": [_randn(gen, C, dtype=dtype, device=device, scale=0.1) for _ in range(S)],
        "dilations": (1, 2, 5)[:S] if S <= 3 else tuple((1, 2, 5)[s % 3] for s in range(S)),
    }


def _hdc_call(fn: Callable[..., Tensor]) -> Callable[[dict[str, Any]], Tensor]:
    def run(x: dict[str, Any]) -> Tensor:
        return fn(x["x"], x["dw_weights"], x["dw_biases"], x["pw_weights"], x["pw_biases"],
                  dilations=x["dilations"])

    return run


def _hdc_flops(d: dict[str, int], backward: bool) -> float:
    px = d["B"] * d["H"] * d["W"]
    fwd = d["S"] * px * (2.0 * 9 * d["C"] + 2.0 * d["C"] * d["C"])
    return fwd * 3.0 if backward else fwd


def _make_hdc_bench() -> KernelBench:
    from mtlkit.ops import hdc_conv, reference

    shapes = {
        "small": dict(B=1, C=16, H=16, W=16, S=3),
        # TFR at stride 4 of NYUD 480x640 (120x160), 64 channels, one HDC layer (3 stages)
        "nyud": dict(B=4, C=64, H=120, W=160, S=3),
        "pascal": dict(B=4, C=64, H=128, W=128, S=3),
    }
    return KernelBench(
        name="hdc_conv",
        shapes=shapes,
        make_inputs=_hdc_inputs,
        impls=[
            Impl("cuda kernel", _hdc_call(hdc_conv), _kernel_unavailable("_hdc_cuda")),
            Impl("pytorch reference", _hdc_call(reference.hdc_conv)),
        ],
        flops=_hdc_flops,
        reference=_hdc_call(reference.hdc_conv),
        description="BFCI TFR hybrid dilated depthwise-separable conv stack (HDC)",
    )


for _make in (_make_bfe_bench, _make_tpp_bench, _make_ifb_bench, _make_hdc_bench):
    register_bench(_make())


# --------------------------------------------------------------------------- reporting
def results_table(results: Sequence[Result], title: str | None = None) -> Any:
    """A rich Table of results."""
    from rich.table import Table

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    first = results[0] if results else None
    if title is None and first is not None:
        mode = "fwd+bwd" if first.backward else "fwd"
        title = f"{first.kernel} ({first.shape}, {first.dtype}, {mode}) on {first.device}"
    table = Table(title=title)
    for col in ("implementation", "median ms", "TFLOP/s", "GB/s", "% roofline", "max rel err",
                "peak MiB", "speed-up", "note"):
        table.add_column(col, justify="left" if col in ("implementation", "note") else "right")
    for r in results:
        table.add_row(r.impl, fmt(r.median_ms, ".3f"), fmt(r.tflops, ".2f"), fmt(r.gbps, ".1f"),
                      fmt(r.roofline_pct, ".1f"), fmt(r.max_rel_err, ".2e"),
                      fmt(r.peak_mib, ".1f"), fmt(r.speedup_vs_best_pytorch, ".2f") + "x"
                      if r.speedup_vs_best_pytorch else "-", r.note)
    return table


def environment() -> dict[str, Any]:
    """Device, versions and date for a results file."""
    import datetime
    import subprocess

    import mtlkit.ops as ops

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "has_cuda_ops": ops.HAS_CUDA_OPS,
        "cuda_ops_error": ops.CUDA_OPS_ERROR,
        "kernels_enabled": ops.kernels_enabled(),
        "commit": commit,
        "roofline": {"peak_tflops": {str(k).removeprefix("torch."): v
                                     for k, v in H100_PEAK_TFLOPS.items()},
                     "peak_gbps": H100_PEAK_GBPS, "device": "H100 SXM5 datasheet (dense)"},
    }
