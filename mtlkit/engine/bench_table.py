"""The result of a benchmark: ``table.json``, ``table.md`` and ``table.png`` from its run reports.

Per arch (rows) and seed the reports of ``OUT/runs/<arch>-s<seed>`` are read; for every scalar
metric the table holds the mean, the sample standard deviation (ddof = 1) and the 95 % t
interval over the seeds (:mod:`mtlkit.engine.stats`).

delta_m (MTI-Net eq. 2, :func:`mtlkit.metrics.delta_m.delta_m`, in %) is computed *per seed*:
the arch's run of seed s against the single-task references of the same seed s
(``single-<task>-s<s>``), each task with its main metric (``MAIN_METRICS``; saliency with the
benchmark's ``--saliency-metric``, maxF by default). The table reports the per-seed values,
their mean, std and 95 % interval (t-distribution with n - 1 degrees of freedom, n = the
number of seeds). The per-task terms of eq. 2 are in table.json (``delta_per_task``).

Efficiency, per arch: parameters (from the run's report), forward GFLOPs for one image at the
benchmark's input size (:func:`mtlkit.models.factory.model_summary`, with the preset's model
kwargs), training images/s (median over the logged windows of ``log.jsonl``; every run logs every
``log_every`` steps), inference images/s (the forwards of the run's final evaluation, report
``infer_images_per_s``) and peak memory (report ``peak_memory_mib``: CPU peak RSS of the
training process, or CUDA max allocated); all measured in the run itself. The single-task row
describes the set of T reference models: params and GFLOPs summed (printed ``T x v`` when
equal), images/s of training (or running) all T models on one image, ``1 / sum_t 1/r_t``, and
the largest peak memory among them.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from mtlkit.engine.bench_plan import (
    BenchmarkSettings,
    benchmark_command,
    read_manifest,
    settings_from_manifest,
)
from mtlkit.engine.bench_runner import read_launches, read_report
from mtlkit.engine.report import display_value, metric_label
from mtlkit.engine.stats import spread
from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics.delta_m import HIGHER_IS_BETTER, MAIN_METRICS, delta_m, delta_per_task
from mtlkit.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

UNITS = {"semseg": "%", "parts": "%", "depth": "m", "normals": "deg", "edge": "%",
         "saliency": "%"}
CONFIDENCE = 0.95
TABLE_JSON, TABLE_MD, TABLE_PNG = "table.json", "table.md", "table.png"


def main_metrics_for(saliency_metric: str) -> dict[str, str]:
    """The main metric of every task, saliency's as chosen (``maxF`` or ``mIoU``)."""
    return {**MAIN_METRICS, "saliency": saliency_metric}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def train_images_per_s(run_dir: Path, report: dict[str, Any]) -> float | None:
    """Median images/s over the training windows logged in ``log.jsonl`` (else the report's)."""
    from mtlkit.engine.plot import read_log

    try:
        train, _ = read_log(run_dir / "log.jsonl")
    except DataError:
        train = []
    rates = [r for r in (_number(rec.get("images_per_s")) for rec in train) if r]
    if rates:
        return float(statistics.median(rates))
    return _number(report.get("images_per_s")) or None


_SUMMARIES: dict[str, tuple[float, float]] = {}  # model summaries computed in this process


def _gflops(arch: str, tasks: list[str], s: BenchmarkSettings, preset: str | None
            ) -> tuple[float, float]:
    """``(params_M, GFLOPs)`` of the arch at the benchmark's size with the preset's kwargs."""
    from mtlkit.config import load_config
    from mtlkit.data import dataset_info
    from mtlkit.models.factory import model_summary
    from mtlkit.tasks import get_task

    info = dataset_info(s.dataset)
    channels = {t: get_task(t, info.get("num_classes", {}).get(t)).out_channels for t in tasks}
    kwargs = dict(load_config(preset).model.kwargs) if preset else {}
    size = (int(s.size[0]), int(s.size[1])) if s.size else tuple(info["default_size"])
    key = json.dumps([arch, channels, s.backbone, size, kwargs], sort_keys=True, default=str)
    if key not in _SUMMARIES:
        summary = model_summary(arch, channels, s.backbone, size, **kwargs)
        _SUMMARIES[key] = (float(summary["params_M"]), float(summary["gflops"]))
    return _SUMMARIES[key]


