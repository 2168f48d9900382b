"""Shared layers used by every architecture.

Shapes use ``x: (B, C, H, W)``. Blocks: conv-BN-ReLU, squeeze-and-excitation (used by MTI-Net's
FPM), CBAM (used by MT-CP), a token FFN (used by BFCI / TIF) and a per-task prediction head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """``k x k`` conv (no bias) -> BatchNorm -> ReLU; 'same' padding for odd ``k``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                cin,
                cout,
                k,
                stride,
                padding=dilation * (k // 2),
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicResBlock(nn.Module):
    """ResNet basic block (two 3x3 ConvBNReLU, identity or 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, 3, stride)
        self.conv2 = ConvBNReLU(cout, cout, 3, relu=False)
        self.short = (
            nn.Identity()
            if cin == cout and stride == 1
            else ConvBNReLU(cin, cout, 1, stride, relu=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


class SEBlock(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(W2 relu(W1 avgpool(x)))`` (Hu et al.)."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(c // reduction, 4)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al.): channel then spatial attention."""

    def __init__(self, c: int, reduction: int = 4, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(c // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c, 1)
        )
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        ca = torch.sigmoid(
            self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        )
        x = x * ca
        sa = torch.sigmoid(
            self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))
        )
        return x * sa


class FFN(nn.Module):
    """Token feed-forward network ``LayerNorm -> Linear -> GELU -> Linear`` on (B, N, C) tokens."""

    def __init__(self, c: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 4 * c
        self.net = nn.Sequential(
            nn.LayerNorm(c), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TaskHead(nn.Module):
    """Prediction head: 3x3 ConvBNReLU then a 1x1 conv to ``cout`` output channels."""

    def __init__(self, cin: int, cout: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or cin
        self.body = ConvBNReLU(cin, hidden, 3)
        self.out = nn.Conv2d(hidden, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


def upsample_to(x: Tensor, ref: Tensor | tuple[int, int]) -> Tensor:
    """Bilinearly resize ``x`` (B, C, h, w) to the spatial size of ``ref`` (a tensor or (H, W))."""
    size = tuple(ref.shape[-2:]) if isinstance(ref, Tensor) else tuple(ref)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
