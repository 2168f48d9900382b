"""Metric tables: rich tables for the terminal and ``eval.json`` / ``eval.md`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from mtlkit.utils import atomic_write_json, atomic_write_text

UNITS = {
    "mIoU": "%", "pixel_acc": "%", "rmse": "", "log_rmse": "", "abs_rel": "", "sq_rel": "",
    "mean": "deg", "median": "deg", "within_11_25": "%", "within_22_5": "%", "within_30": "%",
    "odsF": "%", "oisF": "%", "AP": "%", "maxF": "%",
}


def scalar_items(vals: dict[str, Any]) -> list[tuple[str, float | None]]:
    """The scalar metrics of one task (lists such as per-class IoU are left out)."""
    return [(k, v) for k, v in vals.items() if v is None or isinstance(v, (int, float))]


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def metrics_table(metrics: dict[str, dict[str, Any]], title: str = "metrics") -> Table:
    """A rich table ``task | metric | value``."""
    table = Table(title=title)
    table.add_column("task", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for task, vals in metrics.items():
        for i, (k, v) in enumerate(scalar_items(vals)):
            unit = UNITS.get(k, "")
            table.add_row(task if i == 0 else "", f"{k} ({unit})" if unit else k, _fmt(v))
    return table


def metrics_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    lines = ["| task | metric | value |", "|---|---|---|"]
    for task, vals in metrics.items():
        for k, v in scalar_items(vals):
            unit = UNITS.get(k, "")
            lines.append(f"| {task} | {k}{f' ({unit})' if unit else ''} | {_fmt(v)} |")
    return "\n".join(lines) + "\n"


def figures_markdown(images: dict[str, list[str]]) -> str:
    """Markdown sections embedding images: ``{section title: [relative paths]}``."""
    parts = []
    for title, paths in images.items():
        if paths:
            parts.append(f"## {title}\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in paths)
                         + "\n")
    return "\n".join(parts)


def write_eval_files(out_dir: Path, result: dict[str, Any],
                     images: dict[str, list[str]] | None = None) -> None:
    """``eval.json`` (everything) and ``eval.md`` (a table) in ``out_dir``.

    ``images``: optional ``{section title: [paths relative to out_dir]}`` embedded in eval.md
    (training curves, prediction panels).
    """
    atomic_write_json(out_dir / "eval.json", result)
    md = (f"# Evaluation of `{result['checkpoint']}`\n\n"
          f"arch `{result.get('arch')}`, dataset `{result.get('dataset')}`, split "
          f"`{result['split']}`, step {result['step']}\n\n" + metrics_markdown(result["metrics"]))
    if images:
        figs = figures_markdown(images)
        if figs:
            md += "\n" + figs
    atomic_write_text(out_dir / "eval.md", md)
