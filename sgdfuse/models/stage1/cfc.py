"""Cross-modal Feature Calibration (CFC), from DSIFuse section 3.2 (not part of SGDFuse).

Each stream is calibrated with the *other* stream's features, weighted along channels (3.2.1) and along
space (3.2.2), then added residually (eq. for F_out)::

    F_V,out = F_V + λc · W_R^C ⊙ F_R + λs · W_R^S ⊙ F_R
    F_R,out = F_R + λc · W_V^C ⊙ F_V + λs · W_V^S ⊙ F_V

Channel weights: global average and max pooling of both streams → 4C vector → MLP → sigmoid → split into
W_V^C, W_R^C (C each). Spatial weights: concat of both streams → 1×1 conv → ReLU → 1×1 conv → sigmoid →
split into W_V^S, W_R^S (1×H×W each). λc = λs = 0.5 as in the paper; λ = 0 makes the block the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from sgdfuse.models.stage1.layout import merge_pointwise


class CFC(nn.Module):
    """Bidirectional cross-modal feature calibration of two B×C×H×W feature maps.

    Args:
        channels: feature channels C of each stream.
        lambda_c: weight of the channel-wise calibration term.
        lambda_s: weight of the spatial-wise calibration term.
        reduction: hidden width of the channel MLP is ``4C // reduction``.
    """

    def __init__(
        self, channels: int, lambda_c: float = 0.5, lambda_s: float = 0.5, reduction: int = 4
    ) -> None:
        super().__init__()
        self.lambda_c = lambda_c
        self.lambda_s = lambda_s
        hidden = max(4 * channels // reduction, 1)
        self.channel_mlp = nn.Sequential(
            nn.Linear(4 * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * channels)
        )
        self.spatial_proj = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, 2, 1)
        )

    def channel_weights(self, f_ir: torch.Tensor, f_vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_V^C, W_R^C), each B×C×1×1 in (0, 1), from pooled statistics of both streams."""
        pooled = [f.amax(dim=(2, 3)) for f in (f_vis, f_ir)] + [f.mean(dim=(2, 3)) for f in (f_vis, f_ir)]
        w_vis, w_ir = torch.sigmoid(self.channel_mlp(torch.cat(pooled, dim=1))).chunk(2, dim=1)
        return w_vis[..., None, None], w_ir[..., None, None]

    def spatial_weights(self, f_ir: torch.Tensor, f_vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_V^S, W_R^S), each B×1×H×W in (0, 1), from the concatenated streams."""
        first, relu, last = self.spatial_proj
        hidden = relu(merge_pointwise(first, [f_vis, f_ir]))  # = first(cat([f_vis, f_ir])), no concat
        w_vis, w_ir = torch.sigmoid(last(hidden)).chunk(2, dim=1)
        return w_vis, w_ir

    def forward(self, f_ir: torch.Tensor, f_vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if f_ir.shape != f_vis.shape:
            raise ValueError(
                f"CFC needs equal feature shapes, got IR {tuple(f_ir.shape)} and VIS {tuple(f_vis.shape)}"
            )
        wc_vis, wc_ir = self.channel_weights(f_ir, f_vis)
        ws_vis, ws_ir = self.spatial_weights(f_ir, f_vis)
        # Each stream receives the other one, weighted by the other one's calibration weights; two
        # broadcast multiply-adds instead of materialising the full-size weight map (λc·W^C + λs·W^S).
        f_vis_out = torch.addcmul(f_vis, f_ir, self.lambda_c * wc_ir).addcmul_(f_ir, self.lambda_s * ws_ir)
        f_ir_out = torch.addcmul(f_ir, f_vis, self.lambda_c * wc_vis).addcmul_(f_vis, self.lambda_s * ws_vis)
        return f_ir_out, f_vis_out
