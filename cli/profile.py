"""``mtlkit profile``: time every implementation of the ops, a whole model, or tune a model's ops.

Tables are plain text with fixed columns (as wide as their contents), so they read the same on
a terminal, in a pipe and in a log file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import console, user_errors


def _print(text: str) -> None:
    """A plain-text table on stdout, never wrapped or cut to the terminal width."""
    typer.echo(text)


@contextmanager
def _progress() -> Iterator[Callable[[int, int, str], None]]:
    """``progress(done, total, what)``: a rich bar on a terminal, else one plain line per step
    on stderr (a log file still shows that the run is alive)."""
    import time

    if not sys.stderr.isatty():
        t0 = time.monotonic()

        def plain(done: int, total: int, what: str) -> None:
            print(f"profile: {done}/{total} {what} ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr, flush=True)

        yield plain
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("building the model", total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        yield update


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
        help="profile a whole model instead: training/inference img/s per implementation "
             "setting, and which implementation each op ran")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune", help="with --arch: measure every op the model runs (one training step and "
                       "one inference forward), print each candidate's time and the choice, "
                       "and cache the choices")] = False,
    batch_size: Annotated[int, typer.Option(help="batch size (with --arch)")] = 8,
    size: Annotated[str | None, typer.Option(help="input HxW (with --arch)")] = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", help="bf16 autocast (with --arch; default: on with a GPU and "
                               "--dtype bf16)")] = None,
    dataset: Annotated[str, typer.Option(help="task set (with --arch)")] = "synthetic-nyud",
    backbone: Annotated[str, typer.Option(help="backbone (with --arch)")] = "tiny",
) -> None:
    """Profile the hot-path ops: every implementation's median time, TFLOP/s, GB/s, % of H100
    roofline, error and memory, with the row that ``auto`` picks marked.

    With ``--arch``: whole-model training and inference images/s and peak memory under
    ``auto`` (on a GPU also under the CUDA kernels and under the references), and which
    implementation each op ran. With ``--arch --tune``: the ops' candidates timed afresh.
    """
    import torch

    from mtlkit import profiling
    from mtlkit.errors import ConfigError
    from mtlkit.utils import atomic_write_text

    if repeats < 1 or warmup < 0:
        raise ConfigError("bad --repeats/--warmup", "use --repeats >= 1 and --warmup >= 0")
    if tune and arch is None:
        raise ConfigError("--tune needs a model", "add --arch ARCH (e.g. --arch bfci)")
    gpu = torch.cuda.is_available()
    if arch is not None:
        _profile_arch(arch, tune=tune, batch_size=batch_size, size=size,
                      amp=(dtype == "bf16" and gpu) if amp is None else amp, dataset=dataset,
                      backbone=backbone, warmup=warmup, repeats=repeats, json_out=json_out)
        return
    names = profiling.kernel_names() if kernel == "all" else [kernel]
    if not gpu:
        console.print("[yellow]No CUDA GPU: timing the stock PyTorch implementations on the "
                      "CPU; the CUDA kernels need a CUDA GPU.[/]")
    all_results = []
    for name in names:
        results = profiling.profile_kernel(name, dtype=dtype, backward=backward, shape=shape,
                                           warmup=warmup, repeats=repeats)
        _print(profiling.results_table(results) + "\n")
        all_results.extend(results)
    if json_out is not None:
        payload = {"environment": profiling.environment(),
                   "results": [asdict(r) for r in all_results]}
        atomic_write_text(json_out, json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")


def _profile_arch(arch: str, *, tune: bool, batch_size: int, size: str | None, amp: bool,
                  dataset: str, backbone: str, warmup: int, repeats: int,
                  json_out: Path | None) -> None:
    """``mtlkit profile --arch ARCH [--tune]``."""
    import torch

    from cli.common import parse_size
    from mtlkit import profiling
    from mtlkit.engine.throughput import (
        arch_table,
        implementations_table,
        profile_arch,
        tune_arch,
        tune_table,
    )
    from mtlkit.utils import atomic_write_text

    hw = parse_size(size)
    gpu = torch.cuda.is_available()
    if not gpu:
        console.print("[yellow]No CUDA GPU: mtlkit's CUDA kernels need one. Running a quick CPU "
                      "profile of the stock implementations (chosen by auto).[/]")
        warmup, repeats = 1, 1
    else:
        warmup, repeats = min(warmup, 3), min(repeats, 10)
    common = dict(dataset=dataset, backbone=backbone, batch_size=batch_size,
                  size=tuple(hw) if hw else None, amp=amp)
    payload: dict[str, Any] = {"environment": profiling.environment()}
    if tune:
        with console.status("measuring every op of the model (one training step, one "
                            "inference forward)"):
            tuned = tune_arch(arch, **common)
        _print(tune_table(tuned) + "\n")
        payload["tuning"] = tuned
    with _progress() as progress:
        rows = profile_arch(arch, warmup=warmup, repeats=repeats, progress=progress, **common)
    _print(arch_table(rows) + "\n")
    _print(implementations_table(rows))
    payload["results"] = rows
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")
