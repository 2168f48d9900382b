"""Fixtures of the ops tests: a private, empty tuning state for tests of ``auto``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlkit.ops import dispatch, tuning


class FakeTimer:
    """An injected ``auto`` timer: fixed milliseconds per implementation name, calls counted.

    It runs the candidate once (so a candidate that fails while timed still fails) unless
    ``run=False``; names missing from ``times`` get 100 ms.
    """

    def __init__(self, times: dict[str, float] | None = None, run: bool = True,
                 check: Callable[[], None] | None = None) -> None:
        self.times = dict(times or {})
        self.run = run
        self.check = check
        self.calls: list[str] = []

    def __call__(self, name: str, fn: Callable[[], Any], device: torch.device) -> float:
        if self.check is not None:
            self.check()
        self.calls.append(name)
        if self.run:
            fn()
        return self.times.get(name, 100.0)


@pytest.fixture
def fresh_tuning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No remembered choice, no fallback warning given yet, ``MTLKIT_CACHE`` in ``tmp_path``
    (so nothing is written to the user's cache), no ``MTLKIT_IMPL`` / ``MTLKIT_TUNE``; yields
    the cache file's path."""
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTLKIT_IMPL", raising=False)
    monkeypatch.delenv("MTLKIT_TUNE", raising=False)
    tuning.reset()
    dispatch.reset_warnings()
    yield tmp_path / "cache" / tuning.CACHE_NAME
    tuning.reset()
    dispatch.reset_warnings()
