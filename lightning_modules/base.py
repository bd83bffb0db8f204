"""Behaviour shared by every fusion stage: optimisers from config, the test loop, checkpoint identity.

Hyperparameters are plain Python containers (never ``DictConfig`` or ``functools.partial``) so that
checkpoints load under torch's default ``weights_only=True``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

from sgdfuse.atomic import atomic_write_json
from sgdfuse.data.io import write_png_atomic

#: Key under which a checkpoint records the class that wrote it (read by ``load_fusion_model``).
CLASS_KEY = "sgdfuse_class"


class FusionModule(L.LightningModule):
    """Base class of the Stage-I and Stage-II modules.

    Subclasses implement :meth:`fuse` (the inference path used by test and evaluate) and
    :meth:`trainable_parameters` (what the optimiser sees), plus ``training_step``/``validation_step``.
    Test results (mean metrics, fused PNGs) go to ``test_output_dir`` when it is set.
    """

    #: Set by the pipeline before ``trainer.test``; None disables writing files.
    test_output_dir: str | None = None

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
        scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def log_losses(self, prefix: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = prefix == "train"
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, on_step=on_step, on_epoch=not on_step,
                     prog_bar=name == "loss", batch_size=batch_size, sync_dist=not on_step)

    # --- test loop: metrics on the final image, as published tables score it ------------------------
    def on_test_start(self) -> None:
        from sgdfuse.metrics import FusionMetrics  # imported here: metrics are only needed for testing

        self.test_metrics = FusionMetrics().to(self.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.fuse(batch)
        self.test_metrics.update(out["final"], batch["ir"], batch["vis"], names=batch["name"])
        if self.test_output_dir:
            for name, img in zip(batch["name"], out["final"], strict=True):  # names are file stems
                write_png_atomic(Path(self.test_output_dir) / "fused" / f"{name}.png",
                                 img.permute(1, 2, 0).float().cpu().numpy())

    def on_test_epoch_end(self) -> None:
        values = {k: float(v) for k, v in self.test_metrics.compute().items()}
        for name, value in values.items():
            self.log(f"test/{name}", value, sync_dist=False)  # already reduced across ranks
        if self.test_output_dir and self.trainer.is_global_zero:
            atomic_write_json(Path(self.test_output_dir) / "metrics.json", values)
        self.test_metrics.reset()

    # --- checkpoint identity ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
