"""Reference architectures every paper compares against.

- ``single``: one task, backbone + one head (the single-task baseline of delta_m, MTI-Net eq. 2).
- ``baseline``: a shared backbone and one head per task ("MTL baseline" of MTI-Net Table 1).

Both fuse the 4 backbone scales HRNet-style: upsample every scale to 1/4, concatenate, and apply
per-task heads; outputs are upsampled to the input size. ``image: (B, 3, H, W)`` ->
``{"final": {task: (B, C_t, H, W)}, "aux": []}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones import build_backbone
from mtlkit.models.blocks import ConvBNReLU, TaskHead, upsample_to
from mtlkit.registry import ARCHS


class MultiScaleFuse(nn.Module):
    """Upsample the 4 backbone scales to 1/4, concatenate and reduce to ``channels``."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(sum(in_channels), channels, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = torch.cat([upsample_to(f, feats[0]) for f in feats], dim=1)
        return self.reduce(x)


class SharedEncoderHeads(nn.Module):
    """Shared backbone + fused pyramid + one :class:`TaskHead` per task."""

    def __init__(
        self, tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
        channels: int = 64,
    ) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.backbone = build_backbone(backbone, pretrained=pretrained)
        self.fuse = MultiScaleFuse(self.backbone.channels, channels)
        self.heads = nn.ModuleDict({t: TaskHead(channels, c) for t, c in self.tasks.items()})

    def shared_parameters(self):
        """The last shared layer (GradNorm measures task gradients here)."""
        return self.fuse.parameters()

    def forward(self, image: Tensor) -> dict:
        x = self.fuse(self.backbone(image))
        final = {t: upsample_to(head(x), image) for t, head in self.heads.items()}
        return {"final": final, "aux": []}


@ARCHS.register("baseline")
def baseline(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
             channels: int = 64) -> nn.Module:
    """Shared encoder + per-task heads (the multi-task baseline)."""
    return SharedEncoderHeads(tasks, backbone, pretrained, channels)


@ARCHS.register("single")
def single(tasks: dict[str, int], backbone: str = "tiny", pretrained: str | None = None,
           channels: int = 64) -> nn.Module:
    """One task: backbone + one head (the single-task reference for delta_m)."""
    if len(tasks) != 1:
        raise ConfigError(
            f"arch 'single' trains exactly one task, got {sorted(tasks)}",
            "pass one task, e.g. --tasks semseg",
        )
    return SharedEncoderHeads(tasks, backbone, pretrained, channels)
