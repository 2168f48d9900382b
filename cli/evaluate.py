"""``mtlkit evaluate`` and ``mtlkit predict``."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, user_errors


@user_errors
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="last.pt / best.pt of a run")],
    split: Annotated[str, typer.Option(help="train or val")] = "val",
    data: Annotated[str | None, typer.Option(help="override the run's .h5 file")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 8,
) -> None:
    """Evaluate a checkpoint; writes eval.json and eval.md next to it."""
    from mtlkit.engine.evaluator import evaluate_checkpoint
    from mtlkit.engine.report import metrics_table

    result = evaluate_checkpoint(checkpoint, split=split, data=data, batch_size=batch_size)
    console.print(metrics_table(result["metrics"], title=f"{checkpoint} ({split})"))


@user_errors
def predict(
    checkpoint: Annotated[str, typer.Option(help="last.pt / best.pt of a run")],
    images: Annotated[str, typer.Option(help="an image, a folder of images, or an .h5 file")],
    out: Annotated[str, typer.Option(help="output folder for PNG panels")],
    limit: Annotated[int, typer.Option(help="at most this many images")] = 16,
) -> None:
    """Write one PNG panel per image: input, each task's prediction and its ground truth."""
    from mtlkit.engine.predict import predict as run_predict

    paths = run_predict(checkpoint, images, out, limit=limit)
    console.print(f"wrote {len(paths)} panels to [bold]{out}[/]")
