"""Pixel-token views of feature maps, the layout Stage I computes in.

Stage I runs channels-last (NHWC): every pixel's C features are contiguous, so a B×C×H×W map *is* a
(B·N)×C matrix of N = H·W pixel tokens without a copy. The 1×1 convolutions that follow a concatenation
or end in a residual sum are then GEMMs on these views that accumulate into one output, and the
per-pixel LayerNorm reads contiguous rows. On a CPU this removes full-size memory passes
(concatenations, separate residual additions, layout transposes), which are where an NCHW forward pass
of this network spends its time; on a GPU NHWC is the layout cuDNN's tensor-core kernels want.

Under autocast the accumulating (in-place) GEMMs get their operands in the output's dtype, as autocast
would have cast them for the out-of-place call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS_LAST = torch.channels_last


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=CHANNELS_LAST)


def tokens(x: torch.Tensor) -> torch.Tensor:
    """B×C×H×W -> B×N×C pixel tokens; a view for channels-last maps (a copy otherwise)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def from_tokens(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B×N×C tokens -> B×C×H×W map (a channels-last view of ``t`` when ``t`` is contiguous)."""
    b, _, c = t.shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


def pointwise_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The C_out×C_in matrix of a 1×1 convolution."""
    return conv.weight.reshape(conv.out_channels, conv.in_channels)


def split_pointwise_depthwise(block: nn.Sequential, x: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """``block(x).chunk(parts, dim=1)`` for a (1×1 conv, depthwise conv) block, each part computed on its
    own: every output channel depends on its own slice of both weights, and contiguous parts are cheaper
    to compute and to read than strided slices of one wide map."""
    pointwise, depthwise = block
    outs = []
    for w_pw, w_dw, b_pw, b_dw in zip(pointwise.weight.chunk(parts), depthwise.weight.chunk(parts),
                                      _bias_chunks(pointwise, parts), _bias_chunks(depthwise, parts),
                                      strict=True):
        hidden = F.conv2d(x, w_pw, b_pw)
        outs.append(F.conv2d(hidden, w_dw, b_dw, depthwise.stride, depthwise.padding, depthwise.dilation,
                             groups=w_dw.shape[0]))
    return outs


def _bias_chunks(conv: nn.Conv2d, parts: int) -> tuple[torch.Tensor | None, ...]:
    return (None,) * parts if conv.bias is None else conv.bias.chunk(parts)


def merge_pointwise(conv: nn.Conv2d, parts: list[torch.Tensor],
                    residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + conv(torch.cat(parts, dim=1))`` for a 1×1 ``conv``, without the concatenation.

    Each part meets its slice of the weight in one GEMM that adds into the output, so neither the
    concatenated map nor a separate residual sum is written.
    """
    b, _, h, w = parts[0].shape
    flat = [tokens(p).reshape(b * h * w, -1) for p in parts]
    slices = pointwise_weight(conv).t().split([p.shape[1] for p in parts])
    bias = conv.bias
    if residual is None:
        out = flat[0] @ slices[0] if bias is None else torch.addmm(bias, flat[0], slices[0])
    else:
        res = tokens(residual).reshape(b * h * w, -1)
        out = torch.addmm(res, flat[0], slices[0]) if bias is None \
            else (res + bias).addmm_(flat[0].to(res.dtype), slices[0].to(res.dtype))
    for part, weight in zip(flat[1:], slices[1:], strict=True):
        out.addmm_(part.to(out.dtype), weight.to(out.dtype))
    return from_tokens(out.reshape(b, h * w, -1), h, w)
