"""Hierarchical Feature Aggregation Head (HFAH), the output head of SGDFuse Stage II.

SGDFuse, section 3 (Stage II, "hierarchical feature aggregation") and the authors' ``HFAF.py``: every
decoder level of the denoising UNet is reweighted by channel attention (average- and max-pooled
descriptors through a shared bottleneck, ratio 16), projected to 64 channels by a 1×1 convolution and
bilinearly resized to the output resolution; the levels are concatenated and decoded by 3×3
convolutions 64·L → 64 → 32 → 3 with a Tanh output (L = 4 levels gives the published 256 → 64 → 32 → 3).

The paper also names a spatial attention inside the head, absent from the released code. Our reading
(docs/design.md, Fusion head): a CBAM-style spatial attention on the concatenated levels, switchable with
``spatial_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """``x · σ(MLP(avgpool(x)) + MLP(maxpool(x)))`` with a shared 1×1-conv bottleneck (as in ``HFAF.py``)."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        # Narrow levels (the small CPU UNet) would otherwise get a zero-width bottleneck.
        hidden = max(channels // ratio, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """``x · σ(conv_k([mean_c(x), max_c(x)]))``: a per-pixel gate shared by all channels (CBAM)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class HFAH(nn.Module):
    """Aggregate multi-level decoder features into an image in [-1, 1].

    Args:
        in_channels: channels of each level, highest resolution first (for Stage II: the UNet's
            ``block_out_channels`` times the number of feature timesteps, which are concatenated).
        out_channels: channels of the output image.
        level_channels: width every level is projected to before concatenation (64 in ``HFAF.py``).
        hidden_channels: widths of the 3×3 decoder convs before the output conv ((64, 32) in ``HFAF.py``).
        ratio: channel-attention reduction ratio.
        spatial_attention: add the spatial attention after the concatenation (our reading of the paper).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 3,
        level_channels: int = 64,
        hidden_channels: Sequence[int] = (64, 32),
        ratio: int = 16,
        spatial_attention: bool = True,
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("HFAH: `in_channels` must list the channels of at least one feature level")
        self.attention = nn.ModuleList(ChannelAttention(c, ratio) for c in in_channels)
        self.reduce = nn.ModuleList(nn.Conv2d(c, level_channels, 1) for c in in_channels)
        total = level_channels * len(in_channels)
        self.spatial = SpatialAttention() if spatial_attention else None
        layers: list[nn.Module] = []
        width = total
        for hidden in hidden_channels:
            layers += [nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Conv2d(width, out_channels, 3, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """``features``: one B×C_l×H_l×W_l map per level (highest resolution first); ``size``: output
        H×W (default: the first level's)."""
        if len(features) != len(self.reduce):
            raise ValueError(f"HFAH: expected {len(self.reduce)} feature levels, got {len(features)}")
        size = tuple(size) if size is not None else tuple(features[0].shape[-2:])
        levels = []
        for feat, attention, reduce in zip(features, self.attention, self.reduce, strict=True):
            level = reduce(attention(feat))
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=True)
            levels.append(level)
        x = torch.cat(levels, dim=1)
        if self.spatial is not None:
            x = self.spatial(x)
        return self.decoder(x)
