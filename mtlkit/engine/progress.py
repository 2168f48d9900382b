"""Progress for training and long evaluations: a rich bar on a terminal, plain lines in logs."""

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

from mtlkit.utils import LineProgress


class TrainProgress:
    """``step/steps`` progress showing the loss and images/s; a no-op when disabled.

    On a terminal it is a rich bar redrawn in place; when the console writes to a file or a pipe
    (a log) it prints one plain line per 10 % of the steps (:class:`~mtlkit.utils.LineProgress`),
    since a redrawn bar leaves nothing readable there.
    """

    def __init__(
        self, total: int, start: int = 0, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.enabled = enabled
        self.total = total
        self.lines: LineProgress | None = None
        if not enabled:
            return
        console = console or Console(stderr=True)
        if not console.is_terminal:
            self.lines = LineProgress("train", total, file=console.file, start=start)
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[ips]:.1f} img/s"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=total, completed=start, loss=0.0, ips=0.0, note=""
        )

    @property
    def _bar(self) -> bool:
        return self.enabled and self.lines is None

    def __enter__(self) -> TrainProgress:
        if self._bar:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar:
            self.progress.stop()

    def update(self, step: int, loss: float, ips: float) -> None:
        if self.lines is not None:
            self.lines.update(step, f"loss {loss:.4f}, {ips:.1f} img/s")
        elif self.enabled:
            self.progress.update(self.task, completed=step, loss=loss, ips=ips, note="")

    def note(self, text: str) -> None:
        if self._bar:
            self.progress.update(self.task, note=text)
            self.progress.refresh()
