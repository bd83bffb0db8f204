"""Stage II: denoiser, HFAH, diffusion logic and the Lightning module (tiny models, 32–48 px)."""

from __future__ import annotations

import copy
import shutil
from typing import get_args, get_type_hints

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from lightning_modules import CheckpointError, load_fusion_model
from lightning_modules.stage1 import Stage1FusionModule
from lightning_modules.stage2 import Stage2DiffusionModule, Stage2Loss
from sgdfuse.losses import INTENSITY_TARGETS
from sgdfuse.models.stage2 import HFAH, ConvHead, Denoiser, ResidualHead, predict_x0
from sgdfuse.orchestration.config_schema import FILLED_BY_PIPELINE, ConfigError, TrainConfig, check_config
from tests.conftest import NO_LOG, TINY_STAGE1_NET, TINY_STAGE2_ARGS, compose_train, make_batch

TINY_STAGE1 = TINY_STAGE1_NET
TINY = {**TINY_STAGE2_ARGS, "optimizer": {"_target_": "torch.optim.Adam", "lr": 3e-3}}


def smooth_batch(b: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> dict:
    """Images with structure (upsampled noise) and blob masks, like real pairs rather than pixel noise."""
    batch = make_batch(b=b, h=h, w=w, seed=seed)
    for key in ("ir", "vis", "mask_ir", "mask_vis"):
        small = batch[key][..., ::8, ::8]
        batch[key] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    for key in ("mask_ir", "mask_vis"):
        batch[key] = (batch[key] > 0.5).float()
    return batch


def _loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CPU is shared: tiny models run several times faster on one thread than fighting for two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory) -> str:
    """A real (briefly trained) Stage-I checkpoint written by Lightning."""
    torch.manual_seed(0)
    module = Stage1FusionModule(net=TINY_STAGE1)
    trainer = L.Trainer(max_steps=1, **NO_LOG)
    trainer.fit(module, _loader([smooth_batch()]))
    path = tmp_path_factory.mktemp("stage1") / "last.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def make_module(stage1_ckpt: str | None, **kw) -> Stage2DiffusionModule:
    args = {**copy.deepcopy(TINY), **kw}
    return Stage2DiffusionModule(stage1_ckpt=stage1_ckpt, **args)


# --- diffusion maths ----------------------------------------------------------------------------------
def test_x0_recovered_from_true_noise_with_the_schedulers_alphas():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-6, beta_end=1e-2, beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 5, 500, 999])
    x_t = sched.add_noise(x0, noise, t)
    assert torch.allclose(predict_x0(sched, x_t, noise, t), x0, atol=1e-4)
    # a wrong ε gives a wrong x0, increasingly so with t (the test is not vacuous)
    err = (predict_x0(sched, x_t, torch.zeros_like(noise), t) - x0).abs().flatten(1).mean(1)
    assert err[0] < 1e-2 < err[2] < err[3]


# --- blocks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_masks, channels", [(True, 5), (False, 3)])
def test_unet_input_channels_follow_the_mask_setting(stage1_ckpt, use_masks, channels):
    module = make_module(stage1_ckpt, masks=use_masks)
    unet = module.refiner.denoiser.unet
    assert unet.config.in_channels == channels and unet.conv_in.in_channels == channels
    batch = smooth_batch()
    if not use_masks:  # masks are neither needed nor read
        del batch["mask_ir"], batch["mask_vis"]
    with torch.no_grad():
        assert module.eval().fuse(batch)["final"].shape == (2, 3, 32, 32)


def test_attention_only_at_the_lowest_resolution():
    unet = Denoiser(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4).unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]


def test_denoiser_features_per_level_and_odd_sizes():
    den = Denoiser(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4)
    out = den(torch.rand(2, 3, 33, 47), 10, torch.rand(2, 2, 33, 47))
    assert out.sample.shape == (2, 3, 33, 47)
    assert out.padded_size == (36, 48)
    assert [tuple(f.shape) for f in out.features] == [(2, 8, 36, 48), (2, 16, 18, 24), (2, 16, 9, 12)]
    with pytest.raises(ValueError, match="cond"):
        den(torch.rand(2, 3, 32, 32), 10, torch.rand(2, 1, 32, 32))
    # a deep copy (EMA/SWA) captures its own features
    x, cond = torch.rand(1, 3, 32, 32), torch.rand(1, 2, 32, 32)
    twin = copy.deepcopy(den)
    twin.unet.conv_in.weight.data.mul_(2)
    feats, twin_feats = den(x, 3, cond).features, twin(x, 3, cond).features
    assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(feats, twin_feats, strict=True))


