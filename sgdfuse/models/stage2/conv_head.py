"""The head of the "w/o HFAH" ablation (SGDFuse, section 4 ablations; docs/design.md, Fusion head).

HFAH is replaced by a 1×1 convolution + Tanh on the last (full-resolution) decoder feature, so the
output sees no multi-level aggregation and no attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvHead(nn.Module):
    """Same call signature as :class:`~sgdfuse.models.stage2.hfah.HFAH`; uses only ``features[0]``.

    Args:
        in_channels: channels of each level, highest resolution first (only the first is used).
        out_channels: channels of the output image.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels[0], out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        out = torch.tanh(self.proj(features[0]))
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return out
