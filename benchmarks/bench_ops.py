"""Benchmark the mtlkit ops: every named implementation, the ``auto`` choice marked.

Runs :func:`mtlkit.profiling.profile_kernel` for every op, dtype and mode (forward, forward +
backward) on the given shape presets, prints plain-text tables (one row per implementation:
``reference``, ``sdpa``, ``cuda``, ``cuda_tc``, ``cuda_band`` as the op has them) and writes one
JSON file with the environment (device, torch, CUDA, commit, date) and every result. Record
measured numbers in benchmarks/RESULTS.md.

    python benchmarks/bench_ops.py --shapes nyud,pascal --dtypes bf16,fp32 --out bench_ops.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from mtlkit import profiling
from mtlkit.utils import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="all", help="comma list or 'all'")
    parser.add_argument("--shapes", default=None,
                        help="comma list of presets (default: nyud,pascal on GPU, small on CPU)")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_ops.json"))
    args = parser.parse_args(argv)

    import torch

    console = Console(stderr=True)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        console.print("[yellow]No CUDA GPU: only the PyTorch references are timed (on the "
                      "CPU); the CUDA kernels need a CUDA GPU.[/]")
    kernels = (profiling.kernel_names() if args.kernels == "all"
               else [k.strip() for k in args.kernels.split(",") if k.strip()])
    shapes = (args.shapes.split(",") if args.shapes
              else (["nyud", "pascal"] if on_gpu else ["small"]))
    modes = [False] if args.forward_only else [False, True]
    results = []
    for kernel in kernels:
        for shape in shapes:
            if shape not in profiling.benches()[kernel].shapes:
                continue  # presets are per op; a comma list may name several ops' presets
            for dtype in args.dtypes.split(","):
                for backward in modes:
                    rows = profiling.profile_kernel(kernel, dtype=dtype, backward=backward,
                                                    shape=shape, warmup=args.warmup,
                                                    repeats=args.repeats)
                    print(profiling.results_table(rows) + "\n")
                    results.extend(asdict(r) for r in rows)
    payload = {"environment": profiling.environment(), "results": results}
    atomic_write_text(args.out, json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
