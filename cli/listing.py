"""``mtlkit list``: archs (with params and GFLOPs), backbones, datasets, tasks, weightings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, parse_size, user_errors


@user_errors
def list_(
    size: Annotated[str, typer.Option(help="input size for GFLOPs, HxW")] = "128x160",
    dataset: Annotated[
        str, typer.Option(help="task set used to build each arch")
    ] = "synthetic-nyud",
) -> None:
    """List what mtlkit knows: archs (params, GFLOPs), backbones, datasets, tasks, weightings."""
    from mtlkit.data import dataset_info
    from mtlkit.models.factory import model_summary
    from mtlkit.registry import ARCHS, BACKBONES, DATASETS, WEIGHTINGS
    from mtlkit.tasks import TASK_NAMES, get_task

    hw = parse_size(size)
    info = dataset_info(dataset)
    tasks = {t: get_task(t, info.get("num_classes", {}).get(t)).out_channels for t in info["tasks"]}
    table = Table(title=f"archs (tiny backbone, {dataset} tasks, {hw[0]}x{hw[1]} input)")
    for col in ("arch", "params (M)", "GFLOPs", "description"):
        table.add_column(col)
    for name in ARCHS.names():
        t = {next(iter(tasks)): tasks[next(iter(tasks))]} if name == "single" else tasks
        s = model_summary(name, t, "tiny", size=(hw[0], hw[1]))
        table.add_row(name, f"{s['params_M']:.2f}", f"{s['gflops']:.2f}", ARCHS.help(name))
    console.print(table)
    for title, reg in (
        ("backbones", BACKBONES),
        ("datasets", DATASETS),
        ("weightings", WEIGHTINGS),
    ):
        t = Table(title=title)
        t.add_column("name")
        t.add_column("description")
        for name in reg.names():
            t.add_row(name, reg.help(name))
        if title == "backbones":
            t.add_row(
                "timm:<name>", "any hierarchical timm model (features_only), e.g. timm:hrnet_w18"
            )
        console.print(t)
    console.print("tasks: " + ", ".join(TASK_NAMES))
