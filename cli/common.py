"""Shared CLI plumbing: one-line user errors, size parsing, the console, help text."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from mtlkit.errors import MtlkitError

#: Console width when the output is a file or a pipe (rich would assume 80 columns and squeeze
#: or cut table cells); ``COLUMNS`` still wins when set.
PIPE_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    """A rich console; as wide as :data:`PIPE_WIDTH` when not writing to a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(stderr=stderr, width=width)


console = make_console()
err_console = make_console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def clean_help(doc: str | None) -> str | None:
    """A docstring as command help: reST roles and literals as plain text (``:func:`x``` and
    double backticks become ``x``), and each paragraph's lines joined so the help formatter can
    wrap them."""
    if not doc:
        return doc
    import inspect

    text = _RST_LITERAL.sub(r"\1", _RST_ROLE.sub(r"\1", inspect.cleandoc(doc)))
    paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in text.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def user_errors(fn: F) -> F:
    """Turn :class:`MtlkitError` into one red line on stderr and exit status 2 (no traceback).

    Also cleans the command's help text (:func:`clean_help`).
    """

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

    wrapper.__doc__ = clean_help(fn.__doc__)
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
