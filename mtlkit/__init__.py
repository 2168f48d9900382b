"""mtlkit: multi-task dense prediction toolkit.

Public API (everything the CLI does is one of these calls)::

    from mtlkit import create_model, list_archs, train, evaluate, RunConfig
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def list_archs() -> list[str]:
    """Names of the registered architectures."""
    from mtlkit.registry import ARCHS

    return ARCHS.names()


def create_model(arch: str, tasks: dict[str, int], backbone: str = "tiny", **kwargs: Any):
    """Build a registered architecture (see :func:`mtlkit.models.factory.create_model`)."""
    from mtlkit.models.factory import create_model as _create

    return _create(arch, tasks, backbone, **kwargs)


def train(cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """Train as configured by a :class:`~mtlkit.config.RunConfig`; returns the report."""
    from mtlkit.engine.trainer import train as _train

    return _train(cfg, **kwargs)


def evaluate(checkpoint: str, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a checkpoint (see :func:`mtlkit.engine.evaluator.evaluate_checkpoint`)."""
    from mtlkit.engine.evaluator import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from mtlkit.config import RunConfig

        return RunConfig
    raise AttributeError(name)
