import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from sgdfuse.color import recombine, rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from sgdfuse.losses import fusion_loss, gradient_loss, sobel_magnitude, ssim_loss, target_intensity


def _ir_over_flat_vis(h: int = 24, w: int = 28):
    """IR brighter than a flat VIS everywhere: the targets are exactly IR and |∇IR|."""
    g = torch.Generator().manual_seed(0)
    ir = 0.5 + 0.5 * torch.rand(1, 1, h, w, generator=g)
    y_vis = torch.full((1, 1, h, w), 0.2)
    return ir, y_vis


def test_loss_is_zero_at_the_targets():
    ir, y_vis = _ir_over_flat_vis()
    losses = fusion_loss(ir.clone(), ir, y_vis, w_int=1.0, w_grad=1.0)
    assert losses["loss"].item() < 1e-7


def test_loss_grows_with_the_error():
    ir, y_vis = _ir_over_flat_vis()
    noise = torch.randn_like(ir, generator=torch.Generator().manual_seed(1))
    values = [fusion_loss(ir + s * noise, ir, y_vis)["loss"].item() for s in (0.0, 0.01, 0.05, 0.2)]
    assert values == sorted(values) and values[-1] > 10 * values[1] > 0


def test_intensity_target_is_the_pixelwise_max():
    ir = torch.tensor([[[[0.2, 0.9]]]])
    y_vis = torch.tensor([[[[0.6, 0.1]]]])
    losses = fusion_loss(torch.tensor([[[[0.6, 0.9]]]]), ir, y_vis, w_grad=0.0)
    assert losses["loss_int"].item() == 0.0
    losses = fusion_loss(torch.tensor([[[[0.2, 0.9]]]]), ir, y_vis, w_grad=0.0)
    assert abs(losses["loss_int"].item() - 0.2) < 1e-6  # mean of |0.2-0.6| and 0


def test_sobel_of_a_ramp_and_a_flat_image():
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 8, 10)
    grad = sobel_magnitude(ramp)
    assert torch.allclose(grad[..., 1:-1], torch.full_like(grad[..., 1:-1], 8.0))  # 1+2+1, twice the step
    assert sobel_magnitude(torch.ones(1, 1, 5, 5)).abs().max() == 0


def test_mask_weights_are_normalised_by_coverage():
    """A constant error gives the same loss whatever the mask covers (docs/design.md, Mask-guided losses)."""
    ir, y_vis = _ir_over_flat_vis()
    fused = ir + 0.1
    small = torch.zeros_like(ir)
    small[..., :3, :3] = 1
    large = torch.ones_like(ir)
    a = fusion_loss(fused, ir, y_vis, mask_ir=small, mask_vis=small, mask_weight=4.0)["loss_int"]
    b = fusion_loss(fused, ir, y_vis, mask_ir=large, mask_vis=large, mask_weight=4.0)["loss_int"]
    assert torch.allclose(a, b) and abs(a.item() - 0.1) < 1e-5


def test_masked_loss_weights_errors_inside_the_mask_more():
    ir, y_vis = _ir_over_flat_vis()
    mask = torch.zeros_like(ir)
    mask[..., :, :14] = 1
    err_in, err_out = ir.clone(), ir.clone()
    err_in[..., :, :14] += 0.1
    err_out[..., :, 14:] += 0.1
    kw = {"mask_ir": mask, "mask_vis": mask, "mask_weight": 3.0}
    inside, outside = (fusion_loss(e, ir, y_vis, **kw)["loss_int"] for e in (err_in, err_out))
    assert inside > outside
    # without weight the two errors cost the same
    inside, outside = (fusion_loss(e, ir, y_vis)["loss_int"] for e in (err_in, err_out))
    assert torch.isclose(inside, outside)


