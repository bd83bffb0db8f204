"""The coarse fusion of the "single stage" ablation (SGDFuse, section 4): no Stage I network.

Stage II then refines the mean of IR and the VIS luminance instead of a trained Stage-I image. It has the
call signature of :class:`~sgdfuse.models.stage1.FusionNet` so that Stage II can take either.
"""

from __future__ import annotations

import torch
from torch import nn

from sgdfuse.color import rgb_to_y


class MeanFusion(nn.Module):
    """``(ir + Y(vis)) / 2``: B×1×H×W in [0, 1] from IR B×1×H×W and VIS B×3×H×W (no parameters)."""

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return 0.5 * (ir + rgb_to_y(vis))
