"""``mtlkit list``: archs (with params and GFLOPs), papers, backbones, datasets, tasks, weightings.

Fast: counting an arch's FLOPs means building and running it, so the counts are remembered in
``<cache>/model-summaries.json`` (``$MTLKIT_CACHE`` or ``~/.cache/mtlkit``), keyed by arch,
task set, backbone, input size and a digest of the model sources (an edited model is counted
again). Without ``--flops`` only remembered GFLOPs are shown; parameters are counted by building
the model (about a second for all archs) and remembered alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import clean_help, console, parse_size, user_errors

#: The papers mtlkit implements (shared/papers/README.md), by their index number.
PAPERS: dict[str, tuple[str, str]] = {
    "000": ("BFCI", "Rethinking of Feature Interaction for Multi-task Learning on Dense "
            "Prediction (Bridge-Feature-Centric Interaction)"),
    "001": ("TIF", "Task-Interaction-Free Multi-Task Learning with Efficient Hierarchical "
            "Feature Representation"),
    "002": ("TPIM", "Task Pair Interaction Module with Iterative Fusion Block"),
    "003": ("MT-CP", "Optimizing Dense Visual Predictions Through Multi-Task Coherence and "
            "Prioritization"),
    "004": ("MTI-Net", "MTI-Net: Multi-Scale Task Interaction Networks"),
}
#: arch -> the paper it implements (padnet: PAD-Net as the single-scale case of MTI-Net).
ARCH_PAPER = {"bfci": "000", "tif": "001", "tpim": "002", "mtcp": "003", "mtinet": "004",
              "padnet": "004"}
_PAPER_REF = re.compile(r"papers?[ /](\d{3})")
_SUMMARY_CACHE = "model-summaries.json"


def describe(text: str) -> str:
    """Help text for a table: plain text, and papers by name instead of their index number."""
    text = clean_help(text) or ""

    def name(m: re.Match[str]) -> str:
        short = PAPERS.get(m.group(1), (f"paper {m.group(1)}", ""))[0]
        return f"{short} paper"

    return _PAPER_REF.sub(name, text)


def _source_digest() -> str:
    import mtlkit.models

    h = hashlib.sha1()
    root = Path(mtlkit.models.__file__).parent
    for p in sorted(root.glob("*.py")) + sorted((root.parent / "ops").glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cache_path() -> Path:
    from mtlkit.data.synthetic import cache_dir

    return cache_dir() / _SUMMARY_CACHE


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, Any]) -> None:
    from mtlkit.utils import atomic_write_json

    try:
        atomic_write_json(_cache_path(), cache)
    except Exception:  # noqa: BLE001 - the cache only saves time
        pass


def summaries(archs: list[str], tasks: dict[str, int], size: tuple[int, int], *,
              flops: bool) -> dict[str, dict[str, float | None]]:
    """``{arch: {"params_M", "gflops"}}``, remembered; ``gflops`` is None when not remembered
    and ``flops`` is False."""
    import torch

    cache = _read_cache()
    digest = f"{_source_digest()}-torch{torch.__version__}"
    out, changed = {}, False
    for arch in archs:
        t = {next(iter(tasks)): tasks[next(iter(tasks))]} if arch == "single" else tasks
        key = json.dumps([arch, t, "tiny", list(size), digest])
        entry = cache.get(key) if isinstance(cache.get(key), dict) else None
        if entry is None or (flops and entry.get("gflops") is None):
            entry = _summary(arch, t, size, flops)
            cache[key] = entry
            changed = True
        out[arch] = entry
    if changed:
        _write_cache(cache)
    return out


def _summary(arch: str, tasks: dict[str, int], size: tuple[int, int],
             flops: bool) -> dict[str, float | None]:
    from mtlkit.models.backbones import input_size_hint
    from mtlkit.models.factory import count_gflops, count_params, create_model

    with input_size_hint(size):
        model = create_model(arch, tasks, "tiny")
    return {"params_M": count_params(model) / 1e6,
            "gflops": count_gflops(model, size) if flops else None}


@user_errors
def list_(
    size: Annotated[str, typer.Option(help="input size for GFLOPs, HxW")] = "128x160",
    dataset: Annotated[
        str, typer.Option(help="task set used to build each arch")
    ] = "synthetic-nyud",
    flops: Annotated[bool, typer.Option(
        help="count the GFLOPs not yet remembered (builds and runs each such arch once)")
    ] = False,
) -> None:
    """List what mtlkit knows: archs (params, GFLOPs), papers, backbones, datasets, tasks,
    weightings."""
    from mtlkit.data import dataset_info
    from mtlkit.registry import ARCHS, BACKBONES, DATASETS, WEIGHTINGS
    from mtlkit.tasks import TASK_NAMES, get_task

    hw = parse_size(size)
    info = dataset_info(dataset)
    tasks = {t: get_task(t, info.get("num_classes", {}).get(t)).out_channels for t in info["tasks"]}
    names = ARCHS.names()
    counts = summaries(names, tasks, (hw[0], hw[1]), flops=flops)
    missing = any(c.get("gflops") is None for c in counts.values())
    table = Table(title=f"archs (tiny backbone, {dataset} tasks, {hw[0]}x{hw[1]} input)",
                  caption="GFLOPs not counted yet: `mtlkit list --flops` counts them once "
                  "(they are remembered)" if missing else None, caption_justify="left")
    for col, justify in (("arch", "left"), ("params (M)", "right"), ("GFLOPs", "right"),
                         ("paper", "left"), ("description", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name in names:
        c = counts[name]
        g = c.get("gflops")
        paper = PAPERS[ARCH_PAPER[name]][0] if name in ARCH_PAPER else "-"
        table.add_row(name, f"{c['params_M']:.2f}", "-" if g is None else f"{g:.2f}", paper,
                      describe(ARCHS.help(name)))
    console.print(table)
    papers = Table(title="papers")
    papers.add_column("paper")
    papers.add_column("title")
    papers.add_column("archs")
    for num, (short, title) in PAPERS.items():
        papers.add_row(short, title, ", ".join(a for a, p in ARCH_PAPER.items() if p == num))
    console.print(papers)
    for title, reg in (
        ("backbones", BACKBONES),
        ("datasets", DATASETS),
        ("weightings", WEIGHTINGS),
    ):
        t = Table(title=title)
        t.add_column("name")
        t.add_column("description")
        for name in reg.names():
            t.add_row(name, describe(reg.help(name)))
        if title == "backbones":
            t.add_row(
                "timm:<name>", "any hierarchical timm model (features_only), e.g. timm:hrnet_w18"
            )
        console.print(t)
    console.print("tasks: " + ", ".join(TASK_NAMES))
