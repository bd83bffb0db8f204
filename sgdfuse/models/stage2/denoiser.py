"""Mask-conditioned denoising UNet of SGDFuse Stage II (section 3, Stage II; docs/design.md, Denoising UNet).

A ``diffusers.UNet2DModel`` on ``cat([x_t, mask_ir, mask_vis])`` (5 channels; 3 without masks) that
predicts the noise ε. Self-attention sits only at the lowest resolution (the last down block, the mid
block and the first up block), as in the authors' ``fusion_train.json`` (one small ``attn_res``):
full attention at higher resolutions of a 640×480 image would not fit in memory.

Besides ε̂ the wrapper returns the decoder feature of every level for the fusion head. They are
captured by hooks on ``unet.up_blocks`` during the UNet's own forward, at each level's native
resolution: the input of the block's upsampler, or the block output for the last (full-resolution) block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn


def _keep_input(module: nn.Module, args: tuple) -> None:
    module.captured_feature = args[0]


def _keep_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    module.captured_feature = output


@dataclass
class DenoiserOutput:
    """``sample``: ε̂ at the input size; ``features``: one map per level, highest resolution first, on
    the padded grid ``padded_size`` (crop after resizing to it)."""

    sample: torch.Tensor
    features: list[torch.Tensor]
    padded_size: tuple[int, int]


class Denoiser(nn.Module):
    """ε-prediction UNet with decoder-feature capture.

    Args:
        cond_channels: conditioning channels concatenated to x_t (2 masks, or 0 without masks).
        image_channels: channels of x_t and of the predicted ε.
        block_out_channels: width per level, highest resolution first (paper: 64·[1, 2, 4, 8]).
        layers_per_block: residual blocks per level (paper: 2).
        dropout: residual-block dropout (paper: 0.2).
        attention_head_dim: channels per attention head at the lowest resolution.
        norm_num_groups: GroupNorm groups (must divide every width).
    """

    def __init__(
        self,
        cond_channels: int = 2,
        image_channels: int = 3,
        block_out_channels: Sequence[int] = (64, 128, 256, 512),
        layers_per_block: int = 2,
        dropout: float = 0.2,
        attention_head_dim: int = 8,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        widths = tuple(int(c) for c in block_out_channels)
        bad = [c for c in widths if c % norm_num_groups] or widths[-1] % attention_head_dim
        if len(widths) < 2 or bad:
            raise ValueError(
                f"Denoiser: block_out_channels {list(widths)} must list >= 2 levels whose widths are "
                f"multiples of norm_num_groups ({norm_num_groups}), the last (attention) one also of "
                f"attention_head_dim ({attention_head_dim})"
            )
        levels = len(widths)
        self.cond_channels = cond_channels
        self.unet = UNet2DModel(
            in_channels=image_channels + cond_channels,
            out_channels=image_channels,
            block_out_channels=widths,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            layers_per_block=layers_per_block,
            dropout=dropout,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
        )
        #: Each level halves H and W once, so inputs are padded to a multiple of this.
        self.size_multiple = 2 ** (levels - 1)
        #: Feature channels per level, highest resolution first (what the head receives per timestep).
        self.feature_channels = list(widths)
        # Hooks store the tensor on the hooked module itself (no closure over `self`), so a deepcopy of
        # the denoiser (EMA, SWA) captures into its own copies.
        self._taps: list[nn.Module] = []
        for level in range(levels):
            block = self.unet.up_blocks[levels - 1 - level]  # up_blocks run from the lowest resolution up
            if block.upsamplers is not None:
                tap = block.upsamplers[0]
                tap.register_forward_pre_hook(_keep_input)
            else:
                tap = block
                tap.register_forward_hook(_keep_output)
            self._taps.append(tap)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.size_multiple, -w % self.size_multiple
        if ph or pw:
            # Reflect (not zeros) so that the border does not look like an edge to the UNet.
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return x

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor | int,
                cond: torch.Tensor | None = None) -> DenoiserOutput:
        """``x_t`` B×3×H×W in [-1, 1]-ish, ``timestep`` int or B-vector, ``cond`` B×cond_channels×H×W."""
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels or cond.shape[-2:] != x_t.shape[-2:]:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"Denoiser: expected cond of shape B×{self.cond_channels}×"
                                 f"{x_t.shape[-2]}×{x_t.shape[-1]} (the masks), got {got}")
            x = torch.cat([x_t, cond], dim=1)
        elif cond is not None:
            raise ValueError("Denoiser: built without conditioning (cond_channels=0) but got `cond`")
        else:
            x = x_t
        h, w = x.shape[-2:]
        x = self._pad(x)
        eps = self.unet(x, timestep).sample
        features = []
        for tap in self._taps:
            features.append(tap.captured_feature)
            tap.captured_feature = None  # drop the reference: activations are freed with the graph
        padded_size = (x.shape[-2], x.shape[-1])
        return DenoiserOutput(sample=eps[..., :h, :w], features=features, padded_size=padded_size)
