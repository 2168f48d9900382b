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
        str | None, typer.Option(
            help="also write the table as markdown to this file ('-': print markdown instead "
            "of the table)")
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
    from mtlkit.utils import atomic_write_text, check_writable

    if markdown and markdown != "-":
        check_writable(markdown, kind="file")
    refs = [r for item in (single_task or []) for r in (parse_list(item) or [])]
    bench_md = benchmark_comparison(runs, refs)  # a benchmark directory: its own table
    if bench_md is not None:
        _emit(bench_md, markdown)
        return
    cmp = compare_runs(runs, refs, saliency_metric=saliency_metric)
    if markdown == "-":
        typer.echo(comparison_markdown(cmp), nl=False)
        return
    console.print(comparison_table(cmp))
    if markdown:
        atomic_write_text(Path(markdown), comparison_markdown(cmp))
        console.print(f"wrote [bold]{markdown}[/]")


def _emit(md: str, markdown: str | None) -> None:
    """Write the benchmark's markdown table to ``markdown``, or print it (no path, or ``-``)."""
    from pathlib import Path

    from mtlkit.utils import atomic_write_text

    if markdown and markdown != "-":
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
    from pathlib import Path

    from mtlkit.engine.plot import plot_run
    from mtlkit.utils import check_writable

    check_writable(out if out else Path(run) / "curves.png", kind="file")
    path = plot_run(run, out)
    console.print(f"wrote [bold]{path}[/]")