def _reports(out: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{run name: report}`` for every run; DataError naming the unfinished ones."""
    steps = int(manifest["settings"]["steps"])
    reports, missing = {}, []
    for r in manifest["runs"]:
        rep = read_report(out / "runs" / r["name"])
        if rep is None or rep.get("steps") != steps or not isinstance(rep.get("metrics"), dict):
            missing.append(r["name"])
        else:
            reports[r["name"]] = rep
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4
                                          else "")
        raise DataError(f"benchmark {str(out)!r} is unfinished: {shown} "
                        f"{'has' if len(missing) == 1 else 'have'} no report of {steps} steps",
                        "re-run the same mtlkit benchmark command to finish it")
    return reports


def _metric_spreads(per_seed: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """``{task: {metric: Spread dict}}`` over the seeds' metrics (scalar metrics only)."""
    out: dict[str, Any] = {}
    for t in tasks:
        names: list[str] = []
        for m in per_seed:
            for k, v in (m.get(t) or {}).items():
                if k not in names and (v is None or _number(v) is not None):
                    names.append(k)
        out[t] = {k: spread([_number((m.get(t) or {}).get(k)) for m in per_seed],
                            CONFIDENCE).to_dict() for k in names}
    return out


def _harmonic_total(rates: list[float | None]) -> float | None:
    """Images/s of running every model once per image: ``1 / sum 1/r``."""
    if not rates or any(not r for r in rates):
        return None
    return 1.0 / math.fsum(1.0 / r for r in rates if r)


def build_table(out: str | Path, saliency_metric: str | None = None) -> dict[str, Any]:
    """Read the benchmark in ``out`` and compute ``table.json``'s content (module docstring)."""
    out = Path(out)
    manifest = read_manifest(out)
    s = settings_from_manifest(manifest)
    metric = saliency_metric or s.saliency_metric
    if metric not in ("maxF", "mIoU"):
        raise ConfigError(f"unknown saliency metric {metric!r}", "choose maxF or mIoU")
    s.saliency_metric = metric
    mains = main_metrics_for(metric)
    reports = _reports(out, manifest)
    tasks = list(s.tasks or [])
    seeds = list(s.seeds)
    runs = {(r["arch"], r["seed"], tuple(r["tasks"])): r for r in manifest["runs"]}
    presets = {r["arch"]: r.get("preset") for r in manifest["runs"]}

    def rep(arch: str, seed: int, run_tasks: list[str]) -> tuple[str, dict[str, Any]]:
        name = runs[(arch, seed, tuple(run_tasks))]["name"]
        return name, reports[name]

    rows: list[dict[str, Any]] = []
    # --- the single-task references
    ref_metrics: dict[int, dict[str, Any]] = {}
    ref_eff: dict[str, list[float | None]] = {"train": [], "infer": [], "peak": []}
    ref_runs: dict[str, dict[str, str]] = {}
    for seed in seeds:
        ref_metrics[seed] = {}
        tr, inf, peak = [], [], []
        for t in tasks:
            name, r = rep("single", seed, [t])
            ref_metrics[seed][t] = r["metrics"].get(t) or {}
            ref_runs.setdefault(str(seed), {})[t] = name
            tr.append(train_images_per_s(out / "runs" / name, r))
            inf.append(_number(r.get("infer_images_per_s")))
            peak.append(_number(r.get("peak_memory_mib")))
        ref_eff["train"].append(_harmonic_total(tr))
        ref_eff["infer"].append(_harmonic_total(inf))
        ref_eff["peak"].append(max((p for p in peak if p is not None), default=None))
    single_sizes = [_gflops("single", [t], s, presets.get("single")) for t in tasks]
    rows.append({
        "arch": "single", "reference": True, "runs": ref_runs,
        "params_M": [p for p, _ in single_sizes], "gflops": [g for _, g in single_sizes],
        "metrics": _metric_spreads([ref_metrics[sd] for sd in seeds], tasks),
        "train_images_per_s": spread(ref_eff["train"], CONFIDENCE).to_dict(),
        "infer_images_per_s": spread(ref_eff["infer"], CONFIDENCE).to_dict(),
        "peak_memory_mib": spread(ref_eff["peak"], CONFIDENCE).to_dict(),
        "peak_memory_kind": _peak_kind(reports),
    })
    # --- the multi-task archs
    for arch in s.archs:
        per_seed, dms, names = [], [], {}
        per_task: dict[str, list[float | None]] = {t: [] for t in tasks}
        tr, inf, peak, params = [], [], [], []
        for seed in seeds:
            name, r = rep(arch, seed, tasks)
            names[str(seed)] = name
            m = r["metrics"]
            per_seed.append(m)
            mt = {t: m.get(t) or {} for t in tasks}
            dms.append(delta_m(mt, ref_metrics[seed], mains, HIGHER_IS_BETTER))
            for t, v in delta_per_task(mt, ref_metrics[seed], mains, HIGHER_IS_BETTER).items():
                per_task[t].append(v)
            tr.append(train_images_per_s(out / "runs" / name, r))
            inf.append(_number(r.get("infer_images_per_s")))
            peak.append(_number(r.get("peak_memory_mib")))
            params.append(_number(r.get("params")))
        _, gflops = _gflops(arch, tasks, s, presets.get(arch))
        dm = spread(dms, CONFIDENCE).to_dict()
        dm["per_seed"] = {str(sd): v for sd, v in zip(seeds, dms, strict=True)}
        rows.append({
            "arch": arch, "reference": False, "runs": names, "preset": presets.get(arch),
            "params_M": (params[0] / 1e6) if params and params[0] is not None else None,
            "gflops": gflops,
            "metrics": _metric_spreads(per_seed, tasks),
            "delta_m": dm,
            "delta_per_task": {t: spread(v, CONFIDENCE).to_dict() for t, v in per_task.items()},
            "train_images_per_s": spread(tr, CONFIDENCE).to_dict(),
            "infer_images_per_s": spread(inf, CONFIDENCE).to_dict(),
            "peak_memory_mib": spread(peak, CONFIDENCE).to_dict(),
            "peak_memory_kind": _peak_kind(reports),
        })
    launches = read_launches(out)
    return {
        "kind": "mtlkit-benchmark-table",
        "command": benchmark_command(s, manifest.get("out") or out),
        "settings": s.identity() | {"saliency_metric": metric},
        "seeds": seeds, "n": len(seeds), "confidence": CONFIDENCE,
        "tasks": tasks,
        "saliency_metric": metric,
        "saliency_in_delta_m": "saliency" in tasks,
        "main_metrics": {t: mains[t] for t in tasks},
        "delta_m_definition": "MTI-Net eq. 2 over the tasks' main metrics, in %, per seed "
                              "against the single-task runs of the same seed",
        "interval": f"mean +- t(0.975, n-1) * std / sqrt(n), n = {len(seeds)} seeds",
        "threads_per_run": sorted({int(x["threads"]) for x in launches if x.get("ok")}),
        "runs_at_a_time": sorted({int(x["jobs"]) for x in launches if x.get("ok") and
                                  x.get("jobs")}),
        "gpus": sorted({str(x["gpu"]) for x in launches if x.get("ok") and x.get("gpu")}),
        "rows": rows,
    }


def _peak_kind(reports: dict[str, dict[str, Any]]) -> str | None:
    kinds = {r.get("peak_memory_kind") for r in reports.values() if r.get("peak_memory_kind")}
    return ", ".join(sorted(kinds)) if kinds else None


# --------------------------------------------------------------------------- markdown
def _fmt(v: float | None, ref: float | None = None, sign: bool = False,
         digits: int | None = None) -> str:
    """``digits`` decimals, else four below 10 (of ``ref`` when given) and two above."""
    if v is None:
        return "-"
    if digits is None:
        digits = 4 if abs(ref if ref is not None else v) < 10 else 2
    if sign:
        v = round(v, digits) or 0.0  # no "-0.00"
        return f"{v:+.{digits}f}"
    return f"{v:.{digits}f}"


def _pm(sp: dict[str, Any], sign: bool = False, digits: int | None = None) -> str:
    """``mean ± std`` (just the mean with one seed); the std with the mean's decimals."""
    if sp["mean"] is None:
        return "-"
    text = _fmt(sp["mean"], sign=sign, digits=digits)
    if sp["std"] is not None:
        text += f" ± {_fmt(sp['std'], ref=sp['mean'], digits=digits)}"
    return text


def _rate(sp: dict[str, Any], digits: int = 1) -> str:
    """Throughput / memory: ``mean ± std`` with ``digits`` decimals."""
    if sp["mean"] is None:
        return "-"
    text = f"{sp['mean']:.{digits}f}"
    return text + (f" ± {sp['std']:.{digits}f}" if sp["std"] is not None else "")


def _ci(sp: dict[str, Any]) -> str:
    """``[low, high]`` of a delta_m interval (percent, two decimals)."""
    if sp["ci_low"] is None:
        return f"n/a (n = {sp['n']})"
    low, high = (_fmt(sp[k], sign=True, digits=2) for k in ("ci_low", "ci_high"))
    return f"[{low}, {high}]"


def _sizes(values: list[float], digits: int = 2) -> str:
    if len(set(round(v, digits) for v in values)) == 1:
        return f"{len(values)} x {values[0]:.{digits}f}"
    return f"{math.fsum(values):.{digits}f} (sum)"


def table_markdown(table: dict[str, Any]) -> str:
    """``table.md``: the command, the main table (README-ready), notes, then all metrics."""
    st = table["settings"]
    tasks, mains, n = table["tasks"], table["main_metrics"], table["n"]
    h, w = st["size"]
    pct = f"{table['confidence'] * 100:g} %"
    heads = (["arch", "params (M)", f"GFLOPs ({h}x{w})"]
             + [f"{t} {mains[t]} ({UNITS.get(t, '')})" for t in tasks]
             + ["delta_m (%)", f"delta_m {pct} CI", "delta_m per seed", "train img/s",
                "infer img/s", "peak mem (MiB)"])
    lines = [
        f"`{table['command']}`",
        "",
        f"{st['dataset']}, backbone {st['backbone']}, {h}x{w}, batch {st['batch_size']}, "
        f"{st['steps']} steps, seeds {', '.join(str(x) for x in table['seeds'])} (n = {n}); "
        "cells are mean ± sample std over the seeds.",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|",
    ]
    for row in table["rows"]:
        metrics = [_pm(row["metrics"][t].get(mains[t], _EMPTY)) for t in tasks]
        eff = [_rate(row["train_images_per_s"]), _rate(row["infer_images_per_s"]),
               _rate(row["peak_memory_mib"], digits=0)]
        if row["reference"]:
            cells = [f"single (x{len(tasks)})", _sizes(row["params_M"]), _sizes(row["gflops"]),
                     *metrics, "0 (reference)", "", "", *eff]
        else:
            dm = row["delta_m"]
            per_seed = ", ".join(_fmt(v, sign=True, digits=2) for v in dm["per_seed"].values())
            cells = [row["arch"], _fmt(row["params_M"], digits=2), _fmt(row["gflops"], digits=2),
                     *metrics, _pm(dm, sign=True, digits=2), _ci(dm), per_seed, *eff]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in _notes(table)], ""]
    lines += _all_metrics_markdown(table)
    return "\n".join(lines).rstrip() + "\n"


