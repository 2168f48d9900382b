"""Common base of the metric accumulators (SPEC-data-eval.md, "Metrics").

Every accumulator pools its statistics over a whole split (never an average of per-image
scores) and keeps them in ``state``: a dict of fixed-shape numpy float64/int64 arrays that are
plain *sums*. Two accumulators of the same configuration therefore merge by adding their states
(:meth:`Accumulator.merge`), which is what DDP needs (all-reduce with SUM, or gather + merge).

Protocol: ``update(pred, target)`` with the tensors of one batch, ``compute() -> dict``,
``merge(other)``, ``reset()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A numpy view/copy of a tensor (any device; bfloat16/half become float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def squeeze_channel(x: np.ndarray, ndim: int) -> np.ndarray:
    """Drop a singleton channel axis: (B, 1, H, W) -> (B, H, W) when ``ndim`` == 3 is wanted."""
    if x.ndim == ndim + 1 and x.shape[1] == 1:
        return x[:, 0]
    return x


def check_same_shape(pred: np.ndarray, target: np.ndarray, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} != target shape {target.shape}")


class Accumulator:
    """Base class: subclasses define :meth:`_empty_state`, :meth:`update`, :meth:`compute`."""

    state: dict[str, np.ndarray]

    def __init__(self) -> None:
        self.state = self._empty_state()

    def _empty_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.state = self._empty_state()

    def _config(self) -> tuple[Any, ...]:
        """Hyper-parameters that must agree for two accumulators to be merged."""
        return ()

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s state into this one (in place) and return ``self``.

        Equivalent to having fed both accumulators' batches to one accumulator.
        """
        if type(other) is not type(self) or other._config() != self._config():
            raise ValueError(
                f"cannot merge {type(other).__name__}{other._config()} into "
                f"{type(self).__name__}{self._config()}"
            )
        for key, value in self.state.items():
            o = other.state[key]
            if o.shape != value.shape:
                raise ValueError(f"state {key!r}: shape {o.shape} != {value.shape}")
            self.state[key] = value + o
        return self

    def update(self, pred: Any, target: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError
