"""Compare runs: one table of runs x main metrics, with delta_m against single-task runs.

Each run is a run directory (DESIGN.md, "Run directory") or a JSON file written by mtlkit; a
benchmark directory (``mtlkit benchmark --out``) is compared by its own table
(:func:`benchmark_comparison`).
Which file of a run directory is read: ``report.json`` (the final evaluation of ``mtlkit
train``), unless ``eval.json`` (``mtlkit evaluate``) is newer *and* was computed on the ``val``
split, in which case ``eval.json`` is read (it holds the full-protocol metrics of a later
evaluation of the same run). :attr:`RunResult.source` says which file was used.

delta_m (MTI-Net eq. 2, :func:`mtlkit.metrics.delta_m.delta_m`, in %) of a run is computed over
the tasks of the run for which a single-task reference is given (``single_task`` runs: each
contributes the main metric of its one task); tasks without a reference, or whose main metric
is missing in the run, are left out of delta_m, and the comparison's ``notes`` say so.

Saliency's main metric is ``saliency_metric``: ``maxF`` (default; ATRC / InvPT) or ``mIoU``
(MTI-Net / MTL-PT), see :func:`mtlkit.metrics.delta_m.main_metrics`; the column header and a
note name the choice whenever saliency is compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics.delta_m import MAIN_METRICS, delta_m, main_metrics

#: Units of the main metrics, for the column headers.
MAIN_UNITS: dict[str, str] = {
    "semseg": "%", "parts": "%", "depth": "m", "normals": "deg", "edge": "%", "saliency": "%",
}


@dataclass
class RunResult:
    """The metrics of one run, as read from its report."""

    name: str
    path: Path
    source: Path
    metrics: dict[str, dict[str, Any]]
    tasks: list[str]
    arch: str | None = None


@dataclass
class ComparisonRow:
    run: RunResult
    values: dict[str, float | None]  # {task: main metric}
    delta_m: float | None = None
    delta_tasks: list[str] = field(default_factory=list)  # tasks delta_m is averaged over
    reference: bool = False  # a single-task reference row


@dataclass
class Comparison:
    tasks: list[str]  # the columns, in MAIN_METRICS order
    rows: list[ComparisonRow]
    has_delta: bool  # single-task references were given
    notes: list[str]
    main_metrics: dict[str, str] = field(default_factory=lambda: dict(MAIN_METRICS))
    saliency_metric: str = "maxF"  # saliency's main metric (maxF or mIoU)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(path)!r} ({e.__class__.__name__})",
                        "is it a report.json written by mtlkit?") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{str(path)!r} is corrupt (not JSON: {e.msg}, line {e.lineno})",
                        "re-run mtlkit evaluate on the run's checkpoint") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise DataError(f"{str(path)!r} has no 'metrics' object",
                        "pass a run directory or a report.json/eval.json written by mtlkit")
    for task, vals in data["metrics"].items():
        if not isinstance(vals, dict):
            raise DataError(f"{str(path)!r}: metrics of task {task!r} are not an object",
                            "the report is corrupt; re-run mtlkit evaluate")
    return data


def report_file(run: str | Path) -> Path:
    """The file a run's metrics are read from (see the module docstring)."""
    p = Path(run)
    if p.is_file():
        return p
    if not p.is_dir():
        raise ConfigError(f"run {str(p)!r} not found",
                          "pass a run directory written by mtlkit train (or its report.json)")
    report, ev = p / "report.json", p / "eval.json"
    if ev.is_file() and (not report.is_file() or ev.stat().st_mtime > report.stat().st_mtime):
        try:
            split = json.loads(ev.read_text()).get("split")
        except (OSError, ValueError, AttributeError):
            split = None
        if split == "val" or not report.is_file():
            return ev
    if not report.is_file():
        raise DataError(f"run {str(p)!r} has no report.json",
                        "did training finish? (or run mtlkit evaluate to write eval.json)")
    return report