def test_hfah_widths_generalise_to_the_number_of_levels():
    head = HFAH([24, 48, 96], level_channels=64, spatial_attention=True)
    convs = [m for m in head.decoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(192, 64), (64, 32), (32, 3)]
    feats = [torch.randn(1, 24, 16, 16), torch.randn(1, 48, 8, 8), torch.randn(1, 96, 4, 4)]
    out = head(feats, size=(20, 18))
    assert out.shape == (1, 3, 20, 18) and out.abs().max() <= 1
    assert HFAH([24, 48, 96], spatial_attention=False).spatial is None


# --- the module ---------------------------------------------------------------------------------------
def test_different_masks_give_a_different_output(stage1_ckpt):
    module = make_module(stage1_ckpt).eval()
    batch = smooth_batch()
    other = dict(batch, mask_ir=1 - batch["mask_ir"], mask_vis=torch.zeros_like(batch["mask_vis"]))
    with torch.no_grad():
        a, b = module.fuse(batch)["final"], module.fuse(other)["final"]
    assert (a - b).abs().max() > 1e-4


def test_stage1_gets_no_gradient_and_stays_unchanged_in_eval_mode(stage1_ckpt):
    torch.manual_seed(0)
    module = make_module(stage1_ckpt, phase="joint")
    before = {k: v.clone() for k, v in module.stage1.state_dict().items()}
    unet_before = copy.deepcopy(module.refiner.denoiser.state_dict())
    trainer = L.Trainer(max_steps=3, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=1,
                        **NO_LOG)
    trainer.fit(module, _loader([smooth_batch(seed=i) for i in range(3)]), _loader([smooth_batch(seed=9)]))
    assert all(p.grad is None and not p.requires_grad for p in module.stage1.parameters())
    after = module.stage1.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and buffers
    assert not any(m.training for m in module.stage1.modules())  # also after validation switched modes
    module.train()
    assert not module.stage1.training and module.refiner.training
    # the trainable part did train (so the checks above are not vacuous)
    changed = module.refiner.denoiser.state_dict()
    assert any(not torch.equal(unet_before[k], changed[k]) for k in unet_before)


def test_phase_b_freezes_the_unet_and_keeps_it_in_eval_mode(stage1_ckpt):
    module = make_module(stage1_ckpt, phase="b", unet={**TINY["unet"], "dropout": 0.5}).train()
    trainable = {id(p) for p in module.trainable_parameters()}
    assert trainable == {id(p) for p in module.refiner.head.parameters()}
    assert not module.refiner.denoiser.training and module.refiner.head.training
    x0, noise = torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 3, 32, 32)
    cond = smooth_batch(b=1)["mask_ir"].repeat(1, 2, 1, 1)
    # dropout 0.5 would make two passes differ if the UNet were in train mode
    assert torch.equal(module.refiner.decode(x0, cond, noise), module.refiner.decode(x0, cond, noise))


@pytest.mark.parametrize("phase, unet, head", [("a", True, False), ("joint", True, True)])
def test_phase_sets_what_trains(stage1_ckpt, phase, unet, head):
    module = make_module(stage1_ckpt, phase=phase)
    assert all(p.requires_grad == unet for p in module.refiner.denoiser.parameters())
    assert all(p.requires_grad == head for p in module.refiner.head.parameters())


def _count_unet_calls(module: Stage2DiffusionModule) -> list[int]:
    calls = [0]
    module.refiner.denoiser.unet.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_features_and_refine_make_the_expected_number_of_unet_passes(stage1_ckpt):
    batch = smooth_batch()
    module = make_module(stage1_ckpt, feature_timesteps=[5, 50, 100]).eval()
    calls = _count_unet_calls(module)
    with torch.no_grad():
        module.fuse(batch)
    assert calls[0] == 3
    module = make_module(stage1_ckpt, feature_timesteps=[5, 50, 100],
                         inference={"mode": "refine", "t0": 100, "n_steps": 10}).eval()
    calls = _count_unet_calls(module)
    with torch.no_grad():
        module.fuse(batch)
    assert calls[0] == 3 + 10
    # the DDIM chain starts at the grid point nearest t0 and ends at x0
    assert module.refiner.sampler.timesteps[-10:].tolist() == list(range(99, 0, -10))


def _fixed_steps(module: Stage2DiffusionModule, batch: dict, steps: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (batch["ir"].shape[0],), generator=g)
    noise = torch.randn(batch["vis"].shape, generator=g)
    opt = module.configure_optimizers()["optimizer"]
    first = module.compute_losses(batch, t, noise)["loss"].item()
    for _ in range(steps):
        opt.zero_grad()
        module.compute_losses(batch, t, noise)["loss"].backward()
        opt.step()
    return first, module.compute_losses(batch, t, noise)["loss"].item()