def test_ycbcr_round_trip_and_grey_luminance():
    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-5)
    grey = torch.rand(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert torch.allclose(rgb_to_y(grey), grey[:, :1], atol=1e-6)
    # recombining the VIS luminance with its own chroma gives the VIS image back
    assert torch.allclose(recombine(rgb_to_y(rgb), rgb), rgb, atol=1e-5)


def test_ssim_term_is_off_by_default_and_scores_structure():
    ir, y_vis = _ir_over_flat_vis(32, 32)
    y_vis = y_vis + 0.3 * torch.rand_like(y_vis, generator=torch.Generator().manual_seed(2))
    plain = fusion_loss(ir, ir, y_vis)
    assert "loss_ssim" not in plain
    with_ssim = fusion_loss(ir, ir, y_vis, w_ssim=2.0)
    # F = IR: SSIM to IR is 1, so the term is ½(1 − SSIM(IR, VIS)) and adds 2× that to the total
    # the map's mean (torchmetrics < 1.5 crops the border from its scalar score, not from the map)
    _, ssim_map = structural_similarity_index_measure(ir, y_vis, data_range=1.0, return_full_image=True)
    expected = 0.5 * (1 - ssim_map.mean().item())
    assert abs(ssim_loss(ir, ir, y_vis).item() - expected) < 1e-5
    assert abs(with_ssim["loss_ssim"].item() - expected) < 1e-5
    assert abs(with_ssim["loss"].item() - plain["loss"].item() - 2.0 * expected) < 1e-5
    noisy = ir + 0.2 * torch.randn_like(ir, generator=torch.Generator().manual_seed(3))
    assert fusion_loss(noisy, ir, y_vis, w_ssim=1.0)["loss_ssim"] > with_ssim["loss_ssim"]


def test_ssim_term_follows_the_mask_weights():
    ir, y_vis = _ir_over_flat_vis(32, 32)
    fused = ir.clone()
    g = torch.Generator().manual_seed(4)
    fused[..., :, 16:] += 0.3 * torch.randn_like(fused[..., :, 16:], generator=g)
    left = torch.zeros_like(ir)
    left[..., :, :16] = 1.0
    kw = {"w_ssim": 1.0, "mask_vis": torch.zeros_like(ir), "mask_weight": 10.0}
    on_clean = fusion_loss(fused, ir, y_vis, mask_ir=left, **kw)["loss_ssim"]
    on_noisy = fusion_loss(fused, ir, y_vis, mask_ir=1 - left, **kw)["loss_ssim"]
    assert on_noisy > on_clean  # weighting the damaged half raises the IR part of the term


def test_salient_targets_are_the_max_inside_the_ir_mask_and_a_source_outside():
    ir = torch.tensor([[[[0.2, 0.9, 0.8]]]])
    y_vis = torch.tensor([[[[0.6, 0.1, 0.4]]]])
    mask_ir = torch.tensor([[[[0.0, 1.0, 0.0]]]])
    target = target_intensity(ir, y_vis, mask_ir, "salient_mean")
    assert torch.allclose(target, torch.tensor([[[[0.4, 0.9, 0.6]]]]))
    assert torch.equal(target_intensity(ir, y_vis, mask_ir, "max"), torch.maximum(ir, y_vis))
    salient_vis = target_intensity(ir, y_vis, mask_ir, "salient_vis")
    assert torch.allclose(salient_vis, torch.tensor([[[[0.6, 0.9, 0.4]]]]))
    kw = {"w_grad": 0.0, "mask_ir": mask_ir, "mask_vis": torch.zeros_like(ir), "mask_weight": 1.0}
    assert fusion_loss(target, ir, y_vis, intensity_target="salient_mean", **kw)["loss_int"].item() < 1e-7
    assert fusion_loss(target, ir, y_vis, **kw)["loss_int"].item() > 0.1  # the max target disagrees


def test_salient_targets_need_a_mask_and_a_known_name():
    ir, y_vis = _ir_over_flat_vis()
    with pytest.raises(ValueError, match="needs masks"):
        fusion_loss(ir, ir, y_vis, intensity_target="salient_mean")
    with pytest.raises(ValueError, match="intensity_target='brightest'"):
        target_intensity(ir, y_vis, None, "brightest")


def test_signed_gradient_target_keeps_the_polarity_of_the_stronger_source():
    """Both forms are zero on the stronger source's gradient; only ``signed`` charges a flipped edge."""
    ir, y_vis = _ir_over_flat_vis()
    flipped = 1.0 - ir  # the same gradient magnitudes, every edge reversed
    for kind in ("magnitude", "signed"):
        assert gradient_loss(ir, ir, y_vis, kind=kind).item() < 1e-7
    assert gradient_loss(flipped, ir, y_vis, kind="magnitude").item() < 1e-6
    signed = gradient_loss(flipped, ir, y_vis, kind="signed")
    assert torch.allclose(signed, 2 * sobel_magnitude(ir).mean())  # |-g - g| = 2|g| per component


def test_signed_gradient_target_takes_each_pixels_stronger_source():
    """IR has a horizontal ramp on the left half, VIS a vertical one on the right: away from the seam the
    signed target is IR's gradient on the left and VIS's on the right, so flipping VIS costs only there."""
    cols = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 12, 16) / 32
    rows = torch.arange(12.0).view(1, 1, 12, 1).expand(1, 1, 12, 16) / 24
    left = (cols < 8 / 32).float()
    ir, y_vis = cols * left, rows * (1 - left)
    inner_left, inner_right = torch.zeros_like(ir), torch.zeros_like(ir)
    inner_left[..., 1:-1, 1:6], inner_right[..., 1:-1, 10:-1] = 1, 1  # two pixels clear of the seam
    flipped_vis = ir - y_vis
    for weight in (inner_left, inner_right):
        assert gradient_loss(ir + y_vis, ir, y_vis, weight, kind="signed").item() < 1e-6
        assert gradient_loss(flipped_vis, ir, y_vis, weight, kind="magnitude").item() < 1e-6
    assert gradient_loss(flipped_vis, ir, y_vis, inner_left, kind="signed").item() < 1e-6
    assert gradient_loss(flipped_vis, ir, y_vis, inner_right, kind="signed").item() > 0.1


def test_unknown_gradient_target_names_the_key():
    ir, y_vis = _ir_over_flat_vis()
    with pytest.raises(ValueError, match=r"gradient_target='sloped'.*model\.stage1\.loss\.gradient_target"):
        fusion_loss(ir, ir, y_vis, gradient_target="sloped")
