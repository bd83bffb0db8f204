"""Stage-I fusion network and its blocks: shapes, CFC semantics, gradient flow, linear-cost attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgdfuse.color import rgb_to_y
from sgdfuse.losses import fusion_loss
from sgdfuse.models.stage1 import CFC, MSFEM, CrossAttentionFusion, FusionNet, TransformerBlock
from sgdfuse.models.stage1.transformer_block import TransposedAttention

C = 16  # small width keeps every test fast on a shared 2-core CPU


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _pair(b: int = 2, h: int = 24, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 1, h, w), torch.rand(b, 3, h, w)


def _small_net(**kwargs) -> FusionNet:
    return FusionNet(**{"channels": 8, "num_stages": 2, "num_heads": 2, **kwargs})


def _attention_shapes(module: nn.Module, run) -> list[tuple[int, ...]]:
    """Shapes of every transposed-attention map computed while ``run()`` executes (via forward hooks)."""
    shapes: list[tuple[int, ...]] = []
    handles = [
        m.softmax.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
        for m in module.modules()
        if isinstance(m, TransposedAttention)
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return shapes


# ---------------------------------------------------------------- CFC (DSIFuse 3.2)


def test_cfc_changes_both_streams_and_keeps_shapes() -> None:
    cfc = CFC(C)
    f_ir, f_vis = torch.randn(2, C, 9, 7), torch.randn(2, C, 9, 7)
    out_ir, out_vis = cfc(f_ir, f_vis)
    assert out_ir.shape == f_ir.shape and out_vis.shape == f_vis.shape
    assert (out_ir - f_ir).abs().max() > 1e-3
    assert (out_vis - f_vis).abs().max() > 1e-3


def test_cfc_follows_the_dsifuse_equation() -> None:
    """F_V,out = F_V + λc·W_R^C⊙F_R + λs·W_R^S⊙F_R and symmetrically: each stream gets the *other* one."""
    cfc = CFC(C, lambda_c=0.3, lambda_s=0.7)
    f_ir, f_vis = torch.randn(2, C, 6, 5), torch.randn(2, C, 6, 5)
    wc_vis, wc_ir = cfc.channel_weights(f_ir, f_vis)
    ws_vis, ws_ir = cfc.spatial_weights(f_ir, f_vis)
    assert wc_vis.shape == wc_ir.shape == (2, C, 1, 1)
    assert ws_vis.shape == ws_ir.shape == (2, 1, 6, 5)
    for w in (wc_vis, wc_ir, ws_vis, ws_ir):
        assert w.min() > 0 and w.max() < 1
    out_ir, out_vis = cfc(f_ir, f_vis)
    torch.testing.assert_close(out_vis, f_vis + 0.3 * wc_ir * f_ir + 0.7 * ws_ir * f_ir)
    torch.testing.assert_close(out_ir, f_ir + 0.3 * wc_vis * f_vis + 0.7 * ws_vis * f_vis)


def test_cfc_with_zero_lambdas_is_identity() -> None:
    cfc = CFC(C, lambda_c=0.0, lambda_s=0.0)
    f_ir, f_vis = torch.randn(1, C, 5, 8), torch.randn(1, C, 5, 8)
    out_ir, out_vis = cfc(f_ir, f_vis)
    assert torch.equal(out_ir, f_ir) and torch.equal(out_vis, f_vis)


def test_cfc_channel_and_spatial_terms_both_act() -> None:
    f_ir, f_vis = torch.randn(1, C, 5, 8), torch.randn(1, C, 5, 8)
    channel_only, spatial_only = CFC(C, 0.5, 0.0), CFC(C, 0.0, 0.5)
    spatial_only.load_state_dict(channel_only.state_dict())
    assert not torch.allclose(channel_only(f_ir, f_vis)[1], spatial_only(f_ir, f_vis)[1])


def test_cfc_gradients_cross_between_modalities() -> None:
    cfc = CFC(C)
    f_ir = torch.randn(2, C, 8, 8, requires_grad=True)
    f_vis = torch.randn(2, C, 8, 8, requires_grad=True)
    out_ir, out_vis = cfc(f_ir, f_vis)
    out_vis.square().mean().backward()  # a loss on the VIS output only
    assert f_ir.grad is not None and f_ir.grad.abs().sum() > 0, "VIS output must depend on the IR input"
    assert f_vis.grad is not None and f_vis.grad.abs().sum() > 0
    for name, p in cfc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches CFC.{name}"

    f_vis.grad = None
    f_ir2 = f_ir.detach().requires_grad_(True)
    cfc(f_ir2, f_vis)[0].square().mean().backward()  # a loss on the IR output only
    assert f_vis.grad is not None and f_vis.grad.abs().sum() > 0, "IR output must depend on the VIS input"


def test_cfc_rejects_mismatched_streams() -> None:
    with pytest.raises(ValueError, match="equal feature shapes"):
        CFC(C)(torch.randn(1, C, 4, 4), torch.randn(1, C, 4, 5))


# ---------------------------------------------------------------- MSFEM, TransformerBlock, fusion


def test_msfem_keeps_shape_uses_all_branches_and_is_residual() -> None:
    msfem = MSFEM(C)
    x = torch.randn(2, C, 11, 13, requires_grad=True)
    y = msfem(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for branch in ("branch1", "branch3", "branch5", "branch7"):
        assert getattr(msfem, branch).weight.grad.abs().sum() > 0, f"{branch} does not reach the output"
    with torch.no_grad():  # with the residual's projection zeroed, the block must reduce to the identity
        msfem.project.weight.zero_()
        msfem.project.bias.zero_()
        assert torch.equal(msfem(x), x)


def test_transformer_block_keeps_shape_and_sees_the_whole_image() -> None:
    block = TransformerBlock(C, num_heads=4, ffn_expansion=2.0).eval()
    x = torch.randn(1, C, 32, 32)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[..., 0, 0] += 5.0 * torch.randn(1, C)  # not constant over channels, which the LayerNorm removes
    # Its convolutions are 1×1 or 3×3, so only global (attention) mixing links opposite corners.
    assert (block(x2)[..., -1, -1] - y[..., -1, -1]).abs().max() > 1e-6


@pytest.mark.parametrize("heads", [1, 4])
def test_transposed_attention_map_is_channel_by_channel_whatever_the_size(heads: int) -> None:
    block = TransformerBlock(C, num_heads=heads)
    maps: list[torch.Tensor] = []
    handle = block.attn.softmax.register_forward_hook(lambda _m, _i, out: maps.append(out.detach()))
    for h, w in [(8, 8), (40, 30)]:
        maps.clear()
        block(torch.randn(2, C, h, w))
        assert len(maps) == 1
        assert maps[0].shape == (2, heads, C // heads, C // heads)  # independent of H·W: linear cost
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, heads, C // heads))
    handle.remove()


def test_attention_rejects_heads_not_dividing_channels() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TransformerBlock(C, num_heads=3)


def test_cross_attention_fusion_mixes_both_ways_at_linear_cost() -> None:
    fusion = CrossAttentionFusion(C, num_heads=4)
    f_ir, f_vis = torch.randn(1, C, 13, 17), torch.randn(1, C, 13, 17)
    shapes = _attention_shapes(fusion, lambda: fusion(f_ir, f_vis))
    assert shapes == [(1, 4, C // 4, C // 4)] * 2  # one map per direction, C/h × C/h each
    out = fusion(f_ir, f_vis)
    assert out.shape == (1, C, 13, 17)
    assert not torch.allclose(fusion(f_ir, f_vis + 1.0), out)
    assert not torch.allclose(fusion(f_ir + 1.0, f_vis), out)
    # Keys/values really come from the other modality: IR queries attend to VIS context.
    attn = fusion.ir_from_vis
    assert not torch.allclose(attn(f_ir, context=f_vis), attn(f_ir, context=f_ir))


# ---------------------------------------------------------------- FusionNet


@pytest.mark.parametrize("size", [(37, 53), (17, 8), (1, 1), (64, 33)])
def test_fusion_net_keeps_any_size(size: tuple[int, int]) -> None:
    net = _small_net().eval()
    ir, vis = _pair(2, *size)
    with torch.no_grad():
        y = net(ir, vis)
    assert y.shape == ir.shape
    assert torch.isfinite(y).all()


def test_fusion_net_output_in_unit_interval() -> None:
    net = _small_net().eval()
    with torch.no_grad():
        for ir, vis in [_pair(), (torch.zeros(1, 1, 16, 16), torch.ones(1, 3, 16, 16))]:
            y = net(ir * 50.0, vis * 50.0)  # out-of-range inputs must still give a valid image
            assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("use_cfc", [True, False])
def test_fusion_net_gradients_reach_both_stems(use_cfc: bool) -> None:
    net = _small_net(use_cfc=use_cfc)
    ir, vis = _pair(h=16, w=16)
    net(ir, vis).mean().backward()
    for stem in (net.ir_stem, net.vis_stem):
        assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_fusion_net_without_cfc_has_no_cfc_parameters() -> None:
    with_cfc, without = FusionNet(use_cfc=True), FusionNet(use_cfc=False)
    assert any("cfc" in n for n, _ in with_cfc.named_parameters())
    assert not any("cfc" in n for n, _ in without.named_parameters())
    assert not any(isinstance(m, CFC) for m in without.modules())
    n_with = sum(p.numel() for p in with_cfc.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    per_cfc = sum(p.numel() for p in CFC(32).parameters())
    assert n_with - n_without == 2 * per_cfc  # one CFC per stage, nothing else differs


def test_fusion_net_cfc_changes_the_output() -> None:
    with_cfc = _small_net(use_cfc=True).eval()
    identity_cfc = _small_net(use_cfc=True, lambda_c=0.0, lambda_s=0.0).eval()
    without = _small_net(use_cfc=False).eval()
    identity_cfc.load_state_dict(with_cfc.state_dict())
    without.load_state_dict({k: v for k, v in with_cfc.state_dict().items() if "cfc" not in k})
    ir, vis = _pair()
    with torch.no_grad():
        torch.testing.assert_close(identity_cfc(ir, vis), without(ir, vis))
        assert not torch.allclose(with_cfc(ir, vis), without(ir, vis))


def test_fusion_net_uses_only_the_visible_luminance() -> None:
    net = _small_net().eval()
    ir, vis = _pair()
    grey = rgb_to_y(vis).expand(-1, 3, -1, -1)  # same Y, no chroma
    with torch.no_grad():
        torch.testing.assert_close(net(ir, vis), net(ir, grey), atol=1e-5, rtol=1e-5)


def test_fusion_net_all_attention_is_channel_attention() -> None:
    net = _small_net(num_stages=2, num_heads=2)
    for size in [(24, 20), (48, 40)]:
        ir, vis = _pair(1, *size)
        shapes = _attention_shapes(net, lambda ir=ir, vis=vis: net(ir, vis))
        assert shapes == [(1, 2, 4, 4)] * 4  # 2 Transformer Blocks + 2 cross-attention directions


def test_fusion_net_is_deterministic_and_batch_independent_in_eval() -> None:
    net = _small_net().eval()
    ir, vis = _pair(3)
    with torch.no_grad():
        first, second = net(ir, vis), net(ir, vis)
        single = net(ir[1:2], vis[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(first[1:2], single, atol=1e-5, rtol=1e-5)


def test_fusion_net_rejects_bad_inputs() -> None:
    net = _small_net()
    ir, vis = _pair()
    with pytest.raises(ValueError, match="`vis` must be B×3×H×W"):
        net(ir, vis[:, :1])
    with pytest.raises(ValueError, match="`ir` must be B×1×H×W"):
        net(vis, vis)
    with pytest.raises(ValueError, match="differ in batch or H×W"):
        net(ir, vis[..., :-1])
    with pytest.raises(ValueError, match="divisible by num_heads"):
        FusionNet(channels=30, num_heads=4)


def test_fusion_net_learns_the_stage1_loss() -> None:
    net = _small_net()
    # Smooth images: white-noise gradients are so large that the first steps barely move the loss.
    ir, vis = (nn.functional.avg_pool2d(t, 5, stride=1) for t in _pair(2, 36, 36))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = fusion_loss(net(ir, vis), ir, rgb_to_y(vis))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]  # ~0.55 observed over seeds 0-2


def test_default_fusion_net_runs_96x80() -> None:
    net = FusionNet().eval()
    ir, vis = _pair(1, 96, 80)
    with torch.no_grad():
        y = net(ir, vis)
    assert y.shape == (1, 1, 96, 80)


@pytest.mark.slow
def test_default_fusion_net_runs_640x480() -> None:
    net = FusionNet().eval()
    ir, vis = _pair(1, 480, 640)
    with torch.no_grad():
        y = net(ir, vis)
    assert y.shape == (1, 1, 480, 640)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
