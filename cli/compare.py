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
) -> None:
    """One table of runs x main metrics, with delta_m (%) against --single-task runs.

    Reads RUN/report.json, or RUN/eval.json when it is newer and on the val split.
    """
    from pathlib import Path

    from mtlkit.engine.compare import compare_runs, comparison_markdown, comparison_table
    from mtlkit.utils import atomic_write_text, check_writable

    if markdown and markdown != "-":
        check_writable(markdown, kind="file")
    refs = [r for item in (single_task or []) for r in (parse_list(item) or [])]
    cmp = compare_runs(runs, refs)
    if markdown == "-":
        typer.echo(comparison_markdown(cmp), nl=False)
        return
    console.print(comparison_table(cmp))
    if markdown:
        atomic_write_text(Path(markdown), comparison_markdown(cmp))
        console.print(f"wrote [bold]{markdown}[/]")


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
