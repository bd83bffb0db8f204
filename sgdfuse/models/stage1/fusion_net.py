"""Stage-I structural fusion network of SGDFuse (section 3, Stage I), optionally with DSIFuse's CFC.

IR (1 channel) and the visible luminance Y each go through a shallow 3×3 conv to C channels, then
``num_stages`` stages of MSFEM (IR) and Transformer Block (VIS), each stage followed by CFC when
``use_cfc`` (DSIFuse 3.2; not in SGDFuse). Bidirectional cross-attention fuses the streams and 3×3 convs
decode the fused luminance Y_f in [0, 1]. Every layer keeps H×W, so any size (odd ones too) works
without padding. Features are kept channels-last from the stems on (``layout.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from sgdfuse.color import rgb_to_y
from sgdfuse.models.stage1.cfc import CFC
from sgdfuse.models.stage1.cross_attention_fusion import CrossAttentionFusion
from sgdfuse.models.stage1.layout import to_channels_last
from sgdfuse.models.stage1.msfem import MSFEM
from sgdfuse.models.stage1.transformer_block import TransformerBlock


def _decoder(channels: int) -> nn.Sequential:
    hidden = max(channels // 2, 1)
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(hidden, 1, 3, padding=1),
        nn.Sigmoid(),
    )


class FusionNet(nn.Module):
    """``forward(ir B×1×H×W, vis B×3×H×W RGB) -> Y_f B×1×H×W`` in [0, 1].

    Args:
        channels: feature width C of both streams.
        num_stages: number of (MSFEM, TransformerBlock[, CFC]) stages.
        num_heads: attention heads of the Transformer Blocks and the cross-attention (must divide C).
        ffn_expansion: feed-forward width of the Transformer Blocks as a multiple of C.
        use_cfc: add a CFC after every stage; when False no CFC module (or parameter) exists.
        lambda_c: CFC channel-calibration weight.
        lambda_s: CFC spatial-calibration weight.
    """

    def __init__(
        self,
        channels: int = 32,
        num_stages: int = 2,
        num_heads: int = 4,
        ffn_expansion: float = 2.0,
        use_cfc: bool = True,
        lambda_c: float = 0.5,
        lambda_s: float = 0.5,
    ) -> None:
        super().__init__()
        if channels < 1 or num_stages < 0:
            raise ValueError(
                f"FusionNet: channels must be >= 1 and num_stages >= 0, got {channels} and {num_stages}"
            )
        if channels % num_heads != 0:
            raise ValueError(f"FusionNet: channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.ir_stem = nn.Conv2d(1, channels, 3, padding=1)
        self.vis_stem = nn.Conv2d(1, channels, 3, padding=1)
        self.ir_stages = nn.ModuleList(MSFEM(channels) for _ in range(num_stages))
        self.vis_stages = nn.ModuleList(
            TransformerBlock(channels, num_heads, ffn_expansion) for _ in range(num_stages)
        )
        # Not even an empty container without CFC, so checkpoints of the two variants differ only by it.
        self.cfc = (
            nn.ModuleList(CFC(channels, lambda_c, lambda_s) for _ in range(num_stages)) if use_cfc else None
        )
        self.fusion = CrossAttentionFusion(channels, num_heads)
        self.decoder = _decoder(channels)

    @staticmethod
    def _check_inputs(ir: torch.Tensor, vis: torch.Tensor) -> None:
        if ir.ndim != 4 or ir.shape[1] != 1:
            raise ValueError(f"FusionNet: `ir` must be B×1×H×W, got shape {tuple(ir.shape)}")
        if vis.ndim != 4 or vis.shape[1] != 3:
            raise ValueError(
                f"FusionNet: `vis` must be B×3×H×W RGB (replicate grey images), got shape {tuple(vis.shape)}"
            )
        if ir.shape[0] != vis.shape[0] or ir.shape[2:] != vis.shape[2:]:
            raise ValueError(
                f"FusionNet: `ir` {tuple(ir.shape)} and `vis` {tuple(vis.shape)} differ in batch or H×W"
            )

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        self._check_inputs(ir, vis)
        f_ir = to_channels_last(self.ir_stem(ir))
        f_vis = to_channels_last(self.vis_stem(rgb_to_y(vis)))
        for i, (msfem, block) in enumerate(zip(self.ir_stages, self.vis_stages, strict=True)):
            f_ir, f_vis = msfem(f_ir), block(f_vis)
            if self.cfc is not None:
                f_ir, f_vis = self.cfc[i](f_ir, f_vis)
        return self.decoder(self.fusion(f_ir, f_vis)).contiguous()
