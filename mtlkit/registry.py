"""Name -> builder registries (detectron2/timm style).

Contract of each registry:

- ``ARCHS``: ``builder(tasks: dict[str, int], backbone: str = "tiny", **kwargs) -> nn.Module``;
  the module's ``forward(image)`` returns ``{"final": {task: tensor}, "aux": [ {task: tensor} ]}``.
- ``BACKBONES``: ``builder(**kwargs) -> nn.Module`` returning 4 feature maps at strides 4..32 and
  exposing ``channels: list[int]``.
- ``DATASETS``: ``builder(path, split, tasks, size, train, ...) -> torch Dataset``.
- ``WEIGHTINGS``: ``builder(tasks, base_weights, **kwargs) -> Weighting``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mtlkit.errors import UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A mapping from names to builders, filled by the ``@REG.register("name")`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; a duplicate name is a bug."""

        def deco(fn: F) -> F:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            doc = (fn.__doc__ or "").strip().splitlines()
            self._help[name] = help or (doc[0] if doc else "")
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """The builder for ``name``, or UnknownNameError listing the known names."""
        _import_all()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}", f"choose one of: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        _import_all()
        return sorted(self._items)

    def help(self, name: str) -> str:
        _import_all()
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        _import_all()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


ARCHS = Registry("arch")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
WEIGHTINGS = Registry("weighting")

_IMPORTED = False


def _import_all() -> None:
    """Import the modules that register builders (once, lazily, to avoid import cycles)."""
    global _IMPORTED
    if _IMPORTED:
        return
    _IMPORTED = True
    import importlib

    for mod in (
        "mtlkit.models",
        "mtlkit.data",
        "mtlkit.weighting",
    ):
        importlib.import_module(mod)