_EMPTY = {"mean": None, "std": None}


def _notes(table: dict[str, Any]) -> list[str]:
    tasks, mains, n = table["tasks"], table["main_metrics"], table["n"]
    used = ", ".join(f"{t} {mains[t]}" for t in tasks)
    sal = table["saliency_metric"]
    notes = [
        f"delta_m: MTI-Net eq. 2 over {used}, computed per seed against the single-task "
        f"runs of the same seed; mean ± sample std (ddof 1) over n = {n} seeds, and the "
        f"{table['confidence'] * 100:g} % interval mean ± t(0.975, {n - 1}) · std / √{n} "
        "(Student's t)." if n > 1 else
        f"delta_m: MTI-Net eq. 2 over {used}, against the single-task runs of the same seed; "
        "one seed, so no spread or interval.",
        (f"Saliency enters delta_m with {sal}." if table["saliency_in_delta_m"] else
         f"Saliency metric for delta_m: {sal} (no saliency task in this benchmark)."),
        "Single row: the separate single-task models, one per task (params and GFLOPs summed, "
        "images/s of all of them per image, the largest peak memory).",
        "Train img/s: median over the logged training windows of each run; infer img/s: the "
        "forward passes of the run's final evaluation; peak memory: "
        f"{_peak_text(table)}; all measured in the runs themselves"
        + _threads_text(table) + ".",
    ]
    return notes


