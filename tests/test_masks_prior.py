"""masks=prior (weight-free semantic prior) and SAM-family models through the builder ``_target_``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from segment_anything.modeling import Sam
from torch import nn

from sgdfuse.data.base import Pair
from sgdfuse.data.synthetic import SyntheticPairs
from sgdfuse.masks.prior import PriorMasks, salient_regions, thermal_targets
from sgdfuse.masks.sam import SamMasks
from sgdfuse.masks.tiny_sam import build_tiny_sam
from tests.conftest import compose_train


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_prior_finds_the_ground_truth_objects_of_synthetic_pairs():
    """The synthetic set labels warm IR objects and textured VIS objects: the prior must recover them."""
    pairs = SyntheticPairs("test", num_pairs=6, height=96, width=128, seed=0)
    ious_ir, ious_vis = [], []
    for index in range(len(pairs)):
        pair = pairs[index]
        mask_ir, mask_vis = pair.masks
        ious_ir.append(_iou(thermal_targets(pair.ir) > 0, mask_ir > 0))
        ious_vis.append(_iou(salient_regions(pair.vis) > 0, mask_vis > 0))
    assert np.mean(ious_ir) > 0.6 and min(ious_ir) > 0.4, ious_ir  # measured: mean 0.78
    assert np.mean(ious_vis) > 0.45, ious_vis  # measured: mean 0.59
    # and not by covering everything
    assert all(thermal_targets(pairs[i].ir).mean() < 0.2 for i in range(len(pairs)))


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_images_give_empty_masks(value):
    ir = np.full((40, 50), value, np.float32)
    vis = np.full((40, 50, 3), value, np.float32)
    assert thermal_targets(ir).sum() == 0 and thermal_targets(ir).shape == (40, 50)
    assert salient_regions(vis).sum() == 0 and salient_regions(vis).dtype == np.uint8


def test_a_warm_blob_is_found_and_the_border_band_is_not():
    ir = np.full((80, 100), 0.2, np.float32)
    ir[30:45, 40:52] = 0.9  # a pedestrian-sized hot object
    ir[-4:, :] = 0.95  # a hot road band along the bottom edge
    mask = thermal_targets(ir)
    assert mask[37, 46] == 1 and mask[-2, 50] == 0
    assert 0.015 < mask.mean() < 0.04


def test_large_images_are_segmented_downscaled_and_the_mask_has_full_size():
    rng = np.random.default_rng(0)
    vis = np.full((600, 800, 3), 0.3, np.float32) + rng.normal(0, 0.01, (600, 800, 3)).astype(np.float32)
    vis[200:320, 300:420] = [0.9, 0.1, 0.1]  # a red object
    mask = salient_regions(vis)
    assert mask.shape == (600, 800) and mask[260, 360] == 1 and mask[50, 50] == 0


def test_prior_source_caches_like_sam(tmp_path):
    pairs = SyntheticPairs("test", num_pairs=3, height=48, width=64, seed=1)
    first = PriorMasks(cache_dir=str(tmp_path))
    first.prepare(pairs, "test")
    assert (first.stats.computed, first.stats.cached) == (3, 0)
    again = PriorMasks(cache_dir=str(tmp_path))
    again.prepare(pairs, "test")
    assert (again.stats.computed, again.stats.cached) == (0, 3)
    for index in range(3):
        np.testing.assert_array_equal(again.load(pairs[index])[0], thermal_targets(pairs[index].ir))
    other = PriorMasks(ir={"k": 2.5}, cache_dir=str(tmp_path))  # another setting: another cache folder
    assert other.source_hash != first.source_hash
    with pytest.raises(ValueError, match=r"masks.source.vis: unknown key\(s\) \['scales'\]"):
        PriorMasks(vis={"scales": 1}, cache_dir=str(tmp_path))


def test_masks_prior_config_composes_and_runs(tmp_path):
    cfg = compose_train(["masks=prior", f"paths.cache_dir={tmp_path}"])
    source = instantiate(cfg.masks.source)
    assert isinstance(source, PriorMasks) and source.enabled
    pair = Pair(name="x", ir=np.zeros((16, 16), np.float32), vis=np.zeros((16, 16, 3), np.float32), key="k")
    mask_ir, mask_vis = source.load(pair)  # an all-black pair: empty masks, no crash
    assert mask_ir.sum() == mask_vis.sum() == 0


# --- SAM-family models: any class with segment_anything's Sam API -------------------------------------------
class ForeignSam(nn.Module):
    """What MobileSAM / SAM-HQ ship: their own copy of the Sam class (not segment_anything's), here with
    a different image encoder behind the same interface."""

    mask_threshold = Sam.mask_threshold
    image_format = Sam.image_format
    device = Sam.device
    preprocess = Sam.preprocess
    postprocess_masks = Sam.postprocess_masks

    def __init__(self) -> None:
        super().__init__()
        tiny = build_tiny_sam(seed=3, img_size=128, embed_dim=32, depth=1)
        self.image_encoder = _ConvEncoder(tiny.image_encoder.img_size, out_chans=32)
        self.prompt_encoder, self.mask_decoder = tiny.prompt_encoder, tiny.mask_decoder
        self.register_buffer("pixel_mean", tiny.pixel_mean, False)
        self.register_buffer("pixel_std", tiny.pixel_std, False)


class _ConvEncoder(nn.Module):
    """A TinyViT stand-in: strided convs to the 1/16 embedding grid SAM's decoder expects."""

    def __init__(self, img_size: int, out_chans: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.net = nn.Sequential(nn.Conv2d(3, 16, 4, 4), nn.GELU(), nn.Conv2d(16, out_chans, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_foreign_sam() -> ForeignSam:
    torch.manual_seed(0)
    return ForeignSam().eval()


def test_a_sam_family_model_with_its_own_class_plugs_in_through_the_builder(tmp_path):
    source = SamMasks(model={"_target_": "tests.test_masks_prior.build_foreign_sam"},
                      generator={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                 "crop_n_layers": 0, "min_mask_region_area": 0},
                      min_area=0.0, max_area=1.0, cache_dir=str(tmp_path), device="cpu")
    pairs = SyntheticPairs("test", num_pairs=1, height=48, width=64, seed=0)
    source.prepare(pairs, "test")
    mask_ir, mask_vis = source.load(pairs[0])
    assert source.stats.computed == 1 and mask_ir.shape == mask_vis.shape == (48, 64)
    assert mask_ir.dtype == np.uint8 and set(np.unique(mask_ir)) <= {0, 1}
    not_sam = SamMasks(model={"_target_": "torch.nn.Identity"}, cache_dir=str(tmp_path), device="cpu")
    with pytest.raises(TypeError, match="without .*image_encoder.*Sam API"):
        not_sam.prepare(pairs, "test")
