"""Timing, roofline and accuracy of the mtlkit ops (``mtlkit profile`` and ``benchmarks/``).

Every op has a :class:`KernelBench`: named shape presets, an input factory, model FLOPs /
compulsory bytes, and a float64 truth. Its rows are the op's named implementations
(:func:`mtlkit.ops.implementations`: ``reference``, ``sdpa``, ``cuda``, ``cuda_tc``,
``cuda_band`` as the op has them), each run directly, plus extra rows a bench adds (``ifb`` and
``hdc_conv``: ``torch.compile`` of the reference, CUDA only). The row that the default policy
``auto`` (:mod:`mtlkit.ops.tuning`) picks for the same inputs is marked.

Numbers reported per implementation: median wall time over ``repeats`` runs after ``warmup``
runs (CUDA events on GPU, ``perf_counter`` on CPU), TFLOP/s from model FLOPs (recomputation in a
backward is not counted), GB/s from compulsory traffic (every input read once, every output
written once), % of roofline = ``max(flops / peak_flops, bytes / peak_bw) / time`` with the H100
SXM constants below (GPU runs only), max relative error against the float64 reference
(``max|x - x64| / max|x64|`` over the output and, with ``backward``, every input gradient that
is not zero in exact arithmetic), peak extra device memory of one run, and the speed-up over the
fastest stock-PyTorch row (``reference``, ``sdpa``, ``torch.compile reference``).

Tables are plain text with columns as wide as their contents (:func:`format_table`), the same on
a terminal and in a pipe. :mod:`mtlkit.ops` imports nothing from here.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
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
STOCK_ROWS = ("reference", "sdpa", "torch.compile reference")
"""Rows of stock PyTorch: the speed-up column is relative to the fastest of them."""


# --------------------------------------------------------------------------- data structures
RunFn = Callable[[dict[str, Any]], Tensor]


@dataclass
class Impl:
    """An extra row of a bench (not an implementation of :mod:`mtlkit.ops`)."""

    name: str
    run: RunFn
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    """Returns why this row cannot run on ``device`` (None when it can)."""


@dataclass
class KernelBench:
    """Everything needed to profile one op."""

    name: str
    shapes: dict[str, dict[str, int]]
    make_inputs: Callable[[dict[str, int], torch.dtype, torch.device, torch.Generator],
                          dict[str, Any]]
    """Inputs as a dict: tensors (or lists of tensors) and plain keyword values."""
    split: Callable[[dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]
    """Inputs -> the op's ``(args, kwargs)``."""
    flops: Callable[[dict[str, int], bool], float]
    """Model FLOPs of a forward (False) or forward + backward (True)."""
    extra: list[Impl] = field(default_factory=list)
    description: str = ""
    cpu_shape: str = "small"
    gpu_shape: str = "nyud"

    def call(self, fn: Callable[..., Tensor]) -> RunFn:
        """``fn`` (with the op's signature) as a function of the inputs dict."""

        def run(x: dict[str, Any]) -> Tensor:
            args, kwargs = self.split(x)
            return fn(*args, **kwargs)

        return run

    def reference(self, x: dict[str, Any]) -> Tensor:
        """The executable contract (:mod:`mtlkit.ops.reference`), the float64 truth."""
        from mtlkit.ops import reference

        return self.call(getattr(reference, self.name))(x)


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
    auto: bool = False
    """True on the row that ``auto`` picks for these inputs."""
    note: str = ""
    dims: dict[str, int] = field(default_factory=dict)


_BENCHES: dict[str, KernelBench] = {}


def register_bench(bench: KernelBench) -> KernelBench:
    """Add (or replace) the bench of ``bench.name``."""
    _BENCHES[bench.name] = bench
    return bench


def benches() -> dict[str, KernelBench]:
    """All benches by name."""
    return dict(_BENCHES)


def kernel_names() -> list[str]:
    return sorted(_BENCHES)


def compiled_reference_impl(bench_name: str) -> Impl:
    """The "torch.compile reference" row: the reference compiled on first use (CUDA only)."""
    compiled: dict[str, Any] = {}

    def run(x: dict[str, Any]) -> Tensor:
        from mtlkit.ops import reference

        if "fn" not in compiled:
            compiled["fn"] = torch.compile(getattr(reference, bench_name))
        return _BENCHES[bench_name].call(compiled["fn"])(x)

    def cuda_only(device: torch.device) -> str | None:
        if os.environ.get("MTLKIT_PROFILE_COMPILE", "1") == "0":
            return "skipped: MTLKIT_PROFILE_COMPILE=0"
        return None if device.type == "cuda" else "skipped: torch.compile baseline on CUDA only"

    return Impl("torch.compile reference", run, cuda_only)


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
def _rows(bench: KernelBench, inputs: dict[str, Any],
          dev: torch.device) -> list[tuple[str, RunFn | None, str]]:
    """(name, run, why not) for every implementation of the op, then the bench's extra rows."""
    from mtlkit.ops import impls

    args, kwargs = bench.split(inputs)
    rows: list[tuple[str, RunFn | None, str]] = []
    for impl in impls.all_implementations(bench.name):
        why = impl.unavailable(dev) or impl.declines(*args, **kwargs)
        rows.append((impl.name, None if why else bench.call(impl.fn),
                     f"skipped: {why}" if why else ""))
    for extra in bench.extra:
        why = extra.unavailable(dev)
        rows.append((extra.name, None if why else extra.run, why or ""))
    return rows