def _peak_text(table: dict[str, Any]) -> str:
    kinds = {row.get("peak_memory_kind") for row in table["rows"]} - {None}
    texts = {"cpu_peak_rss": "peak resident set size of the training process (CPU; it includes "
                             "the interpreter and the libraries)",
             "cuda_max_allocated": "torch.cuda.max_memory_allocated of the training process"}
    return " / ".join(texts.get(k, k) for k in sorted(kinds)) or "not measured"


def _threads_text(table: dict[str, Any]) -> str:
    """How the runs were executed, from launches.jsonl."""
    threads, gpus = table.get("threads_per_run") or [], table.get("gpus") or []
    jobs = table.get("runs_at_a_time") or []
    at_once = f", {'/'.join(str(j) for j in jobs)} run(s) at a time" if jobs else ""
    if gpus:
        return f" (one GPU per run; GPUs {', '.join(gpus)}{at_once})"
    if threads:
        return f" ({'/'.join(str(t) for t in threads)} CPU thread(s) per run{at_once})"
    return ""


def _shown(metric: str, sp: dict[str, Any]) -> dict[str, Any]:
    """Mean and std of ``sp`` in the unit the tables print (delta1-3: fractions -> %)."""
    return {**sp, "mean": display_value(metric, sp["mean"]),
            "std": display_value(metric, sp["std"])}