@pytest.mark.parametrize("phase", ["a", "b", "joint", "direct"])
def test_a_few_steps_with_fixed_t_and_noise_lower_each_phase_loss(stage1_ckpt, phase):
    torch.manual_seed(0)
    module = make_module(stage1_ckpt, phase=phase)
    first, last = _fixed_steps(module, smooth_batch(), steps=10)
    assert last < 0.8 * first, (phase, first, last)


def test_phase_losses_are_the_expected_terms(stage1_ckpt):
    batch = smooth_batch()
    assert set(make_module(stage1_ckpt, phase="a").compute_losses(batch)) == {"loss", "loss_eps", "x0_mae"}
    joint = make_module(stage1_ckpt, phase="joint").compute_losses(batch)
    assert {"loss_eps", "loss_int", "loss_grad", "loss_fusion"} <= set(joint)
    assert torch.allclose(joint["loss"], joint["loss_eps"] + joint["loss_fusion"])


def test_loss_options_reach_the_fusion_loss_and_bad_ones_fail_at_construction(stage1_ckpt):
    batch = smooth_batch()
    base = {"w_int": 1.0, "w_grad": 0.0, "mask_weight": 0.0}
    kinds = {kind: make_module(stage1_ckpt, phase="b", loss={**base, "intensity_target": kind})
             for kind in INTENSITY_TARGETS}
    for module in kinds.values():
        module.load_state_dict(kinds["max"].state_dict())
    noise = torch.zeros_like(batch["vis"])
    y = {k: m.compute_losses(batch, noise=noise)["loss_int"].item() for k, m in kinds.items()}
    assert len({round(v, 6) for v in y.values()}) == len(INTENSITY_TARGETS)  # one loss per target
    assert get_args(get_type_hints(Stage2Loss)["intensity_target"]) == INTENSITY_TARGETS  # one list of names
    with pytest.raises(ValueError, match="intensity_target='brightest'"):
        make_module(stage1_ckpt, loss={"intensity_target": "brightest"})
    with pytest.raises(ValueError, match="needs masks"):
        make_module(stage1_ckpt, masks=False, loss={"intensity_target": "salient_vis"})
    with pytest.raises(ConfigError, match="intensity_target='brightest'"):
        check_config(compose_train(["model.stage2.loss.intensity_target=brightest"]), TrainConfig,
                     filled_later=FILLED_BY_PIPELINE)


def test_inference_is_deterministic_per_image_name(stage1_ckpt):
    module = make_module(stage1_ckpt).eval()
    batch = smooth_batch()
    with torch.no_grad():
        a = module.fuse(batch)["final"]
        b = module.fuse(batch)["final"]
        alone = module.fuse({k: v[1:] for k, v in batch.items()})["final"]  # same pair, other batch
        renamed = module.fuse(dict(batch, name=["x.png", "y.png"]))["final"]
    assert torch.equal(a, b)
    assert torch.allclose(a[1:], alone, atol=1e-5)
    assert (a - renamed).abs().max() > 1e-5  # the noise really comes from the name


@pytest.mark.parametrize("mode", ["features", "refine"])
def test_odd_sizes_give_the_input_size(stage1_ckpt, mode):
    module = make_module(stage1_ckpt, unet={**TINY["unet"], "block_out_channels": [8, 16, 16]},
                         inference={"mode": mode, "t0": 50, "n_steps": 2}).eval()
    batch = smooth_batch(b=1, h=33, w=47)
    with torch.no_grad():
        out = module.fuse(batch)
    assert out["final"].shape == out["stage1"].shape == (1, 3, 33, 47)
    assert out["final"].min() >= 0 and out["final"].max() <= 1


def test_checkpoint_round_trips_without_the_stage1_file(stage1_ckpt, tmp_path):
    s1 = tmp_path / "stage1.ckpt"
    shutil.copy(stage1_ckpt, s1)
    module = make_module(str(s1), phase="b")
    trainer = L.Trainer(max_steps=2, **NO_LOG)
    trainer.fit(module, _loader([smooth_batch(seed=i) for i in range(2)]))
    path = tmp_path / "s2.ckpt"
    trainer.save_checkpoint(path)
    s1.unlink()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["stage1_net"] == TINY_STAGE1
    loaded = load_fusion_model(path)
    assert isinstance(loaded, Stage2DiffusionModule) and loaded.hparams.phase == "b"
    batch = smooth_batch(b=1, h=36, w=40, seed=5)
    with torch.no_grad():
        expected = module.eval().fuse(batch)
        got = loaded.fuse(batch)
    assert torch.equal(expected["final"], got["final"]) and torch.equal(expected["stage1"], got["stage1"])


