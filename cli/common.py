"""Shared CLI plumbing: one-line user errors, size parsing, the console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from mtlkit.errors import MtlkitError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn :class:`MtlkitError` into one red line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MtlkitError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_size(text: str | None) -> list[int] | None:
    """``"128x160"`` -> ``[128, 160]`` (H x W)."""
    from mtlkit.errors import ConfigError

    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"bad size {text!r}", "write HxW, e.g. 128x160") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"bad size {text!r}", "both sides must be positive")
    return [h, w]


def parse_list(text: str | None) -> list[str] | None:
    """``"semseg,depth"`` -> ``["semseg", "depth"]``."""
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]
