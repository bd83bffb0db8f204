"""Multi-Scale Feature Enhancement Module (MSFEM), the infrared branch of SGDFuse Stage I.

SGDFuse, section 3 (Stage I) and the authors' ``MSFEM.py``: parallel 1×1 / 3×3 / 5×5 / 7×7 convolutions;
the 3/5/7 branches are concatenated and enhanced by depthwise 3×3 → pointwise 1×1 → depthwise 3×3, then
concatenated with the 1×1 branch, refined by channel attention and added back to the input.

The released code squashes the concatenation to a sigmoid map and *adds* it to the input; we read the
paper's "channel attention" literally (squeeze-and-excitation reweighting of the 2C channels) followed by
a 1×1 projection back to C, so the residual adds features rather than a bounded gate.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation


def _same_conv(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> nn.Conv2d:
    # Odd kernels with padding k // 2 keep H×W unchanged for any (also odd) input size.
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)


class MSFEM(nn.Module):
    """Multi-scale feature enhancement on a B×C×H×W feature map; output has the same shape.

    Args:
        channels: feature channels C (input and output).
        se_reduction: channel reduction of the squeeze-and-excitation attention over the 2C channels.
    """

    def __init__(self, channels: int, se_reduction: int = 4) -> None:
        super().__init__()
        self.branch1 = _same_conv(channels, channels, 1)
        self.branch3 = _same_conv(channels, channels, 3)
        self.branch5 = _same_conv(channels, channels, 5)
        self.branch7 = _same_conv(channels, channels, 7)
        multi = 3 * channels
        self.enhance = nn.Sequential(
            _same_conv(multi, multi, 3, groups=multi),  # depthwise: per-channel spatial mixing
            _same_conv(multi, channels, 1),  # pointwise: mixes the three scales, 3C -> C
            _same_conv(channels, channels, 3, groups=channels),  # depthwise
        )
        self.channel_attention = SqueezeExcitation(2 * channels, max(2 * channels // se_reduction, 4))
        self.project = _same_conv(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multi_scale = torch.cat([self.branch3(x), self.branch5(x), self.branch7(x)], dim=1)
        fused = torch.cat([self.enhance(multi_scale), self.branch1(x)], dim=1)
        return x + self.project(self.channel_attention(fused))