def test_next_phase_starts_from_the_previous_one(stage1_ckpt, tmp_path):
    module = make_module(stage1_ckpt, phase="a")
    trainer = L.Trainer(max_steps=1, **NO_LOG)
    trainer.fit(module, _loader([smooth_batch()]))
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    nxt = make_module(stage1_ckpt, phase="b")
    nxt.load_previous_phase(str(path))
    assert all(torch.equal(v, nxt.state_dict()[k]) for k, v in module.state_dict().items())
    with pytest.raises(CheckpointError, match="share every model.stage2 setting"):
        make_module(stage1_ckpt, phase="b", masks=False).load_previous_phase(str(path))
    with pytest.raises(CheckpointError, match="not by lightning_modules.stage2"):
        nxt.load_previous_phase(stage1_ckpt)


def test_unusable_stage1_checkpoints_fail_before_training(stage1_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        make_module(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="stage1_ckpt is null"):
        make_module(None)
    ckpt = torch.load(stage1_ckpt, weights_only=True)
    other_config = tmp_path / "other.ckpt"
    ckpt["hyper_parameters"]["net"]["channels"] = 16  # a config that does not fit the stored weights
    torch.save(ckpt, other_config)
    with pytest.raises(CheckpointError, match="does not match the current Stage-I"):
        make_module(str(other_config))
    not_stage1 = tmp_path / "stage2.ckpt"
    trainer = L.Trainer(max_steps=1, **NO_LOG)
    trainer.fit(make_module(stage1_ckpt), _loader([smooth_batch()]))
    trainer.save_checkpoint(not_stage1)
    with pytest.raises(CheckpointError, match="not by Stage I"):
        make_module(str(not_stage1))


def test_masks_of_the_wrong_shape_are_rejected(stage1_ckpt):
    module = make_module(stage1_ckpt)
    batch = smooth_batch()
    with pytest.raises(ValueError, match="mask_vis"):
        module.compute_losses(dict(batch, mask_vis=batch["mask_vis"][..., :16]))
    no_masks = {k: v for k, v in batch.items() if k != "mask_ir"}
    with pytest.raises(ValueError, match="mask_ir.*missing"):
        module.fuse(no_masks)


def test_inconsistent_options_are_rejected(stage1_ckpt):
    with pytest.raises(ValueError, match="does not exist"):
        make_module(stage1_ckpt, phase="c")
    with pytest.raises(ValueError, match="refine needs a diffusion phase"):
        make_module(stage1_ckpt, phase="direct", inference={"mode": "refine"})
    with pytest.raises(ValueError, match="head must be a _target_"):
        make_module(stage1_ckpt, head={"level_channels": 8})
    with pytest.raises(ValueError, match="masks. must be true or false"):
        make_module(stage1_ckpt, masks="no")


def test_ablation_variants(stage1_ckpt):
    single = make_module(None, first_stage={"_target_": "sgdfuse.models.mean_fusion.MeanFusion"})
    batch = smooth_batch()
    grey = dict(batch, vis=batch["vis"][:, :1].repeat(1, 3, 1, 1))  # neutral chroma: F1 is grey
    f1 = single.stage1_image(grey)
    assert torch.allclose(f1, (0.5 * (grey["ir"] + grey["vis"][:, :1])).expand_as(f1), atol=1e-5)
    with torch.no_grad():
        assert set(single.eval().fuse(batch)) == {"final"}  # no Stage-I image to score
    conv = make_module(stage1_ckpt, head={"_target_": "sgdfuse.models.stage2.conv_head.ConvHead"})
    assert isinstance(conv.refiner.head, ConvHead)
    direct = make_module(stage1_ckpt, phase="direct").eval()
    calls = _count_unet_calls(direct)
    with torch.no_grad():
        direct.fuse(batch)
    assert calls[0] == 1  # one clean pass at t = 0


RESIDUAL = {"_target_": "sgdfuse.models.stage2.residual_head.ResidualHead",
            "inner": "sgdfuse.models.stage2.hfah.HFAH", "max_correction": 0.25,
            "level_channels": 8, "hidden_channels": [8, 8], "ratio": 4}


def test_residual_head_starts_exactly_at_stage1_and_moves_within_its_bound(stage1_ckpt):
    torch.manual_seed(0)
    module = make_module(stage1_ckpt, phase="b", head=RESIDUAL)
    assert isinstance(module.refiner.head, ResidualHead)
    batch = smooth_batch(b=1, h=33, w=47)
    with torch.no_grad():
        out = module.eval().fuse(batch)
    assert torch.equal(out["final"], out["stage1"])  # step 0: F2 = F1 bit for bit (odd size: cropped)
    first, last = _fixed_steps(module.train(), smooth_batch(), steps=10)
    assert last < first  # the zero-initialised last conv does receive gradients
    with torch.no_grad():
        moved = module.eval().fuse(batch)
    diff = (moved["final"] - out["final"]).abs()
    assert diff.max() > 1e-4  # training moved away from F1 ...
    # ... by at most the bound: |ΔY| <= max_correction / 2 in [0, 1] (chroma is VIS's, unchanged)
    assert diff.max() <= 0.125 + 1e-4


class _MeanHead(torch.nn.Module):
    """A test-only head (plugged in by config alone): mean of the first level, projected to 3 channels."""

    def __init__(self, in_channels, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(in_channels[0], 3, 1)
        self.scale = scale

    def forward(self, features, size=None):
        out = torch.tanh(self.scale * self.proj(features[0]))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def test_a_new_head_plugs_in_through_config_alone(stage1_ckpt):
    cfg = compose_train(["model.stage2.head._target_=tests.test_stage2._MeanHead",
                         "~model.stage2.head.inner", "~model.stage2.head.max_correction",
                         "~model.stage2.head.level_channels", "~model.stage2.head.hidden_channels",
                         "~model.stage2.head.ratio", "~model.stage2.head.spatial_attention",
                         "+model.stage2.head.scale=0.5"])
    tiny = OmegaConf.merge(cfg.model.stage2, {k: v for k, v in TINY.items() if k != "head"})
    module = instantiate(tiny, stage1_ckpt=stage1_ckpt, phase="b", masks=True)
    assert isinstance(module.refiner.head, _MeanHead) and module.refiner.head.scale == 0.5
    first, last = _fixed_steps(module, smooth_batch(), steps=3)
    assert last < first


# --- experiment configs -------------------------------------------------------------------------------
HEADS = {"hfah": HFAH, "conv": ConvHead, "residual_hfah": ResidualHead, "residual_conv": ResidualHead}
EXPERIMENTS = {  # experiment -> (model.stage2 keys that differ from `full`, top-level changes, head option)
    "paper": ({"head"}, {}, "hfah"),
    "ablate_residual": ({"head"}, {}, "hfah"),
    "ablate_diffusion": (set(), {"stage2_phases": ["direct"]}, "residual_hfah"),
    "ablate_hfah": ({"head"}, {}, "residual_conv"),
    "single_stage": ({"first_stage"}, {"stages": ["stage2", "test"]}, "residual_hfah"),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_changes_exactly_its_component(name, stage1_ckpt):
    full = OmegaConf.to_container(compose_train(["+experiment=full"]), resolve=True)
    cfg = compose_train([f"+experiment={name}"])
    exp = OmegaConf.to_container(cfg, resolve=True)
    stage2_diff = {k for k, v in exp["model"]["stage2"].items() if full["model"]["stage2"].get(k) != v}
    model_keys, top, head = EXPERIMENTS[name]
    assert stage2_diff == model_keys
    assert exp["model"]["stage2"]["head"] == OmegaConf.to_container(
        compose_train([f"model/stage2/head={head}"]).model.stage2.head, resolve=True)
    if name != "paper":
        assert exp["model"]["stage1"] == full["model"]["stage1"]
    for key, value in top.items():
        assert exp[key] == value
    for key in ("stages", "stage2_phases", "data", "masks"):
        if key not in top:
            assert exp[key] == full[key]
    tiny = OmegaConf.merge(cfg.model.stage2, {k: v for k, v in TINY.items() if k != "head"},
                           {"head": {"level_channels": 8, "hidden_channels": [8, 8], "ratio": 4}}
                           if head != "conv" and head != "residual_conv" else {})
    module = instantiate(tiny, stage1_ckpt=stage1_ckpt, phase=exp["stage2_phases"][0], masks=True)
    assert isinstance(module, Stage2DiffusionModule)
    assert module.phase.diffusion == (name != "ablate_diffusion")
    assert type(module.refiner.head) is HEADS[head]
    assert (module.hparams.first_stage is not None) == (name == "single_stage")
    if name == "ablate_diffusion":
        assert exp["steps"]["stage2_direct"] == exp["steps"]["stage2_joint"]
