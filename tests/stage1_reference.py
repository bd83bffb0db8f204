"""The Stage-I forward pass as first written (NCHW, every step materialised), on a FusionNet's own modules.

The production code (sgdfuse/models/stage1) computes the same function channels-last with folded
concatenations, residuals and normalisations; tests compare the two outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgdfuse.color import rgb_to_y
from sgdfuse.models.stage1 import CFC, MSFEM, CrossAttentionFusion, FusionNet, TransformerBlock
from sgdfuse.models.stage1.transformer_block import TransposedAttention


def layer_norm2d(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias,
                        norm.eps).permute(0, 3, 1, 2)


def attention(m: TransposedAttention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    b, c, h, w = x.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, m.num_heads, c // m.num_heads, h * w)

    k, v = m.to_kv(x if context is None else context).chunk(2, dim=1)
    q = F.normalize(split(m.to_q(x)), dim=-1)
    k = F.normalize(split(k), dim=-1)
    attn = torch.softmax(q @ k.transpose(-2, -1) * m.temperature, dim=-1)
    return m.project_out((attn @ split(v)).reshape(b, c, h, w))


def transformer_block(m: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
    x = x + attention(m.attn, layer_norm2d(m.norm_attn, x))
    gate, value = m.ffn.project_in(layer_norm2d(m.norm_ffn, x)).chunk(2, dim=1)
    return x + m.ffn.project_out(F.gelu(gate) * value)


def msfem(m: MSFEM, x: torch.Tensor) -> torch.Tensor:
    multi_scale = torch.cat([m.branch3(x), m.branch5(x), m.branch7(x)], dim=1)
    fused = torch.cat([m.enhance(multi_scale), m.branch1(x)], dim=1)
    return x + m.project(m.channel_attention(fused))


def cfc(m: CFC, f_ir: torch.Tensor, f_vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pooled = [f.amax(dim=(2, 3)) for f in (f_vis, f_ir)] + [f.mean(dim=(2, 3)) for f in (f_vis, f_ir)]
    weights = torch.sigmoid(m.channel_mlp(torch.cat(pooled, 1))).chunk(2, 1)
    wc_vis, wc_ir = (w[..., None, None] for w in weights)
    ws_vis, ws_ir = torch.sigmoid(m.spatial_proj(torch.cat([f_vis, f_ir], dim=1))).chunk(2, dim=1)
    f_vis_out = f_vis + (m.lambda_c * wc_ir + m.lambda_s * ws_ir) * f_ir
    f_ir_out = f_ir + (m.lambda_c * wc_vis + m.lambda_s * ws_vis) * f_vis
    return f_ir_out, f_vis_out


def cross_attention_fusion(m: CrossAttentionFusion, f_ir: torch.Tensor, f_vis: torch.Tensor) -> torch.Tensor:
    n_ir, n_vis = layer_norm2d(m.norm_ir, f_ir), layer_norm2d(m.norm_vis, f_vis)
    ir = f_ir + attention(m.ir_from_vis, n_ir, context=n_vis)
    vis = f_vis + attention(m.vis_from_ir, n_vis, context=n_ir)
    return m.merge(torch.cat([ir, vis], dim=1))


def fusion_net(net: FusionNet, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    f_ir, f_vis = net.ir_stem(ir), net.vis_stem(rgb_to_y(vis))
    for i, (block_ir, block_vis) in enumerate(zip(net.ir_stages, net.vis_stages, strict=True)):
        f_ir, f_vis = msfem(block_ir, f_ir), transformer_block(block_vis, f_vis)
        if net.cfc is not None:
            f_ir, f_vis = cfc(net.cfc[i], f_ir, f_vis)
    return net.decoder(cross_attention_fusion(net.fusion, f_ir, f_vis))