def auto_choice(bench: KernelBench, inputs: dict[str, Any], backward: bool) -> str | None:
    """The implementation ``auto`` runs for these inputs (measuring them if not cached)."""
    from mtlkit.ops import tuning

    args, kwargs = bench.split(_leaves(inputs, backward))
    with torch.set_grad_enabled(backward):
        return tuning.decide(bench.name, args, kwargs).choice


def profile_kernel(name: str, *, dtype: str = "bf16", backward: bool = False,
                   shape: str | None = None, device: str | torch.device | None = None,
                   warmup: int = 10, repeats: int = 50, seed: int = 0) -> list[Result]:
    """Profile every implementation of op ``name``; one :class:`Result` per row.

    Without a CUDA device the stock implementations run on the CPU and the kernel rows say why
    they were skipped. ``shape`` defaults to the bench's ``gpu_shape`` on CUDA, ``cpu_shape`` on
    CPU.
    """
    from mtlkit.ops import ImplementationDeclined

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
    for row_name, run, why in _rows(bench, base_inputs, dev):
        res = Result(kernel=name, impl=row_name, shape=shape, dtype=dtype, backward=backward,
                     device=_device_name(dev), dims=dict(dims))
        if run is None:
            res.note = why
            results.append(res)
            continue
        inputs = _leaves(base_inputs, backward)
        grad_out = None if grad64 is None else grad64.to(tdtype)

        def step(run: RunFn = run, inputs: dict[str, Any] = inputs,
                 grad_out: Tensor | None = grad_out) -> tuple[Tensor, list[Tensor | None]]:
            return _forward_backward(run, inputs, grad_out)

        try:
            out, grads = step()
        except ImplementationDeclined as exc:
            res.note = f"skipped: declined: {exc}"
            results.append(res)
            continue
        except (RuntimeError, NotImplementedError) as exc:  # e.g. SDPA backend limits
            res.note = f"failed: {str(exc).splitlines()[0][:120]}"
            results.append(res)
            continue
        err = _rel_err(out, out64)
        # Gradients that vanish in exact arithmetic (k_bias and mix_bias: softmax is invariant
        # to a per-row shift) have no meaningful relative error; left out.
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

    chosen = auto_choice(bench, base_inputs, backward)
    stock = [r.median_ms for r in results if r.impl in STOCK_ROWS and r.median_ms]
    best = min(stock) if stock else None
    for r in results:
        r.auto = r.impl == chosen
        if best is not None and r.median_ms:
            r.speedup_vs_best_pytorch = best / r.median_ms
    return results


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu"


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, device: torch.device,
           scale: float = 1.0) -> Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- bfe_attention
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


def _bfe_split(x: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return ((x["q"], x["feats"], x["k_weight"], x["v_weight"], x["k_bias"], x["v_bias"]),
            {"pool": x["pool"], "heads": x["heads"]})


def _bfe_flops(d: dict[str, int], backward: bool) -> float:
    nk = d["T"] * (d["H"] // d["pool"]) * (d["W"] // d["pool"])
    attn = 4.0 * d["B"] * d["Nq"] * nk * d["E"]   # QK^T and PV over all heads
    proj = 4.0 * d["B"] * nk * d["C"] * d["E"]    # K and V projections
    return attn * 3.5 + proj * 3.0 if backward else attn + proj


def _make_bfe_bench() -> KernelBench:
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
        split=_bfe_split,
        flops=_bfe_flops,
        description="BFCI BFE fused downsampled cross-attention (eq. 1-4)",
    )


# --------------------------------------------------------------------------- tpp_attention
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


def _tpp_split(x: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x["q"], x["k"], x["v"], x["mix_weight"], x["mix_bias"]), {}


def _tpp_flops(d: dict[str, int], backward: bool) -> float:
    B, T, N, D, Dv, M = d["B"], d["T"], d["N"], d["D"], d["Dv"], d["M"]
    fwd = 2.0 * B * N * N * (M * T * D + T * Dv)
    return fwd * 3.5 if backward else fwd


def _make_tpp_bench() -> KernelBench:
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
        split=_tpp_split,
        flops=_tpp_flops,
        description="BFCI TPP task-pattern-propagation attention (eq. 5-6)",
    )


# --------------------------------------------------------------------------- ifb
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


def _ifb_split(x: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x["affinity"], x["v"], x["alpha"]), {"iters": x["iters"], "variant": x["variant"]}


def _ifb_flops(d: dict[str, int], backward: bool) -> float:
    fwd = 2.0 * d["B"] * d["N"] * d["N"] * d["c"] * d["iters"]
    return fwd * 3.0 if backward else fwd