def load_run(run: str | Path) -> RunResult:
    """Read one run's metrics; DataError/ConfigError when missing or corrupt."""
    src = report_file(run)
    data = _read_json(src)
    metrics = data["metrics"]
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        tasks = list(metrics)
    p = Path(run)
    name = p.name if p.is_dir() else (p.parent.name or p.stem)
    return RunResult(name=name or str(p), path=p, source=src, metrics=metrics,
                     tasks=[str(t) for t in tasks], arch=data.get("arch"))


def _main_value(metrics: dict[str, dict[str, Any]], task: str,
                main: dict[str, str] | None = None) -> float | None:
    v = metrics.get(task, {}).get((main or MAIN_METRICS)[task])
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def single_task_references(runs: list[RunResult], main: dict[str, str] | None = None
                           ) -> dict[str, dict[str, float]]:
    """``{task: {main metric: value}}`` from single-task runs (one task each).

    ``main``: the main metric per task (default ``MAIN_METRICS``; see ``main_metrics``).
    """
    main = main or MAIN_METRICS
    refs: dict[str, dict[str, float]] = {}
    owner: dict[str, str] = {}
    for r in runs:
        tasks = [t for t in r.tasks if t in MAIN_METRICS]
        if len(tasks) != 1:
            raise ConfigError(
                f"--single-task run {str(r.path)!r} has tasks {r.tasks}, not exactly one",
                "pass runs trained with a single task (e.g. --arch single --tasks depth)")
        (task,) = tasks
        if task in refs:
            raise ConfigError(
                f"two single-task references for {task!r}: {owner[task]!r} and {str(r.path)!r}",
                "pass one single-task run per task")
        value = _main_value(r.metrics, task, main)
        if value is None:
            raise DataError(f"single-task run {str(r.path)!r} has no {task}.{main[task]}",
                            "evaluate it (mtlkit evaluate) before comparing")
        refs[task] = {main[task]: value}
        owner[task] = str(r.path)
    return refs


def compare_runs(runs: list[str | Path], single_task: list[str | Path] | None = None,
                 saliency_metric: str = "maxF") -> Comparison:
    """Read the runs and the single-task references and build the comparison.

    ``saliency_metric``: saliency's main metric, ``maxF`` or ``mIoU`` (ConfigError otherwise).
    """
    main = main_metrics(saliency_metric)
    if not runs:
        raise ConfigError("no runs to compare", "pass at least one run directory")
    results = [load_run(r) for r in runs]
    st_results = [load_run(r) for r in (single_task or [])]
    refs = single_task_references(st_results, main)
    has_delta = bool(st_results)
    present = {t for r in results + st_results for t in r.metrics
               if t in main and _main_value(r.metrics, t, main) is not None}
    tasks = [t for t in MAIN_METRICS if t in present]
    notes: list[str] = []
    rows: list[ComparisonRow] = []
    for r in results:
        values = {t: _main_value(r.metrics, t, main) for t in tasks}
        row = ComparisonRow(run=r, values=values)
        if has_delta:
            run_tasks = [t for t in r.tasks if t in MAIN_METRICS] or [
                t for t in tasks if values[t] is not None]
            no_ref = [t for t in run_tasks if t not in refs]
            no_val = [t for t in run_tasks
                      if t in refs and _main_value(r.metrics, t, main) is None]
            use = [t for t in run_tasks if t in refs and t not in no_val]
            if use:
                mt = {t: {main[t]: _main_value(r.metrics, t, main)} for t in use}
                row.delta_m = delta_m(mt, {t: refs[t] for t in use}, main_metrics=main)
                row.delta_tasks = use
            if no_ref:
                notes.append(f"{r.name}: delta_m leaves out {', '.join(no_ref)} "
                             "(no single-task reference)")
            if no_val:
                notes.append(f"{r.name}: delta_m leaves out {', '.join(no_val)} "
                             "(metric missing in the run)")
            if not use:
                notes.append(f"{r.name}: no task with a single-task reference, delta_m n/a")
        rows.append(row)
    for r in st_results:
        rows.append(ComparisonRow(
            run=r, values={t: _main_value(r.metrics, t, main) for t in tasks}, reference=True))
    if not has_delta:
        notes.append("no --single-task runs given: delta_m not computed")
    if "saliency" in tasks:
        notes.append(saliency_note(saliency_metric))
    return Comparison(tasks=tasks, rows=rows, has_delta=has_delta, notes=notes,
                      main_metrics=main, saliency_metric=saliency_metric)


