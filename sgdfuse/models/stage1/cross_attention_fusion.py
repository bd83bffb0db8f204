"""Cross-attention fusion of the IR and VIS streams, the last step of SGDFuse Stage I.

SGDFuse section 3 (Stage I): the two modalities are "aligned and selectively fused via a cross-attention
pathway". We attend both ways, IR queries on VIS keys/values and VIS queries on IR keys/values, each with
Restormer's transposed attention so the cost stays linear in H·W (full token attention at 640×480 does
not fit in memory), add each result to its query stream, then merge by concatenation and a 1×1 conv.
"""

from __future__ import annotations

import torch
from torch import nn

from sgdfuse.models.stage1.layout import merge_pointwise
from sgdfuse.models.stage1.transformer_block import LayerNorm2d, TransposedAttention


class CrossAttentionFusion(nn.Module):
    """Bidirectional cross-attention, merged to one B×C×H×W map.

    Args:
        channels: feature channels C of each stream and of the output.
        num_heads: attention heads (must divide C).
    """

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        self.norm_ir = LayerNorm2d(channels)
        self.norm_vis = LayerNorm2d(channels)
        self.ir_from_vis = TransposedAttention(channels, num_heads)
        self.vis_from_ir = TransposedAttention(channels, num_heads)
        self.merge = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, f_ir: torch.Tensor, f_vis: torch.Tensor) -> torch.Tensor:
        if f_ir.shape != f_vis.shape:
            raise ValueError(
                f"CrossAttentionFusion needs equal feature shapes, got IR {tuple(f_ir.shape)} "
                f"and VIS {tuple(f_vis.shape)}"
            )
        n_ir, n_vis = self.norm_ir(f_ir), self.norm_vis(f_vis)
        ir = self.ir_from_vis(n_ir, context=n_vis, residual=f_ir)
        vis = self.vis_from_ir(n_vis, context=n_ir, residual=f_vis)
        return merge_pointwise(self.merge, [ir, vis])  # = merge(cat([ir, vis])), no concat