def _make_ifb_bench() -> KernelBench:
    shapes = {
        "small": dict(B=1, N=64, c=16, iters=4),
        # TPIM on NYUD: affinities at 1/8 of 480x640 downscaled by sc=2 -> 30x40 tokens, 18 iters
        "nyud": dict(B=4, N=1200, c=64, iters=18),
        "pascal": dict(B=4, N=1024, c=64, iters=4),
    }
    # The issue-7 performance targets: B = 16, N = 1200 / 4800, c = 64 / 256, 18 iterations.
    for n in (1200, 4800):
        for c in (64, 256):
            shapes[f"b16_n{n}_c{c}"] = dict(B=16, N=n, c=c, iters=18)
    return KernelBench(
        name="ifb",
        shapes=shapes,
        make_inputs=_ifb_inputs,
        split=_ifb_split,
        flops=_ifb_flops,
        extra=[compiled_reference_impl("ifb")],
        description="TPIM Iterative Fusion Block (eq. 6-8)",
    )


# --------------------------------------------------------------------------- hdc_conv
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


def _hdc_split(x: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return ((x["x"], x["dw_weights"], x["dw_biases"], x["pw_weights"], x["pw_biases"]),
            {"dilations": tuple(x["dilations"])})


def _hdc_flops(d: dict[str, int], backward: bool) -> float:
    px = d["B"] * d["H"] * d["W"]
    fwd = d["S"] * px * (2.0 * 9 * d["C"] + 2.0 * d["C"] * d["C"])
    return fwd * 3.0 if backward else fwd


def _make_hdc_bench() -> KernelBench:
    shapes = {
        "small": dict(B=1, C=16, H=16, W=16, S=3),
        # TFR at stride 4 of NYUD 480x640 (120x160), 64 channels, one HDC layer (3 stages)
        "nyud": dict(B=4, C=64, H=120, W=160, S=3),
        "pascal": dict(B=4, C=64, H=128, W=128, S=3),
    }
    # The issue-7 performance targets: B = 8, C = 256, 60x80 and 120x160, one HDC layer.
    shapes["b8_c256_60x80"] = dict(B=8, C=256, H=60, W=80, S=3)
    shapes["b8_c256_120x160"] = dict(B=8, C=256, H=120, W=160, S=3)
    return KernelBench(
        name="hdc_conv",
        shapes=shapes,
        make_inputs=_hdc_inputs,
        split=_hdc_split,
        flops=_hdc_flops,
        extra=[compiled_reference_impl("hdc_conv")],
        description="BFCI TFR hybrid dilated depthwise-separable conv stack (HDC)",
    )


for _make in (_make_bfe_bench, _make_tpp_bench, _make_ifb_bench, _make_hdc_bench):
    register_bench(_make())


# --------------------------------------------------------------------------- reporting
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 right: Sequence[str] = ()) -> str:
    """A plain-text table, each column as wide as its widest cell (never cut to a terminal).

    ``right``: headers of the right-aligned (numeric) columns.
    """
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        parts = [c.rjust(w) if h in right else c.ljust(w)
                 for c, w, h in zip(r, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def results_table(results: Sequence[Result], title: str | None = None) -> str:
    """The rows of :func:`profile_kernel` as a plain-text table under a title line."""
    first = results[0] if results else None
    if title is None and first is not None:
        mode = "fwd+bwd" if first.backward else "fwd"
        title = f"{first.kernel} ({first.shape}, {first.dtype}, {mode}) on {first.device}"
    headers = ["implementation", "auto", "median ms", "TFLOP/s", "GB/s", "% roofline",
               "max rel err", "peak MiB", "speed-up", "note"]
    rows = [[r.impl, "<- auto" if r.auto else "", _fmt(r.median_ms, ".3f"),
             _fmt(r.tflops, ".2f"), _fmt(r.gbps, ".1f"), _fmt(r.roofline_pct, ".1f"),
             _fmt(r.max_rel_err, ".2e"), _fmt(r.peak_mib, ".1f"),
             _fmt(r.speedup_vs_best_pytorch, ".2f") + "x" if r.speedup_vs_best_pytorch else "-",
             r.note] for r in results]
    body = format_table(headers, rows, right=headers[2:9])
    return f"{title}\n{body}" if title else body


def environment() -> dict[str, Any]:
    """Device, versions, implementation settings and date for a results file."""
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
        "MTLKIT_IMPL": os.environ.get("MTLKIT_IMPL"),
        "MTLKIT_TUNE": os.environ.get("MTLKIT_TUNE"),
        "tuning_cache": str(ops.tuning.cache_path()),
        "commit": commit,
        "roofline": {"peak_tflops": {str(k).removeprefix("torch."): v
                                     for k, v in H100_PEAK_TFLOPS.items()},
                     "peak_gbps": H100_PEAK_GBPS, "device": "H100 SXM5 datasheet (dense)"},
    }
