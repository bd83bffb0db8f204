"""Multi-Scale Feature Enhancement Module (MSFEM), the infrared branch of SGDFuse Stage I.

SGDFuse, section 3 (Stage I) and the authors' ``MSFEM.py``: parallel 1×1 / 3×3 / 5×5 / 7×7 convolutions;
the 3/5/7 branches are concatenated and enhanced by depthwise 3×3 → pointwise 1×1 → depthwise 3×3, then
concatenated with the 1×1 branch, refined by channel attention and added back to the input.

The released code squashes the concatenation to a sigmoid map and *adds* it to the input; we read the
paper's "channel attention" literally (squeeze-and-excitation reweighting of the 2C channels) followed by
a 1×1 projection back to C, so the residual adds features rather than a bounded gate.

The forward pass computes the tail ``x + project(SE(cat(enhanced, branch1(x))))`` without materialising
the concatenation, the reweighted map or branch1's output: SE scales channels, so it folds into the
projection's weight per sample, and branch1 is a 1×1 conv of ``x``, so its mean is branch1 of the mean and
its projected output (plus the residual) is one C×C matrix applied to ``x``. Two GEMMs on the pixel tokens
(``layout.py``) replace three full-size maps; the result is the same up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from sgdfuse.models.stage1.layout import from_tokens, pointwise_weight, tokens


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
        b, c, h, w = x.shape
        multi_scale = torch.cat([self.branch3(x), self.branch5(x), self.branch7(x)], dim=1)
        enhanced = self.enhance(multi_scale)
        w1, b1 = pointwise_weight(self.branch1), self.branch1.bias
        # squeeze-and-excitation scales of cat(enhanced, branch1(x)), from their channel means
        pooled = torch.cat([enhanced.mean((2, 3)), torch.addmm(b1, x.mean((2, 3)), w1.t())], dim=1)
        scale = self._se_scale(pooled)  # B×2C
        wp = pointwise_weight(self.project)  # C×2C: [enhanced | branch1] columns
        w_enh = wp[:, :c] * scale[:, None, :c]  # B×C×C
        w_b1 = wp[:, c:] * scale[:, None, c:]
        w_x = torch.eye(c, dtype=w_b1.dtype, device=w_b1.device) + w_b1 @ w1  # residual + projected branch1
        bias = self.project.bias + w_b1 @ b1  # B×C
        out = torch.baddbmm(bias[:, None, :], tokens(enhanced), w_enh.transpose(1, 2))
        out.baddbmm_(tokens(x).to(out.dtype), w_x.transpose(1, 2).to(out.dtype))
        return from_tokens(out, h, w)

    def _se_scale(self, pooled: torch.Tensor) -> torch.Tensor:
        """B×2C channel means -> B×2C scales of :attr:`channel_attention` (its layers, without the pool)."""
        se = self.channel_attention
        squeezed = pooled[:, :, None, None]
        return se.scale_activation(se.fc2(se.activation(se.fc1(squeezed))))[:, :, 0, 0]
