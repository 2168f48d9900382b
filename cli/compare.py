"""``mtlkit compare`` and ``mtlkit plot``."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, parse_list, user_errors


@user_errors
def compare(
    runs: Annotated[list[str], typer.Argument(help="run directories (or report/eval .json)")],
    single_task: Annotated[
        list[str] | None,
        typer.Option("--single-task", help="single-task reference run (repeat, or a,b,c)"),
    ] = None,
    markdown: Annotated[
        str | None, typer.Option(help="write the markdown table to this file, not stdout")
    ] = None,
    saliency_metric: Annotated[str, typer.Option(
        help="saliency's main metric: maxF (ATRC/InvPT) or mIoU (MTI-Net)")] = "maxF",
) -> None:
    """One table of runs x main metrics, with delta_m (%) against --single-task runs.

    Reads RUN/report.json, or RUN/eval.json when it is newer and on the val split. A benchmark
    directory (mtlkit benchmark --out) prints its table (mean +- std over seeds, delta_m).
    """
    from pathlib import Path

    from mtlkit.engine.compare import (
        benchmark_comparison,
        compare_runs,
        comparison_markdown,
        comparison_table,
    )
    from mtlkit.utils import atomic_write_text

    refs = [r for item in (single_task or []) for r in (parse_list(item) or [])]
    bench_md = benchmark_comparison(runs, refs)  # a benchmark directory: its own table
    if bench_md is not None:
        _emit(bench_md, markdown)
        return
    cmp = compare_runs(runs, refs, saliency_metric=saliency_metric)
    console.print(comparison_table(cmp))
    md = comparison_markdown(cmp)
    if markdown:
        atomic_write_text(Path(markdown), md)
        console.print(f"wrote [bold]{markdown}[/]")
    else:
        typer.echo(md, nl=False)


def _emit(md: str, markdown: str | None) -> None:
    """Write the benchmark's markdown to ``markdown``, or print it."""
    from pathlib import Path

    from mtlkit.utils import atomic_write_text

    if markdown:
        atomic_write_text(Path(markdown), md)
        console.print(f"wrote [bold]{markdown}[/]")
    else:
        typer.echo(md, nl=False)


@user_errors
def plot(
    run: Annotated[str, typer.Argument(help="run directory (with log.jsonl)")],
    out: Annotated[str | None, typer.Option(help="PNG path (default RUN/curves.png)")] = None,
) -> None:
    """Draw RUN/curves.png: training losses and validation main metrics over steps."""
    from mtlkit.engine.plot import plot_run

    path = plot_run(run, out)
    console.print(f"wrote [bold]{path}[/]")
