"""Transformer Block (TB), the visible branch of SGDFuse Stage I.

SGDFuse section 3 only says "multi-head self-attention"; token attention over H·W positions costs
O((H·W)²) memory (hundreds of GB at 640×480), so (docs/design.md, Transformer Block) we use Restormer's block
(Zamir et al., CVPR 2022, section 3.1/3.2): multi-Dconv-head *transposed* attention (MDTA), whose attention
matrix is C/h × C/h per head and whose cost is linear in H·W, and the gated-Dconv feed-forward network
(GDFN), each behind a per-pixel LayerNorm and a residual connection.

:class:`TransposedAttention` also takes an optional ``context`` so the cross-attention fusion
(``cross_attention_fusion.py``) reuses it with queries and keys/values from different modalities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sgdfuse.models.stage1.layout import (
    from_tokens,
    merge_pointwise,
    pointwise_weight,
    split_pointwise_depthwise,
    tokens,
)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a B×C×H×W map (Restormer's "WithBias" norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _pointwise_depthwise(in_channels: int, out_channels: int) -> nn.Sequential:
    # 1×1 mixes channels, depthwise 3×3 adds local context before attention (the "Dconv" of MDTA/GDFN).
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False),
    )


class TransposedAttention(nn.Module):
    """Multi-Dconv-head transposed attention: attention across channels, not across pixels.

    For each head the C/h × C/h attention map is ``softmax(q̂ k̂ᵀ · τ)`` with q̂, k̂ L2-normalised over
    the H·W positions and τ a learned per-head temperature. It is computed by ``self.softmax`` (an
    ``nn.Softmax`` module, so a forward hook can observe the map). Memory and time are linear in H·W.

    Args:
        channels: feature channels C; must be divisible by ``num_heads``.
        num_heads: number of heads h.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.to_q = _pointwise_depthwise(channels, channels)
        self.to_kv = _pointwise_depthwise(channels, 2 * channels)
        self.softmax = nn.Softmax(dim=-1)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from ``x``, keys/values from ``context`` (``x`` itself when None); ``residual`` (a map
        like ``x``) is added to the result inside the output projection's GEMM."""
        b, c, h, w = x.shape
        heads = self.num_heads
        q = tokens(self.to_q(x))  # B×N×C
        kv_source = x if context is None else context
        k, v = (tokens(t) for t in split_pointwise_depthwise(self.to_kv, kv_source, 2))  # = to_kv(.).chunk
        # softmax(q̂ k̂ᵀ τ) with q̂, k̂ the rows L2-normalised over the N positions (F.normalize, eps 1e-12)
        # equals softmax(q kᵀ / (|q| |k|ᵀ) τ): the normalisation acts on the small C/h × C/h matrix
        # instead of rewriting q and k at full size.
        logits = _per_head(q, heads) @ _per_head(k, heads).transpose(-2, -1)  # B×h×(C/h)×(C/h)
        norms = _l2_over_positions(q).view(b, heads, -1, 1) * _l2_over_positions(k).view(b, heads, 1, -1)
        attn = self.softmax(logits / norms * self.temperature)
        # project_out(attn @ v) = v · (W_out · blockdiag(attn))ᵀ: one C×C matrix per sample, one GEMM
        w_out = pointwise_weight(self.project_out).view(c, heads, -1)
        mix_t = torch.einsum("ohi,bhij->bhjo", w_out, attn).reshape(b, c, c).to(v.dtype)
        out = v @ mix_t if residual is None else torch.baddbmm(tokens(residual), v, mix_t)
        return from_tokens(out, h, w)


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """B×N×C tokens -> B×h×(C/h)×N (a view)."""
    return t.unflatten(-1, (heads, -1)).permute(0, 2, 3, 1)


def _l2_over_positions(t: torch.Tensor) -> torch.Tensor:
    """B×C: the L2 norm over the N positions of every channel, in float32, at least 1e-12."""
    t = t.float()
    return (t * t).sum(1).sqrt().clamp_min(1e-12)


class GatedDconvFeedForward(nn.Module):
    """Gated-Dconv feed-forward network: GELU(x₁) ⊙ x₂ from a 1×1 + depthwise 3×3 expansion."""

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = max(int(channels * expansion), 1)
        self.project_in = _pointwise_depthwise(channels, 2 * hidden)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        gate, value = split_pointwise_depthwise(self.project_in, x, 2)  # = self.project_in(x).chunk(2, 1)
        return merge_pointwise(self.project_out, [F.gelu(gate) * value], residual)


class TransformerBlock(nn.Module):
    """Restormer block: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``; B×C×H×W in and out.

    Args:
        channels: feature channels C.
        num_heads: attention heads (must divide C).
        ffn_expansion: hidden width of the feed-forward network as a multiple of C.
    """

    def __init__(self, channels: int, num_heads: int = 4, ffn_expansion: float = 2.0) -> None:
        super().__init__()
        self.norm_attn = LayerNorm2d(channels)
        self.attn = TransposedAttention(channels, num_heads)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = GatedDconvFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm_attn(x), residual=x)
        return self.ffn(self.norm_ffn(x), residual=x)
