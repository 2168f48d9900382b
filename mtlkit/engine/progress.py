"""Rich progress bars for training and long evaluations."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """``step/steps`` bar showing the loss and images/s; a no-op when disabled."""

    def __init__(
        self, total: int, start: int = 0, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.enabled = enabled
        self.total = total
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[ips]:.1f} img/s"),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console or Console(stderr=True),
                transient=False,
            )
            self.task = self.progress.add_task(
                "train", total=total, completed=start, loss=0.0, ips=0.0, note=""
            )

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, step: int, loss: float, ips: float) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step, loss=loss, ips=ips, note="")

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.update(self.task, note=text)
            self.progress.refresh()