def saliency_note(saliency_metric: str) -> str:
    """One line naming saliency's main metric and whose convention it is."""
    who = {"maxF": "ATRC / InvPT", "mIoU": "MTI-Net / MTL-PT"}[saliency_metric]
    return (f"saliency scored by {saliency_metric} ({who}); choose with "
            "--saliency-metric maxF|mIoU")


#: One number format per column, by unit: metres with 4 decimals (the papers' rmse), % and
#: degrees with 2.
_UNIT_FORMAT = {"m": "{:.4f}", "%": "{:.2f}", "deg": "{:.2f}"}


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return _UNIT_FORMAT.get(unit, "{:.4f}").format(v)


def _headers(cmp: Comparison) -> list[str]:
    heads = ["run", "arch"]
    heads += [f"{t} {cmp.main_metrics[t]} ({MAIN_UNITS[t]})" for t in cmp.tasks]
    if cmp.has_delta:
        heads.append("delta_m (%)")
    return heads


def _cells(cmp: Comparison, row: ComparisonRow) -> list[str]:
    name = row.run.name + (" (single-task)" if row.reference else "")
    cells = [name, str(row.run.arch or "-")]
    cells += [_fmt(row.values.get(t), MAIN_UNITS.get(t, "")) for t in cmp.tasks]
    if cmp.has_delta:
        if row.reference:
            cells.append("ref")
        elif row.delta_m is None:
            cells.append("n/a")
        else:
            d = round(row.delta_m, 2)
            cells.append(f"{d if d != 0 else 0.0:+.2f}")  # no "-0.00" from rounding noise
    return cells


def comparison_table(cmp: Comparison, title: str = "comparison") -> Table:
    """A rich table of the comparison; the notes are its caption."""
    table = Table(title=title, caption="\n".join(cmp.notes) or None, caption_justify="left")
    for i, h in enumerate(_headers(cmp)):
        table.add_column(h, style="bold" if i == 0 else None, justify="left" if i < 2 else "right")
    for row in cmp.rows:
        table.add_row(*_cells(cmp, row))
    return table


def comparison_markdown(cmp: Comparison) -> str:
    """The same table in markdown, followed by the notes."""
    heads = _headers(cmp)
    lines = ["| " + " | ".join(heads) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(heads) - 2)) + "|"]
    for row in cmp.rows:
        lines.append("| " + " | ".join(_cells(cmp, row)) + " |")
    text = "\n".join(lines) + "\n"
    if cmp.notes:
        text += "\n" + "\n".join(f"- {n}" for n in cmp.notes) + "\n"
    return text


def benchmark_comparison(runs: list[str | Path], single_task: list[str | Path] | None = None
                         ) -> str | None:
    """The markdown table of a benchmark directory when ``runs`` is one; None for plain runs.

    A benchmark holds its own single-task references and seeds, so it is compared alone:
    mixing it with runs or ``--single-task`` references is a ConfigError.
    """
    from mtlkit.engine.bench_plan import is_benchmark_dir
    from mtlkit.engine.bench_table import benchmark_markdown

    bench = [r for r in runs if Path(r).is_dir() and is_benchmark_dir(r)]
    if not bench:
        return None
    if len(runs) > 1 or single_task:
        raise ConfigError(
            f"{str(bench[0])!r} is a benchmark directory; it cannot be mixed with other runs "
            "or --single-task references",
            "compare it alone (it holds its own references), or pass its runs/<name> folders")
    return benchmark_markdown(bench[0])
