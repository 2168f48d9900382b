"""``mtlkit evaluate`` and ``mtlkit predict``."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, err_console, user_errors


@user_errors
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="last.pt / best.pt of a run")],
    split: Annotated[str, typer.Option(help="train or val")] = "val",
    data: Annotated[str | None, typer.Option(help="override the run's .h5 file")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size (>= 1)")] = 8,
) -> None:
    """Evaluate a checkpoint; writes eval.json and eval.md next to it."""
    from mtlkit.engine.evaluator import evaluate_checkpoint
    from mtlkit.engine.report import metrics_table

    result = evaluate_checkpoint(checkpoint, split=split, data=data, batch_size=batch_size,
                                 console=err_console)
    console.print(f"{result['arch']} on {result['dataset']} ({split} split) at step "
                  f"{result['step']}: {checkpoint}", highlight=False)
    console.print(metrics_table(result["metrics"], title=None))


@user_errors
def predict(
    checkpoint: Annotated[str, typer.Option(help="last.pt / best.pt of a run")],
    images: Annotated[str, typer.Option(help="an image, a folder of images, or an .h5 file")],
    out: Annotated[str, typer.Option(help="output folder for PNG panels")],
    limit: Annotated[int, typer.Option(help="at most this many images (>= 1)")] = 16,
) -> None:
    """Write one PNG panel per image (input, each task's prediction, the ground truth of an .h5
    file, a class legend and a depth colour bar).

    Photos keep their aspect ratio and also get each task's prediction at their own resolution:
    NAME.semseg.png (indexed, the class palette), NAME.depth.npy (metres) and NAME.depth.png
    (with a scale bar), NAME.normals.png, NAME.edge.png. Unreadable files are reported and
    skipped.
    """
    from mtlkit.engine.predict import predict as run_predict

    def skipped(path, reason: str) -> None:
        err_console.print(f"[yellow]skipped:[/] {reason}", highlight=False, soft_wrap=True)

    paths = run_predict(checkpoint, images, out, limit=limit, on_skip=skipped)
    console.print(f"wrote {len(paths)} panels to [bold]{out}[/]")
