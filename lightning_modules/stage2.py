"""Stage II: mask-conditioned diffusion refiner on top of the frozen Stage I (DESIGN.md "Stage II").

Phases (one parameter set; the phase only decides what trains):

- ``a``: the UNet learns ε on F1 noised at random t (ε-MSE); the head is frozen and unused.
- ``b``: the UNet is frozen (and kept in eval mode); the head learns F2 from its decoder features at
  ``feature_timesteps`` with the mask-guided intensity + gradient losses.
- ``joint``: both at once (ε-MSE + fusion losses; the fusion losses also reach the UNet).
- ``direct``: only with ``diffusion=False`` (ablation "w/o diffusion"): no noise, no ε objective; UNet and
  head are trained together as a direct refiner at t = 0 with the fusion losses.

Colour (DESIGN.md): F1 = Stage-I luminance with the VIS chroma, RGB in [0, 1], mapped by 2x − 1 for the
diffusion; all losses use Y of (F2 + 1)/2; the final image is that Y recombined with the VIS chroma.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler
from torch import nn

from lightning_modules import CheckpointError, read_checkpoint
from lightning_modules.base import CLASS_KEY, FusionModule
from lightning_modules.stage1 import Stage1FusionModule
from sgdfuse.color import recombine, rgb_to_y
from sgdfuse.losses import fusion_loss
from sgdfuse.models.stage1 import FusionNet
from sgdfuse.models.stage2 import HFAH, ConvHead, Denoiser, DiffusionRefiner, per_image_noise
from sgdfuse.models.stage2.refiner import INFERENCE_MODES, image_seed

PHASES = ("a", "b", "joint", "direct")
DEFAULT_UNET = {"block_out_channels": [64, 128, 256, 512], "layers_per_block": 2, "dropout": 0.2,
                "attention_head_dim": 8, "norm_num_groups": 32}
DEFAULT_HFAH = {"level_channels": 64, "hidden_channels": [64, 32], "ratio": 16, "spatial_attention": True}
DEFAULT_NOISE_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 1e-6, "beta_end": 1e-2,
                           "beta_schedule": "linear"}
DEFAULT_INFERENCE = {"mode": "features", "t0": 100, "n_steps": 10}
DEFAULT_LOSS = {"w_int": 1.5, "w_grad": 1.0, "mask_weight": 1.0, "w_eps": 1.0}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "lr": 1e-4}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Stage2DiffusionModule(FusionModule):
    """Frozen Stage I + :class:`DiffusionRefiner`, trained phase by phase.

    Args:
        stage1_ckpt: Stage-I ``last.ckpt``; required when ``use_stage1`` (unless ``stage1_net`` is set).
        phase: ``a`` | ``b`` | ``joint`` (diffusion) or ``direct`` (``diffusion=False``).
        use_stage1: False = ablation "single stage": Stage II refines the mean of IR and VIS-Y.
        use_masks: condition the UNet on (mask_ir, mask_vis) and weight the losses by them; False = a
            3-channel UNet and unweighted losses (ablation "w/o SAM").
        use_hfah: False = ablation "w/o HFAH": a 1×1 conv + Tanh on the last decoder feature.
        diffusion: False = ablation "w/o diffusion" (phase ``direct``).
        unet: keyword arguments of :class:`Denoiser` (widths, layers, dropout, ...).
        hfah: keyword arguments of :class:`HFAH` (ignored without HFAH).
        noise_scheduler: keyword arguments of ``diffusers.DDPMScheduler``.
        feature_timesteps: timesteps whose decoder features feed the head.
        inference: ``mode`` (features | refine), ``t0`` and ``n_steps`` of ``refine``.
        loss: ``w_int``, ``w_grad``, ``mask_weight`` of :func:`fusion_loss`; ``w_eps`` (joint phase).
        optimizer / scheduler: ``_target_`` dicts (see :class:`FusionModule`).
        stage1_net: Stage I's ``FusionNet`` arguments. Filled in from ``stage1_ckpt`` and saved in the
            hyperparameters, so that a Stage-II checkpoint rebuilds without the Stage-I file.
    """

    #: Dict parameters holding another callable's keyword arguments (their types: config_schema).
    KWARGS_OF: ClassVar[dict[str, Any]] = {"unet": Denoiser, "hfah": HFAH, "noise_scheduler": DDPMScheduler,
                                           "inference": DiffusionRefiner.infer}

    def __init__(
        self,
        stage1_ckpt: str | None = None,
        phase: str = "a",
        use_stage1: bool = True,
        use_masks: bool = True,
        use_hfah: bool = True,
        diffusion: bool = True,
        unet: dict[str, Any] | None = None,
        hfah: dict[str, Any] | None = None,
        noise_scheduler: dict[str, Any] | None = None,
        feature_timesteps: list[int] | tuple[int, ...] = (5, 50, 100),
        inference: dict[str, Any] | None = None,
        loss: dict[str, float] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        stage1_net: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        inference = {**DEFAULT_INFERENCE, **(inference or {})}
        _check_options(phase, diffusion, inference)
        self.save_hyperparameters({
            "stage1_ckpt": stage1_ckpt,
            "phase": phase,
            "use_stage1": bool(use_stage1),
            "use_masks": bool(use_masks),
            "use_hfah": bool(use_hfah),
            "diffusion": bool(diffusion),
            "unet": {**DEFAULT_UNET, **(unet or {})},
            "hfah": {**DEFAULT_HFAH, **(hfah or {})},
            "noise_scheduler": {**DEFAULT_NOISE_SCHEDULER, **(noise_scheduler or {})},
            "feature_timesteps": [int(t) for t in feature_timesteps],
            "inference": inference,
            "loss": {**DEFAULT_LOSS, **(loss or {})},
            "optimizer": dict(optimizer or DEFAULT_OPTIMIZER),
            "scheduler": dict(scheduler) if scheduler else None,
            "stage1_net": dict(stage1_net) if stage1_net else None,
        })
        self.stage1 = self._build_stage1() if use_stage1 else None
        self.refiner = self._build_refiner()
        self._set_trainable()
        self.train()  # applies the frozen parts' eval mode (see `train`)

    # --- construction --------------------------------------------------------------------------------
    def _build_stage1(self) -> nn.Module:
        hp = self.hparams
        if hp.stage1_net is not None:  # rebuilt from a Stage-II checkpoint: weights follow in its state dict
            net = FusionNet(**hp.stage1_net)
        elif hp.stage1_ckpt:
            stage1 = load_stage1(hp.stage1_ckpt)
            net, hp.stage1_net = stage1.net, dict(stage1.hparams.net)
        else:
            raise ValueError("model.stage2.stage1_ckpt is null: Stage II refines a trained Stage I. Run "
                             "stage1 first (stages: [stage1, stage2, ...]) or pass its last.ckpt; for the "
                             "single-stage ablation set model.stage2.use_stage1=false.")
        net.requires_grad_(False)
        return net

    def _build_refiner(self) -> DiffusionRefiner:
        hp = self.hparams
        denoiser = Denoiser(cond_channels=2 if hp.use_masks else 0, **hp.unet)
        n_steps = DiffusionRefiner.num_feature_steps(hp.feature_timesteps, hp.diffusion)
        in_channels = [c * n_steps for c in denoiser.feature_channels]
        head = HFAH(in_channels, **hp.hfah) if hp.use_hfah else ConvHead(in_channels)
        return DiffusionRefiner(denoiser, head, DDPMScheduler(**hp.noise_scheduler), hp.feature_timesteps,
                                diffusion=hp.diffusion)

    def _set_trainable(self) -> None:
        phase = self.hparams.phase
        self.refiner.denoiser.requires_grad_(phase in ("a", "joint", "direct"))
        self.refiner.head.requires_grad_(phase in ("b", "joint", "direct"))

    def train(self, mode: bool = True) -> Stage2DiffusionModule:
        """Frozen parts stay in eval mode whatever Lightning or the user switches: Stage I always, the
        UNet in phase b (its dropout would otherwise perturb the features the head learns from)."""
        super().train(mode)
        if self.stage1 is not None:
            self.stage1.eval()
        if self.hparams.phase == "b":
            self.refiner.denoiser.eval()
        return self

    def load_previous_phase(self, path: str) -> None:
        """Start this phase from the previous phase's checkpoint (whole state dict, Stage I included)."""
        checkpoint = read_checkpoint(path)
        writer = checkpoint.get(CLASS_KEY) or "an unknown module"
        if writer != _class_path(type(self)):
            raise CheckpointError(f"{path} was written by {writer}, not by {_class_path(type(self))}: "
                                  "pass a Stage-II phase's last.ckpt.")
        try:
            self.load_state_dict(checkpoint["state_dict"], strict=True)
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path} does not fit this Stage-II model ({err}). The phases of one run "
                                  "must share every model.stage2 setting except `phase`.") from err

    # --- inputs --------------------------------------------------------------------------------------
    def _check_batch(self, batch: dict[str, Any]) -> None:
        ir, vis = batch["ir"], batch["vis"]
        b, _, h, w = ir.shape
        if ir.ndim != 4 or ir.shape[1] != 1 or vis.shape != (b, 3, h, w):
            raise ValueError(f"Stage II: batch['ir'] must be B×1×H×W and batch['vis'] B×3×H×W, got "
                             f"{tuple(ir.shape)} and {tuple(vis.shape)}")
        if not self.hparams.use_masks:
            return
        for key in ("mask_ir", "mask_vis"):
            mask = batch.get(key)
            if mask is None or tuple(mask.shape) != (b, 1, h, w):
                got = "missing" if mask is None else f"shape {tuple(mask.shape)}"
                raise ValueError(f"Stage II with use_masks=true needs batch[{key!r}] of shape {(b, 1, h, w)} "
                                 f"(like batch['ir']), got {got}. Check the mask source "
                                 "(masks=sam|labels), or use masks=none with model.stage2.use_masks=false.")

    def stage1_image(self, batch: dict[str, Any]) -> torch.Tensor:
        """F1: RGB in [0, 1] (Stage-I luminance, or the IR/VIS-Y mean without Stage I, + VIS chroma)."""
        ir, vis = batch["ir"], batch["vis"]
        with torch.no_grad():  # Stage I is frozen: no graph, no gradient can reach it
            y = self.stage1(ir, vis) if self.stage1 is not None else 0.5 * (ir + rgb_to_y(vis))
        return recombine(y, vis)

    def _cond(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return torch.cat([batch["mask_ir"], batch["mask_vis"]], dim=1) if self.hparams.use_masks else None

    # --- losses --------------------------------------------------------------------------------------
    def fusion_losses(self, f2: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Mask-guided intensity + gradient losses on Y of (F2 + 1)/2 (unweighted without masks)."""
        cfg = self.hparams.loss
        y_f = rgb_to_y((f2 + 1) / 2)
        use_masks = self.hparams.use_masks
        return fusion_loss(y_f, batch["ir"], rgb_to_y(batch["vis"]), w_int=cfg["w_int"], w_grad=cfg["w_grad"],
                           mask_ir=batch["mask_ir"] if use_masks else None,
                           mask_vis=batch["mask_vis"] if use_masks else None,
                           mask_weight=cfg["mask_weight"] if use_masks else 0.0)

    def compute_losses(self, batch: dict[str, Any], timesteps: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The current phase's losses; ``timesteps``/``noise`` fix the randomness (tests, validation)."""
        self._check_batch(batch)
        phase = self.hparams.phase
        x0 = 2 * self.stage1_image(batch) - 1
        cond = self._cond(batch)
        losses: dict[str, torch.Tensor] = {}
        total = x0.new_zeros(())
        if phase in ("a", "joint"):
            losses.update(self.refiner.epsilon_loss(x0, cond, timesteps, noise))
            total = total + self.hparams.loss["w_eps"] * losses["loss_eps"]
        if phase in ("b", "joint", "direct"):
            if self.hparams.diffusion and noise is None:
                noise = torch.randn_like(x0)
            f2 = self.refiner.decode(x0, cond, noise, unet_grad=phase != "b")
            fusion = self.fusion_losses(f2, batch)
            losses.update(loss_fusion=fusion["loss"], loss_int=fusion["loss_int"],
                          loss_grad=fusion["loss_grad"])
            total = total + fusion["loss"]
        losses["loss"] = total
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        self.log_losses("train", losses, batch_size=batch["ir"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Noise and t seeded by pair name: validation curves compare like with like across epochs.
        names, (_, _, h, w) = batch["name"], batch["vis"].shape
        noise = per_image_noise(names, (3, h, w), "val", self.device, batch["vis"].dtype)
        num_train = self.refiner.num_train_timesteps
        timesteps = torch.tensor([image_seed(n, "val-t") % num_train for n in names], device=self.device)
        losses = self.compute_losses(batch, timesteps, noise)
        self.log_losses("val", losses, batch_size=batch["ir"].shape[0])

    # --- inference -----------------------------------------------------------------------------------
    def fuse(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._check_batch(batch)
        f1 = self.stage1_image(batch)
        f2 = self.refiner.infer(2 * f1 - 1, self._cond(batch), batch["name"], **self.hparams.inference)
        final = recombine(rgb_to_y((f2 + 1) / 2), batch["vis"])
        return {"stage1": f1, "final": final}


def _check_options(phase: str, diffusion: bool, inference: dict[str, Any]) -> None:
    if phase not in PHASES:
        raise ValueError(f"model.stage2.phase={phase!r}: use one of {list(PHASES)}")
    if diffusion == (phase == "direct"):
        raise ValueError(f"model.stage2.phase={phase!r} with diffusion={diffusion}: phase 'direct' is the "
                         "no-diffusion ablation (diffusion=false, stage2_phases=[direct]); phases a, b and "
                         "joint need diffusion=true.")
    if inference["mode"] not in INFERENCE_MODES:
        raise ValueError(f"model.stage2.inference.mode={inference['mode']!r}: "
                         f"use one of {list(INFERENCE_MODES)}")
    if inference["mode"] == "refine" and not diffusion:
        raise ValueError("model.stage2.inference.mode=refine needs diffusion=true (no noise model to sample)")


def load_stage1(path: str) -> Stage1FusionModule:
    """The Stage-I module of a checkpoint, with errors that say what is wrong with the file."""
    checkpoint = read_checkpoint(path)  # missing / unreadable file: CheckpointError naming it
    expected = _class_path(Stage1FusionModule)
    writer = checkpoint.get(CLASS_KEY) or "an unknown module"
    if writer != expected:
        raise CheckpointError(f"stage1_ckpt {path} was written by {writer}, not by Stage I ({expected}). "
                              "Pass the stage1/last.ckpt of a run.")
    try:
        return Stage1FusionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"stage1_ckpt {path} does not match the current Stage-I code/config "
                              f"({err}). Retrain stage1 with this version, or check out the code that "
                              "wrote it.") from err
