"""Training curves of a run: ``RUN/curves.png`` from ``RUN/log.jsonl``.

Records with ``"loss"`` are training steps (``loss`` and the per-task ``loss_<task>``); records
with ``"metrics"`` are evaluations (each task's main metric is drawn). When a run was resumed
from an earlier checkpoint, the log holds some steps twice: the later record of a step wins.
A truncated last line (a crash during a write) is skipped. Drawn with matplotlib's Agg canvas
(no global backend switch, no display needed) and written atomically.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from mtlkit.errors import DataError
from mtlkit.metrics.delta_m import HIGHER_IS_BETTER, MAIN_METRICS
from mtlkit.utils import atomic_write_bytes

UNITS = {"semseg": "%", "parts": "%", "depth": "m", "normals": "deg", "edge": "%",
         "saliency": "%"}


def read_log(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train records, eval records)`` of a ``log.jsonl``, each sorted by step."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{str(p)!r} not found", "pass a run directory written by mtlkit train")
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    lines = p.read_text(errors="replace").splitlines()
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if not isinstance(rec, dict):
            bad += 1
            continue
        if isinstance(rec.get("metrics"), dict):
            evals[step] = rec
        if "loss" in rec:
            train[step] = rec
    if not train and not evals:
        raise DataError(f"{str(p)!r} has no training or evaluation records"
                        + (f" ({bad} unreadable lines)" if bad else ""),
                        "train the run for at least one logged step")
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_curves(log_path: str | Path, out: str | Path) -> Path:
    """Draw the curves of ``log_path`` into the PNG ``out``; returns ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, evals = read_log(log_path)
    tasks = [t for t in MAIN_METRICS
             if any(_finite((r["metrics"].get(t) or {}).get(MAIN_METRICS[t])) for r in evals)]
    n = 1 + len(tasks)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]

    ax = axes[0]
    keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
    positive = True
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if _finite(r.get(k))]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        positive = positive and min(ys) > 0
        ax.plot(xs, ys, label="total" if k == "loss" else k[len("loss_"):],
                linewidth=2.0 if k == "loss" else 1.0)
    if train:
        if positive:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no training records", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title("training loss")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)

    for ax, task in zip(axes[1:], tasks, strict=True):
        metric = MAIN_METRICS[task]
        pts = [(r["step"], r["metrics"][task][metric]) for r in evals
               if _finite((r["metrics"].get(task) or {}).get(metric))]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3)
        better = "higher" if HIGHER_IS_BETTER.get(task, True) else "lower"
        ax.set_title(f"val {task} {metric} ({better} is better)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} ({UNITS.get(task, '')})")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``RUN/curves.png`` (or ``out``) from ``RUN/log.jsonl``; returns the PNG's path."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run directory {str(run)!r} not found",
                        "pass a run directory written by mtlkit train")
    return plot_curves(run / "log.jsonl", out if out is not None else run / "curves.png")
