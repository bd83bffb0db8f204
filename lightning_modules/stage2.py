"""Stage II: mask-conditioned diffusion refiner on top of the frozen Stage I (docs/design.md, Stage II).

One parameter set for all phases; the phase table (:data:`sgdfuse.models.stage2.phases.PHASES`) decides
what trains and which losses apply: ``a`` ε-MSE on the UNet; ``b`` the head on the frozen UNet's decoder
features with the mask-guided losses; ``joint`` both; ``direct`` no diffusion (the "w/o diffusion"
ablation: UNet + head as a direct refiner at t = 0).

Colour (docs/design.md, Colour): F1 = Stage-I luminance with the VIS chroma, RGB in [0, 1], mapped by
2x − 1 for the diffusion; losses and the final image use the final luminance (:meth:`final_y`)
recombined with the VIS chroma.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, TypedDict

import torch
from diffusers import DDPMScheduler
from hydra.utils import instantiate
from torch import nn

from lightning_modules import CheckpointError, read_checkpoint
from lightning_modules.base import CLASS_KEY, FusionModule
from lightning_modules.stage1 import Stage1FusionModule
from sgdfuse.color import recombine, rgb_to_y
from sgdfuse.losses import GradientTarget, IntensityTarget, check_intensity_target, fusion_loss
from sgdfuse.models.stage1 import FusionNet
from sgdfuse.models.stage2 import Denoiser, DiffusionRefiner, get_phase, per_image_noise
from sgdfuse.models.stage2.refiner import INFERENCE_MODES, image_seed

#: The ``model.stage2.loss`` keys passed to :func:`fusion_loss` as they are (its signature, less the images,
#: masks and ``mask_weight``, which Stage II supplies; ``w_eps`` is the phase's own).
_FUSION_LOSS_OPTIONS = frozenset(inspect.signature(fusion_loss).parameters) - {
    "y_f", "ir", "y_vis", "mask_ir", "mask_vis", "mask_weight"}


class Stage2Loss(TypedDict, total=False):
    """``model.stage2.loss`` (types for the config check; defaults in configs/model/stage2/default.yaml)."""

    w_int: float
    w_grad: float
    w_ssim: float
    mask_weight: float
    w_eps: float
    intensity_target: IntensityTarget
    gradient_target: GradientTarget


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Stage2DiffusionModule(FusionModule):
    """Frozen Stage I + :class:`DiffusionRefiner`, trained phase by phase.

    Components are injected as ``_target_`` configs (kept as plain dicts in the hyperparameters so that a
    checkpoint rebuilds the same model); their defaults are their constructors' (and the YAML's).

    Args:
        head: the fusion head, a ``_target_`` config called with ``in_channels`` (the feature channels of
            every decoder level, supplied here): ``HFAH``, ``ConvHead`` (w/o HFAH), ``ResidualHead``, ...
        masks: condition the UNet on (mask_ir, mask_vis) and weight the losses by them. Set by the
            pipeline from the mask source (``masks=none`` gives False: a 3-channel UNet, unweighted losses).
        phase: a key of :data:`~sgdfuse.models.stage2.phases.PHASES` (what trains, which losses apply).
        stage1_ckpt: Stage-I ``last.ckpt``, the frozen first stage (the pipeline passes this run's, unless
            the config names another run's).
        first_stage: instead of a Stage-I checkpoint, a ``_target_`` config of a module mapping
            (IR B×1×H×W, VIS B×3×H×W) to Y B×1×H×W, e.g. ``MeanFusion`` for the single-stage ablation.
        unet: keyword arguments of :class:`Denoiser` (widths, layers, dropout, ...).
        noise_scheduler: keyword arguments of ``diffusers.DDPMScheduler``.
        feature_timesteps: timesteps whose decoder features feed the head.
        inference: ``mode`` (features | refine), ``t0`` and ``n_steps`` of ``refine``.
        loss: ``w_int``, ``w_grad``, ``w_ssim``, ``mask_weight``, ``intensity_target``, ``gradient_target`` of
            :func:`fusion_loss` (:class:`Stage2Loss`); ``w_eps`` (ε-MSE weight when a phase has both
            losses).
        optimizer / scheduler: ``_target_`` dicts (see :class:`FusionModule`).
        stage1_net: Stage I's ``FusionNet`` arguments. Filled in from ``stage1_ckpt`` and saved in the
            hyperparameters, so that a Stage-II checkpoint rebuilds without the Stage-I file.
    """

    #: Dict parameters holding another callable's keyword arguments (their types: config_schema).
    KWARGS_OF: ClassVar[dict[str, Any]] = {"unet": Denoiser, "noise_scheduler": DDPMScheduler,
                                           "inference": DiffusionRefiner.infer}

    def __init__(
        self,
        head: dict[str, Any],
        masks: bool,
        phase: str = "a",
        stage1_ckpt: str | None = None,
        first_stage: dict[str, Any] | None = None,
        unet: dict[str, Any] | None = None,
        noise_scheduler: dict[str, Any] | None = None,
        feature_timesteps: list[int] | tuple[int, ...] = (5, 50, 100),
        inference: dict[str, Any] | None = None,
        loss: Stage2Loss | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        stage1_net: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.phase = get_phase(phase)
        inference = dict(inference or {})  # defaults: DiffusionRefiner.infer's signature
        _check_options(phase, self.phase.diffusion, inference, head, masks, dict(loss or {}))
        self.save_hyperparameters({
            "head": dict(head),
            "masks": masks,
            "phase": phase,
            "stage1_ckpt": stage1_ckpt,
            "first_stage": dict(first_stage) if first_stage else None,
            "unet": dict(unet or {}),
            "noise_scheduler": dict(noise_scheduler or {}),
            "feature_timesteps": [int(t) for t in feature_timesteps],
            "inference": inference,
            "loss": dict(loss or {}),
            "optimizer": dict(optimizer or {"_target_": "torch.optim.Adam"}),
            "scheduler": dict(scheduler) if scheduler else None,
            "stage1_net": dict(stage1_net) if stage1_net else None,
        })
        self.stage1 = self._build_stage1()
        self.refiner = self._build_refiner()
        self._set_trainable()
        self.train()  # applies the frozen parts' eval mode (see `train`)

    # --- construction --------------------------------------------------------------------------------
    def _build_stage1(self) -> nn.Module:
        hp = self.hparams
        if hp.first_stage is not None:
            net = instantiate(hp.first_stage)
        elif hp.stage1_net is not None:  # rebuilt from a Stage-II checkpoint: weights follow in its state
            net = FusionNet(**hp.stage1_net)
        elif hp.stage1_ckpt:
            stage1 = load_stage1(hp.stage1_ckpt)
            net, hp.stage1_net = stage1.net, dict(stage1.hparams.net)
        else:
            raise ValueError("model.stage2.stage1_ckpt is null: Stage II refines a trained Stage I. Run "
                             "stage1 first (stages: [stage1, stage2, ...]) or pass its last.ckpt; for the "
                             "single-stage ablation use +experiment=single_stage (model.stage2.first_stage).")
        net.requires_grad_(False)
        return net

    def _build_refiner(self) -> DiffusionRefiner:
        hp = self.hparams
        denoiser = Denoiser(cond_channels=2 if hp.masks else 0, **hp.unet)
        n_steps = DiffusionRefiner.num_feature_steps(hp.feature_timesteps, self.phase.diffusion)
        head = instantiate(hp.head, in_channels=[c * n_steps for c in denoiser.feature_channels])
        return DiffusionRefiner(denoiser, head, DDPMScheduler(**hp.noise_scheduler), hp.feature_timesteps,
                                diffusion=self.phase.diffusion)

    def _set_trainable(self) -> None:
        self.refiner.denoiser.requires_grad_(self.phase.train_unet)
        self.refiner.head.requires_grad_(self.phase.train_head)

    def train(self, mode: bool = True) -> Stage2DiffusionModule:
        """Frozen parts stay in eval mode whatever Lightning or the user switches: Stage I always, the
        UNet in phase b (its dropout would otherwise perturb the features the head learns from)."""
        super().train(mode)
        self.stage1.eval()
        if not self.phase.train_unet:
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
        if not self.hparams.masks:
            return
        for key in ("mask_ir", "mask_vis"):
            mask = batch.get(key)
            if mask is None or tuple(mask.shape) != (b, 1, h, w):
                got = "missing" if mask is None else f"shape {tuple(mask.shape)}"
                raise ValueError(f"Stage II with masks needs batch[{key!r}] of shape {(b, 1, h, w)} "
                                 f"(like batch['ir']), got {got}. Check the mask source "
                                 "(masks=sam|prior|labels), or train without masks (masks=none).")

    def stage1_y(self, batch: dict[str, Any]) -> torch.Tensor:
        """Y1: the first stage's luminance, B×1×H×W in [0, 1]."""
        with torch.no_grad():  # Stage I is frozen: no graph, no gradient can reach it
            return self.stage1(batch["ir"], batch["vis"])

    def stage1_image(self, batch: dict[str, Any]) -> torch.Tensor:
        """F1: RGB in [0, 1] (the first stage's luminance + VIS chroma)."""
        return recombine(self.stage1_y(batch), batch["vis"])

    def final_y(self, f2: torch.Tensor, x0: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        """Final luminance B×1×H×W from the head's F2 (x0 = 2·F1 − 1; Y is linear in RGB)."""
        if getattr(self.refiner.head, "needs_base", False):
            # Residual heads: Y1 plus the luminance of the correction, so that a zero correction gives F1
            # bit for bit (Y of the clamped F1 RGB may differ from Y1 where the chroma saturates).
            return (y1 + rgb_to_y((f2 - x0) / 2)).clamp(0.0, 1.0)
        return rgb_to_y((f2 + 1) / 2)

    def _cond(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return torch.cat([batch["mask_ir"], batch["mask_vis"]], dim=1) if self.hparams.masks else None

    # --- losses --------------------------------------------------------------------------------------
    def fusion_losses(self, y_f: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Mask-guided intensity + gradient (+ SSIM) losses on the final luminance (unweighted without
        masks)."""
        options = {k: v for k, v in self.hparams.loss.items() if k in _FUSION_LOSS_OPTIONS}
        if not self.hparams.masks:
            return fusion_loss(y_f, batch["ir"], rgb_to_y(batch["vis"]), **options)
        return fusion_loss(y_f, batch["ir"], rgb_to_y(batch["vis"]), **options, mask_ir=batch["mask_ir"],
                           mask_vis=batch["mask_vis"], mask_weight=self.hparams.loss.get("mask_weight", 1.0))

    def compute_losses(self, batch: dict[str, Any], timesteps: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The current phase's losses; ``timesteps``/``noise`` fix the randomness (tests, validation)."""
        self._check_batch(batch)
        y1 = self.stage1_y(batch)
        x0 = 2 * recombine(y1, batch["vis"]) - 1
        cond = self._cond(batch)
        losses: dict[str, torch.Tensor] = {}
        total = x0.new_zeros(())
        if self.phase.eps_loss:
            losses.update(self.refiner.epsilon_loss(x0, cond, timesteps, noise))
            total = total + self.hparams.loss.get("w_eps", 1.0) * losses["loss_eps"]
        if self.phase.fusion_loss:
            if self.phase.diffusion and noise is None:
                noise = torch.randn_like(x0)
            f2 = self.refiner.decode(x0, cond, noise, unet_grad=self.phase.train_unet)
            fusion = self.fusion_losses(self.final_y(f2, x0, y1), batch)
            losses.update({"loss_fusion" if k == "loss" else k: v for k, v in fusion.items()})
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
        y1 = self.stage1_y(batch)
        f1 = recombine(y1, batch["vis"])
        x0 = 2 * f1 - 1
        f2 = self.refiner.infer(x0, self._cond(batch), batch["name"], **self.hparams.inference)
        final = recombine(self.final_y(f2, x0, y1), batch["vis"])
        if self.hparams.first_stage is not None:  # single stage: F1 is a baseline, not a Stage-I image
            return {"final": final}
        return {"stage1": f1, "final": final}


def _check_options(phase: str, diffusion: bool, inference: dict[str, Any], head: Any, masks: Any,
                   loss: dict[str, Any]) -> None:
    if not isinstance(head, dict) or "_target_" not in head:
        raise ValueError(f"model.stage2.head must be a _target_ config of a fusion head "
                         f"(model/stage2/head=hfah|conv|residual_hfah|...), got {head!r}")
    if not isinstance(masks, bool):
        raise ValueError(f"Stage II `masks` must be true or false (the pipeline sets it from the mask "
                         f"source), got {masks!r}")
    mode = inference.get("mode", "features")
    if mode not in INFERENCE_MODES:
        raise ValueError(f"model.stage2.inference.mode={mode!r}: use one of {list(INFERENCE_MODES)}")
    if mode == "refine" and not diffusion:
        raise ValueError(f"model.stage2.inference.mode=refine needs a diffusion phase (phase {phase!r} has "
                         "no noise model to sample)")
    check_intensity_target(loss.get("intensity_target", "max"), has_ir_mask=masks)


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
