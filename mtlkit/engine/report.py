"""Metric tables: rich tables for the terminal and ``eval.json`` / ``eval.md`` files.

Every row names its unit as the papers print it: mIoU, pixel accuracy, boundary/saliency
F-measures, AP, the % of normals within an angle and depth delta1-3 in % (delta1-3 are stored as
fractions in the JSON files, DESIGN.md, and shown x100 here), depth rmse and sq_rel in metres,
angles in degrees; the dimensionless ones say what they are (ratio, ln, threshold). Values share
one format, :data:`VALUE_FORMAT`, so a column reads the same all the way down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from mtlkit.utils import atomic_write_json, atomic_write_text

#: metric -> unit, for metrics whose unit does not depend on the task.
UNITS = {
    "mIoU": "%", "pixel_acc": "%", "log_rmse": "ln", "abs_rel": "ratio", "sq_rel": "m",
    "delta1": "%", "delta2": "%", "delta3": "%",
    "mean": "deg", "median": "deg", "within_11_25": "%", "within_22_5": "%", "within_30": "%",
    "odsF": "%", "odsT": "threshold", "oisF": "%", "AP": "%", "maxF": "%",
    "maxF_threshold": "threshold", "mIoU_threshold": "threshold",
}
#: (task, metric) -> unit where the task decides (``rmse`` of depth vs of normals).
TASK_UNITS = {("depth", "rmse"): "m", ("normals", "rmse"): "deg"}
#: Metrics stored as fractions in [0, 1] but printed in % (as the papers print them).
PERCENT_FROM_FRACTION = frozenset({"delta1", "delta2", "delta3"})
#: The one number format of every value column.
VALUE_FORMAT = "{:.3f}"


def metric_unit(task: str, metric: str) -> str:
    """The unit a metric is shown in (``""`` when unknown)."""
    return TASK_UNITS.get((task, metric), UNITS.get(metric, ""))


def display_value(metric: str, value: float | None) -> float | None:
    """The value as shown in tables (fractions in % where the papers print %)."""
    if value is None:
        return None
    return value * 100.0 if metric in PERCENT_FROM_FRACTION else value


def metric_label(task: str, metric: str) -> str:
    unit = metric_unit(task, metric)
    return f"{metric} ({unit})" if unit else metric


def scalar_items(vals: dict[str, Any]) -> list[tuple[str, float | None]]:
    """The scalar metrics of one task (lists such as per-class IoU are left out)."""
    return [(k, v) for k, v in vals.items() if v is None or isinstance(v, (int, float))]


def format_value(v: float | None) -> str:
    """:data:`VALUE_FORMAT`, ``n/a`` for a missing value."""
    if v is None:
        return "n/a"
    return VALUE_FORMAT.format(v)


def metric_rows(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(task, "metric (unit)", value text)`` for every scalar metric."""
    return [(task, metric_label(task, k), format_value(display_value(k, v)))
            for task, vals in metrics.items() for k, v in scalar_items(vals)]


def metrics_table(metrics: dict[str, dict[str, Any]], title: str | None = "metrics") -> Table:
    """A rich table ``task | metric (unit) | value``."""
    table = Table(title=title)
    table.add_column("task", style="bold")
    table.add_column("metric (unit)")
    table.add_column("value", justify="right")
    last = None
    for task, label, value in metric_rows(metrics):
        table.add_row(task if task != last else "", label, value)
        last = task
    return table


def metrics_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    lines = ["| task | metric (unit) | value |", "|---|---|---:|"]
    lines += [f"| {task} | {label} | {value} |" for task, label, value in metric_rows(metrics)]
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
