"""Small shared helpers: atomic file writes that fail with one clear error, seeding."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it to ``path``; on any
    failure the temporary file is removed and an ``OSError`` becomes an ``OutputError``."""
    path = Path(path)
    with os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    An ``OSError`` (full disk, read-only location, no permission, ...) becomes an
    :class:`~mtlkit.errors.OutputError` naming the path and the reason; the temporary file is
    removed and an existing ``path`` is left as it was.
    """
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half checkpoint.

    A failed write (full disk, ...) raises :class:`~mtlkit.errors.OutputError`; torch reports
    such failures as ``RuntimeError`` whose context is the ``OSError``, which is unwrapped here.
    """
    def save(f: BinaryIO) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = _os_error_in(e)
            if cause is None:
                raise
            raise cause from None

    _atomic_write(path, save)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all (a failed write is truncated away)."""
    path = Path(path)
    with os_errors(path), open(path, "ab") as f:
        start = f.tell()
        try:
            f.write(text.encode())
            f.flush()
        except OSError:
            try:
                f.truncate(start)
            except OSError:
                pass
            raise


def _os_error_in(e: BaseException) -> OSError | None:
    """The first ``OSError`` in the cause/context chain of ``e`` (``e`` itself included)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@contextmanager
def os_errors(path: str | Path, action: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` raised inside into an :class:`~mtlkit.errors.OutputError` (``path``)."""
    from mtlkit.errors import OutputError

    try:
        yield
    except OSError as e:
        raise OutputError.from_os_error(path, e, action) from None


def check_writable(path: str | Path, *, kind: str = "folder") -> None:
    """Raise :class:`~mtlkit.errors.OutputError` unless ``path`` can be written.

    ``kind="folder"``: ``path`` is (or will become) a folder; ``kind="file"``: a file inside
    its parent folder. Probes the nearest existing folder by creating and removing a temporary
    file there (permission bits alone do not tell: root ignores them, read-only mounts do not
    show in them). Nothing is left behind.
    """
    from mtlkit.errors import OutputError

    p = Path(path).expanduser()
    if kind == "file" and p.is_dir():
        raise OutputError(f"{str(p)!r} is a folder", "pass a file path")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutputError(f"{str(p)!r} exists and is not a folder",
                          "pass a folder path (or remove the file)")
    folder = p if kind == "folder" else p.parent
    probe = folder.absolute()
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise OutputError(f"cannot write {str(p)!r}: {str(probe)!r} is a broken link",
                              "choose another output location")
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {str(p)!r}: {str(probe)!r} is a file, not a folder",
                          "choose another output location")
    with os_errors(p):
        fd, tmp = tempfile.mkstemp(prefix=".mtlkit-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states needed to continue a run exactly."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ progress
class LineProgress:
    """Progress for logs and pipes: one plain line per 10 % (and at least every 60 s).

    Rich progress bars redraw one terminal line and print nothing readable when the output is
    a file or a pipe; this prints ``"<description>: 120/1000 (12%), 0:05 elapsed, ~0:36 left"``.
    """

    def __init__(self, description: str, total: int, file: Any = None,
                 min_interval_s: float = 60.0, start: int = 0) -> None:
        import sys
        import time

        self.description = description
        self.total = max(int(total), 0)
        self.done = self._first = start
        self.file = file if file is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self._clock = time.monotonic
        self._start = self._last = self._clock()
        self._last_decile = (10 * start // self.total if self.total else 10) if start else -1

    def advance(self, n: int = 1, note: str = "") -> None:
        self.update(self.done + n, note)

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        now = self._clock()
        decile = 10 * done // self.total if self.total else 10
        if decile > self._last_decile or now - self._last >= self.min_interval_s:
            self._last_decile = max(decile, self._last_decile)
            self._last = now
            self.print(note)

    def print(self, note: str = "") -> None:
        elapsed = self._clock() - self._start
        text = f"{self.description}: {self.done}/{self.total}"
        if self.total:
            text += f" ({100 * self.done // self.total}%)"
        text += f", {_hms(elapsed)} elapsed"
        if self._first < self.done < self.total:
            rate = elapsed / (self.done - self._first)
            text += f", ~{_hms(rate * (self.total - self.done))} left"
        if note:
            text += f", {note}"
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self.done < self.total or self._last_decile < 10:
            self.print()


def _hms(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True,
                 console: Any = None) -> Iterator[Any]:
    """Progress over ``total`` items; yields ``advance(n=1)``.

    A rich bar on a terminal, plain lines (:class:`LineProgress`) when the output is a file or
    a pipe, nothing when ``enabled`` is False. ``console``: the rich console to draw on
    (default: stderr).
    """
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console

    console = console if console is not None else Console(stderr=True)
    if not console.is_terminal:
        lines = LineProgress(description, total, file=console.file)
        yield lines.advance
        lines.close()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)
