"""``create_model`` and model summaries (parameters and GFLOPs)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlkit.registry import ARCHS


def create_model(
    arch: str, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered arch for ``tasks`` (task -> output channels)."""
    builder = ARCHS.get(arch)
    model = builder(tasks, backbone=backbone, pretrained=pretrained, **kwargs)
    model.arch_name = arch
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: nn.Module, size: tuple[int, int] = (128, 160)) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) for one image of ``size`` in eval mode.

    The mtlkit ops run their ``reference`` implementation while counting: the count is that of
    the math (OPS.md), the same on every machine, and ``auto`` never measures candidates inside
    the counter (which would count their runs too, or depend on which one it picked)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mtlkit import ops

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *size)
    counter = FlopCounterMode(display=False)
    with ops.use(**{op: "reference" for op in ops.OPS}), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def model_summary(arch: str, tasks: dict[str, int], backbone: str = "tiny",
                  size: tuple[int, int] = (128, 160), **kwargs: Any) -> dict[str, float]:
    """``{"params_M", "gflops"}`` of an arch at an input ``size``."""
    from mtlkit.models.backbones import input_size_hint

    with input_size_hint(size):
        model = create_model(arch, tasks, backbone, **kwargs)
    return {"params_M": count_params(model) / 1e6, "gflops": count_gflops(model, size)}
