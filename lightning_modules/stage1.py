"""Stage I: structural fusion of IR and VIS (SGDFuse stage I, with DSIFuse's CFC as an option)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_modules.base import FusionModule
from sgdfuse.color import recombine, rgb_to_y
from sgdfuse.losses import fusion_loss
from sgdfuse.models.stage1 import FusionNet


class Stage1FusionModule(FusionModule):
    """Trains :class:`FusionNet` with the intensity + Sobel-gradient loss on luminance.

    Args:
        net: keyword arguments of :class:`FusionNet` (channels, num_stages, use_cfc, ...).
        loss: keyword arguments of :func:`sgdfuse.losses.fusion_loss` (``w_int``, ``w_grad``, ``w_ssim``,
            ``gradient_target``).
        optimizer: a ``_target_`` dict instantiated with ``params=``.
        scheduler: optional ``_target_`` dict instantiated with ``optimizer=`` (plus ``interval``).
    """

    #: Dict parameters holding another constructor's keyword arguments (their types: config_schema).
    KWARGS_OF: ClassVar[dict[str, Any]] = {"net": FusionNet, "loss": fusion_loss}

    def __init__(self, net: dict[str, Any] | None = None, loss: dict[str, Any] | None = None,
                 optimizer: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({
            "net": dict(net or {}),
            "loss": dict(loss or {}),  # defaults: fusion_loss's signature (and the YAML)
            "optimizer": dict(optimizer or {"_target_": "torch.optim.Adam"}),
            "scheduler": dict(scheduler) if scheduler else None,
        })
        self.net = FusionNet(**self.hparams.net)

    def fuse_y(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """Fused luminance Y_f, B×1×H×W in [0, 1]."""
        return self.net(ir, vis)

    def fuse(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        rgb = recombine(self.fuse_y(batch["ir"], batch["vis"]), batch["vis"])
        return {"final": rgb}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        y_f = self.fuse_y(batch["ir"], batch["vis"])
        return fusion_loss(y_f, batch["ir"], rgb_to_y(batch["vis"]), **self.hparams.loss)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        self.log_losses("train", losses, batch_size=batch["ir"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log_losses("val", self.compute_losses(batch), batch_size=batch["ir"].shape[0])
