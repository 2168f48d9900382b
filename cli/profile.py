"""``mtlkit profile``: time the CUDA kernels against the PyTorch reference and best composition."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, user_errors


@user_errors
def profile(
    kernel: Annotated[str, typer.Option(
        help="bfe_attention | tpp_attention | ifb | hdc_conv | all")] = "all",
    dtype: Annotated[str, typer.Option(help="bf16 | fp32 | fp16")] = "bf16",
    backward: Annotated[bool, typer.Option(
        "--backward/--forward", help="time forward + backward instead of forward")] = False,
    shape: Annotated[str | None, typer.Option(
        help="shape preset (nyud, pascal, small, large, ...); default nyud on GPU, small on CPU"
    )] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="also write the results (and environment) to this JSON file")] = None,
    repeats: Annotated[int, typer.Option(help="timed runs (median reported)")] = 50,
    warmup: Annotated[int, typer.Option(help="untimed warm-up runs")] = 10,
    arch: Annotated[str | None, typer.Option(
        help="profile a whole model instead: training/inference img/s, kernels on and off")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size (with --arch)")] = 8,
    size: Annotated[str | None, typer.Option(help="input HxW (with --arch)")] = None,
    dataset: Annotated[str, typer.Option(help="task set (with --arch)")] = "synthetic-nyud",
    backbone: Annotated[str, typer.Option(help="backbone (with --arch)")] = "tiny",
) -> None:
    """Profile the hot-path ops: median time, TFLOP/s, GB/s, % of H100 roofline, error, memory.

    With ``--arch``: whole-model training and inference images/s and peak memory, with the CUDA
    kernels on and off (``MTLKIT_KERNELS=0``).
    """
    import torch

    from mtlkit import profiling
    from mtlkit.errors import ConfigError
    from mtlkit.utils import atomic_write_text

    if repeats < 1 or warmup < 0:
        raise ConfigError("bad --repeats/--warmup", "use --repeats >= 1 and --warmup >= 0")
    if arch is not None:
        from cli.common import parse_size
        from mtlkit.engine.throughput import arch_table, profile_arch

        hw = parse_size(size)
        rows = profile_arch(arch, dataset=dataset, backbone=backbone, batch_size=batch_size,
                            size=tuple(hw) if hw else None,
                            amp=dtype == "bf16" and torch.cuda.is_available(),
                            warmup=min(warmup, 3), repeats=min(repeats, 10))
        if not torch.cuda.is_available():
            console.print("[yellow]No CUDA GPU: both rows run the PyTorch references on the CPU."
                          "[/]")
        console.print(arch_table(rows))
        if json_out is not None:
            payload = {"environment": profiling.environment(), "results": rows}
            atomic_write_text(json_out, json.dumps(payload, indent=2))
        return
    names = profiling.kernel_names() if kernel == "all" else [kernel]
    if not torch.cuda.is_available():
        console.print("[yellow]No CUDA GPU: timing the PyTorch references on the CPU; the CUDA "
                      "kernels need a CUDA GPU.[/]")
    all_results = []
    for name in names:
        results = profiling.profile_kernel(name, dtype=dtype, backward=backward, shape=shape,
                                           warmup=warmup, repeats=repeats)
        console.print(profiling.results_table(results))
        all_results.extend(results)
    if json_out is not None:
        payload = {"environment": profiling.environment(),
                   "results": [asdict(r) for r in all_results]}
        atomic_write_text(json_out, json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")