def _all_metrics_markdown(table: dict[str, Any]) -> list[str]:
    lines = [f"## All metrics (mean ± std over n = {table['n']} seeds)", ""]
    for t in table["tasks"]:
        names = []
        for row in table["rows"]:
            for k in row["metrics"][t]:
                if k not in names:
                    names.append(k)
        lines += [f"### {t}", "", "| arch | " + " | ".join(metric_label(t, k) for k in names)
                  + " |", "|---|" + "---:|" * len(names)]
        for row in table["rows"]:
            label = "single" if row["reference"] else row["arch"]
            lines.append(f"| {label} | " + " | ".join(
                _pm(_shown(k, row["metrics"][t].get(k, _EMPTY))) for k in names) + " |")
        lines.append("")
    return lines


# --------------------------------------------------------------------------- plot
def plot_table(table: dict[str, Any], path: str | Path) -> Path:
    """``table.png``: delta_m (mean, with its interval as error bars) against GFLOPs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for row in table["rows"]:
        if row["reference"]:
            x = math.fsum(row["gflops"])
            ax.scatter([x], [0.0], marker="s", color="grey", zorder=3)
            ax.annotate(f"single (x{len(row['gflops'])})", (x, 0.0), textcoords="offset points",
                        xytext=(5, -12), fontsize=8, color="grey")
            continue
        dm = row["delta_m"]
        yerr = None
        if dm["ci_low"] is not None:
            yerr = [[dm["mean"] - dm["ci_low"]], [dm["ci_high"] - dm["mean"]]]
        ax.errorbar([row["gflops"]], [dm["mean"]], yerr=yerr, fmt="o", capsize=4, zorder=4)
        ax.annotate(row["arch"], (row["gflops"], dm["mean"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=9)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    st = table["settings"]
    h, w = st["size"]
    ax.set_xlabel(f"GFLOPs per image ({h}x{w})")
    ax.set_ylabel("delta_m vs single-task (%)")
    bars = (f"mean and {table['confidence'] * 100:g} % t interval" if table["n"] > 1
            else "one seed")
    ax.set_title(f"{st['dataset']}, {st['steps']} steps, n = {table['n']} seeds ({bars})",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def write_table(out: str | Path, table: dict[str, Any]) -> list[Path]:
    """Write ``table.json``, ``table.md`` and ``table.png`` into ``out`` (atomically each)."""
    out = Path(out)
    atomic_write_json(out / TABLE_JSON, table)
    atomic_write_text(out / TABLE_MD, table_markdown(table))
    plot_table(table, out / TABLE_PNG)
    return [out / TABLE_JSON, out / TABLE_MD, out / TABLE_PNG]


def benchmark_markdown(out: str | Path) -> str:
    """The table of a benchmark directory: ``table.md`` when written, else built from the runs."""
    out = Path(out)
    md = out / TABLE_MD
    if md.is_file():
        return md.read_text()
    read_manifest(out)  # DataError when not a benchmark
    return table_markdown(build_table(out))

