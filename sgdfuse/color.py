"""Colour handling: fusion happens on luminance, chroma comes from the visible image.

BT.601 full-range YCbCr on [0, 1] tensors as in the SeAFusion/PIAFusion code (docs/design.md, Colour).
"""

from __future__ import annotations

import torch

_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """B×3×H×W RGB in [0, 1] -> B×3×H×W YCbCr with Cb, Cr centred on 0.5."""
    m = _RGB_TO_YCBCR.to(rgb)
    ycc = torch.einsum("ij,bjhw->bihw", m, rgb)
    return ycc + torch.tensor([0.0, 0.5, 0.5], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    m_inv = torch.linalg.inv(_RGB_TO_YCBCR.double()).to(ycc)
    centred = ycc - torch.tensor([0.0, 0.5, 0.5], dtype=ycc.dtype, device=ycc.device).view(1, 3, 1, 1)
    return torch.einsum("ij,bjhw->bihw", m_inv, centred)


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """B×3×H×W RGB -> B×1×H×W luminance (0.299 R + 0.587 G + 0.114 B)."""
    return rgb_to_ycbcr(rgb)[:, :1]


def recombine(y: torch.Tensor, vis_rgb: torch.Tensor) -> torch.Tensor:
    """Fused luminance + the visible image's chroma -> RGB clamped to [0, 1]."""
    ycc = rgb_to_ycbcr(vis_rgb)
    return ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], dim=1)).clamp(0.0, 1.0)
