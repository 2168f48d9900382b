"""``mtlkit benchmark``: train every arch and the single-task references over seeds; one table."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, err_console, parse_list, parse_size, user_errors


@user_errors
def benchmark(
    out: Annotated[str, typer.Option(help="benchmark directory (re-run the same command to "
                                          "resume)")],
    archs: Annotated[str | None, typer.Option(
        help="comma list of archs (default: every registered arch but single)")] = None,
    seeds: Annotated[str, typer.Option(help="comma list of integer seeds, e.g. 0,1,2")] = "0,1,2",
    steps: Annotated[int, typer.Option(help="optimiser steps of every run")] = 400,
    dataset: Annotated[str, typer.Option(help="dataset name")] = "synthetic-nyud",
    data: Annotated[str | None, typer.Option(
        help="preprocessed .h5 file (synthetic datasets: the built-in one)")] = None,
    tasks: Annotated[str | None, typer.Option(
        help="comma list of tasks (default: the dataset's)")] = None,
    backbone: Annotated[str, typer.Option(help="tiny or timm:<name>")] = "tiny",
    size: Annotated[str | None, typer.Option(help="input size HxW (default: the dataset's)")
                    ] = None,
    batch_size: Annotated[int, typer.Option(help="batch size of every run")] = 8,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast (CUDA only)")
                   ] = False,
    config_dir: Annotated[str | None, typer.Option(
        help="folder of presets: an arch's <arch>_*.yaml for this dataset and backbone gives "
             "its model kwargs and optimisation recipe")] = None,
    saliency_metric: Annotated[str, typer.Option(
        help="saliency's main metric in delta_m: maxF or mIoU")] = "maxF",
    jobs: Annotated[int, typer.Option(
        help="concurrent runs (CPU: cores/jobs threads each; CUDA: one GPU each)")] = 1,
    workers: Annotated[int, typer.Option(help="DataLoader workers per run")] = 0,
    ckpt_every: Annotated[int | None, typer.Option(
        help="checkpoint period of the runs (default: a fifth of --steps)")] = None,
) -> None:
    """Fair multi-seed comparison: trains the single-task references and every arch for every
    seed with identical settings, then writes OUT/table.md, table.json and table.png
    (mean +- std over seeds, delta_m per seed with its 95 % t interval, params, GFLOPs,
    images/s, peak memory).
    """
    from mtlkit.engine.bench_plan import default_archs
    from mtlkit.engine.benchmark import (
        BenchmarkSettings,
        parse_archs,
        parse_seeds,
        run_benchmark,
    )

    settings = BenchmarkSettings(
        archs=parse_archs(archs) if archs is not None else default_archs(),
        seeds=parse_seeds(seeds), steps=steps, dataset=dataset, data=data,
        tasks=parse_list(tasks), size=parse_size(size), backbone=backbone,
        batch_size=batch_size, amp=amp, config_dir=config_dir,
        saliency_metric=saliency_metric, jobs=jobs, workers=workers, ckpt_every=ckpt_every,
    )
    result = run_benchmark(settings, out, echo=_echo)
    if result.failures:
        for o in result.failures:
            err_console.print(f"[bold red]error:[/] run {o.run.name} failed ({o.reason}); "
                              f"log: {o.log}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(result.failures)} of {len(result.runs)} runs failed; the "
                          "others are kept. Fix the cause and re-run the same command to "
                          "finish the benchmark.", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    md = next(p for p in result.tables if p.suffix == ".md")
    typer.echo(md.read_text(), nl=False)
    console.print("wrote " + ", ".join(f"[bold]{p}[/]" for p in result.tables))


def _echo(line: str) -> None:
    """One progress line, printed as is (no markup, no wrapping)."""
    console.print(line, highlight=False, markup=False, soft_wrap=True)
