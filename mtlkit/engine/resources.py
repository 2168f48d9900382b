"""What a training run costs, measured inside the run: inference speed and peak memory.

``report.json`` gets (from :class:`~mtlkit.engine.trainer.Trainer`):

- ``infer_images_per_s``: images per second of the model's forward passes during the run's final
  evaluation (eval mode, no autograd; :class:`ForwardTimer` times ``model(image)`` only, so data
  loading and metric scoring are not counted). Under DDP the per-process rates are summed.
  ``None`` when the process evaluated nothing (a run resumed after its final evaluation).
- ``peak_memory_mib`` and ``peak_memory_kind``: on CUDA ``torch.cuda.max_memory_allocated`` of
  the run's device (``"cuda_max_allocated"``: tensors only, not the caching allocator's reserve
  or the CUDA context); on the CPU the peak resident set size of the process
  (``"cpu_peak_rss"``: ``getrusage(RUSAGE_SELF).ru_maxrss``, which includes the Python
  interpreter and the imported libraries). Both are for this process only: a resumed run reports
  the peak of the process that finished it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn


class ForwardTimer:
    """Context manager timing every forward pass of ``module`` (the images of its first input).

    ``with ForwardTimer(model) as timer: run_evaluation(model, ...)`` then ``timer.images``,
    ``timer.seconds`` and :attr:`images_per_s`. On CUDA the device is synchronised before and
    after each forward, so the time is the forward's, not its launch's.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.images = 0
        self.seconds = 0.0
        self._start: float | None = None
        self._handles: list[Any] = []

    def _sync(self, x: Any) -> None:
        if torch.is_tensor(x) and x.is_cuda:
            torch.cuda.synchronize(x.device)

    def _pre(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        if args:
            self._sync(args[0])
        self._start = time.perf_counter()

    def _post(self, _module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        if self._start is None:
            return
        if args:
            self._sync(args[0])
        self.seconds += time.perf_counter() - self._start
        self._start = None
        if args and torch.is_tensor(args[0]) and args[0].dim() > 0:
            self.images += int(args[0].shape[0])

    def __enter__(self) -> ForwardTimer:
        self._handles = [self.module.register_forward_pre_hook(self._pre),
                         self.module.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def images_per_s(self) -> float | None:
        """Images per second over all timed forwards; None when nothing was timed."""
        if self.images == 0 or self.seconds <= 0.0:
            return None
        return self.images / self.seconds


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """``(MiB, kind)``: the peak memory of this process on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None, "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return float(mib), "cpu_peak_rss"
