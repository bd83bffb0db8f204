"""Behaviour shared by every fusion stage: optimisers from config, the test loop, checkpoint identity.

Hyperparameters are plain Python containers (never ``DictConfig`` or ``functools.partial``) so that
checkpoints load under torch's default ``weights_only=True``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

#: Key under which a checkpoint records the class that wrote it (read by ``load_fusion_model``).
CLASS_KEY = "sgdfuse_class"


class FusionModule(L.LightningModule):
    """Base class of the Stage-I and Stage-II modules.

    Subclasses implement :meth:`fuse` (the inference path used by test and evaluate) and
    :meth:`trainable_parameters` (what the optimiser sees), plus ``training_step``/``validation_step``.
    ``test_step`` returns the named outputs; the pipeline's ``TestResults`` callback scores and writes them.
    """

    @abstractmethod
    def fuse(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named outputs, RGB B×3×H×W in [0, 1] at the input's full size: always ``final``; two-stage
        models add ``stage1`` (their Stage-I image), which test and evaluate score and write beside it."""

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer, params=list(self.trainable_parameters()))
        scheduler_cfg = self.hparams.get("scheduler")
        if not scheduler_cfg:
            return {"optimizer": optimizer}
        scheduler_cfg = dict(scheduler_cfg)
        interval = scheduler_cfg.pop("interval", "step")
        if "num_training_steps" in scheduler_cfg and scheduler_cfg["num_training_steps"] is None:
            # one scheduler config serves every stage/phase: the length is this stage's max_steps
            scheduler_cfg["num_training_steps"] = int(self.trainer.max_steps)
        scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def log_losses(self, prefix: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = prefix == "train"
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, on_step=on_step, on_epoch=not on_step,
                     prog_bar=name == "loss", batch_size=batch_size, sync_dist=not on_step)

    # --- test loop: the named outputs; the TestResults callback scores and writes them -------------
    def test_step(self, batch: dict[str, Any], batch_idx: int,
                  dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self.fuse(batch)  # SetResults scores and writes them (clamped to [0, 1] there)

    # --- checkpoint identity ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
