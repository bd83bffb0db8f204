"""Channels-last Stage I = the function of its first NCHW formulation (tests/stage1_reference.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgdfuse.models.stage1 import FusionNet, TransformerBlock
from sgdfuse.models.stage1.layout import merge_pointwise, split_pointwise_depthwise, to_channels_last
from tests import stage1_reference as reference


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _perturbed(net: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (biases, norms, temperatures), not only the initial ones."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("kwargs", [{}, {"use_cfc": False}, {"channels": 8, "num_heads": 2, "num_stages": 1}])
def test_output_matches_the_reference_to_1e_5(kwargs: dict) -> None:
    net = _perturbed(FusionNet(**kwargs)).eval()
    ir, vis = torch.rand(2, 1, 37, 29), torch.rand(2, 3, 37, 29)
    with torch.no_grad():
        out, expected = net(ir, vis), reference.fusion_net(net, ir, vis)
    assert out.is_contiguous() and out.shape == (2, 1, 37, 29)
    assert (out - expected).abs().max() <= 1e-5


def test_gradients_match_the_reference() -> None:
    net = _perturbed(FusionNet(channels=16, num_heads=2))
    ir, vis = torch.rand(2, 1, 24, 20), torch.rand(2, 3, 24, 20)
    grads = []
    for forward in (net, lambda a, b: reference.fusion_net(net, a, b)):
        net.zero_grad()
        forward(ir, vis).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name, g in grads[0].items():
        scale = grads[1][name].abs().max().clamp_min(1e-8)
        assert ((g - grads[1][name]).abs().max() / scale) < 1e-4, name


def test_bf16_autocast_runs_and_stays_close() -> None:
    net = _perturbed(FusionNet(channels=16, num_heads=2)).eval()
    ir, vis = torch.rand(1, 1, 32, 24), torch.rand(1, 3, 32, 24)
    with torch.no_grad():
        fp32 = net(ir, vis)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = net(ir, vis)
    assert torch.isfinite(bf16).all()
    assert (bf16.float() - fp32).abs().max() < 2e-2  # bf16 keeps 8 mantissa bits; sigmoid output in [0, 1]


def test_blocks_accept_nchw_maps_too() -> None:
    block = _perturbed(TransformerBlock(16, num_heads=4)).eval()
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block(to_channels_last(x)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(block(x), reference.transformer_block(block, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_merge_pointwise_is_conv_of_the_concatenation_plus_residual(bias: bool) -> None:
    conv = nn.Conv2d(12, 5, 1, bias=bias)
    parts = [to_channels_last(torch.randn(2, c, 7, 6)) for c in (4, 8)]
    residual = torch.randn(2, 5, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(merge_pointwise(conv, parts), conv(torch.cat(parts, 1)))
        expected = residual + conv(torch.cat(parts, 1))
        torch.testing.assert_close(merge_pointwise(conv, parts, residual), expected)


def test_split_pointwise_depthwise_equals_chunking_the_block() -> None:
    block = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    x = torch.randn(2, 6, 9, 5)
    with torch.no_grad():
        for got, expected in zip(split_pointwise_depthwise(block, x, 2), block(x).chunk(2, 1), strict=True):
            torch.testing.assert_close(got, expected)
