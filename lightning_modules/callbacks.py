"""Lightning callbacks: image panels and mask statistics for whichever logger is configured, exact RNG
resume, and the divergence guard."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_modules import nonfinite_tensors
from sgdfuse.data.io import write_png_atomic
from sgdfuse.visualize import panel_rows

PANEL_CAPTION = "IR | VIS | mask IR | mask VIS | Stage I | final"


class FusionImageLogger(L.Callback):
    """Every ``every_n_steps`` training steps: a panel IR | VIS | masks | Stage I | final of the batch,
    and the mask coverage of every batch (fraction of pixels inside the IR / VIS masks).

    Panels go to W&B (``log_image``) or TensorBoard (``add_image``); with other loggers they are written as
    PNGs under ``<trainer.default_root_dir>/samples/``.
    """

    def __init__(self, every_n_steps: int = 500, max_images: int = 4) -> None:
        self.every_n_steps = every_n_steps
        self.max_images = max_images

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        pl_module.log_dict({"data/mask_ir_coverage": batch["mask_ir"].mean(),
                            "data/mask_vis_coverage": batch["mask_vis"].mean()},
                           on_step=True, on_epoch=False, batch_size=batch["ir"].shape[0])
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            self._log_panel(trainer, pl_module, batch, step)

    @rank_zero_only
    def _log_panel(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any],
                   step: int) -> None:
        n = min(self.max_images, batch["ir"].shape[0])
        small = {k: v[:n] if isinstance(v, torch.Tensor | list) else v for k, v in batch.items()}
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            out = pl_module.fuse(small)
        pl_module.train(was_training)
        rows = panel_rows(small, out)  # one H×(6W)×3 array per image
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples/panel", images=list(rows), step=step,
                                 caption=[f"{name}: {PANEL_CAPTION}" for name in small["name"]])
                logged = True
            elif isinstance(logger, TensorBoardLogger):
                for i, row in enumerate(rows):
                    logger.experiment.add_image(f"samples/panel_{i}", row, step, dataformats="HWC")
                logged = True
        if not logged:
            out_dir = Path(trainer.default_root_dir) / "samples"
            for name, row in zip(small["name"], rows, strict=True):
                write_png_atomic(out_dir / f"step{step:07d}_{Path(name).stem}.png", row)


class RNGStateCheckpoint(L.Callback):
    """Saves the Python, NumPy and torch (CPU + CUDA) RNG states in every checkpoint and restores them on
    resume, so that a resumed run draws the same noise, timesteps and dropout as an uninterrupted one.

    The states are applied at the first training batch after the restore, not when the checkpoint is read:
    in between, Lightning builds a fresh loader iterator (which draws a base seed from the global RNG) that
    the uninterrupted run built at its epoch start instead. Stored as plain ints and tensors: checkpoints
    stay loadable with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            _set_rng_states(self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state


def _set_rng_states(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TestResults(L.Callback):
    """Writes and logs the test stage's results through :mod:`sgdfuse.orchestration.results`, the same
    path ``evaluate.py`` uses: one :class:`SetResults` per test set (Lightning's ``dataloader_idx``).

    Args:
        output_dir: ``<run_dir>/test``.
        set_names: the test sets in the order of the DataModule's test loaders.
        metrics / convention: the metric set and convention (see :class:`FusionMetrics`).
        show_masks: mask columns in the grids.
    """

    def __init__(self, output_dir: str | Path, set_names: list[str], metrics: list[str] | None = None,
                 convention: str = "cddfuse", show_masks: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.set_names = list(set_names)
        self.metrics, self.convention, self.show_masks = metrics, convention, show_masks
        self.results: dict[str, dict[str, Any]] = {}

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from sgdfuse.orchestration.results import SetResults

        # Every rank writes its own images (shared file system); summaries are written by rank 0 only.
        self.sets = {name: SetResults(self.output_dir / name, name, self.metrics, self.convention,
                                      show_masks=self.show_masks) for name in self.set_names}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.sets[self.set_names[dataloader_idx]].add(batch, outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from sgdfuse.orchestration.results import flat_metrics, write_summary

        write = trainer.is_global_zero
        self.results = {name: s.finish(write=write) for name, s in self.sets.items() if s.scorers}
        if write:
            names = next(iter(self.sets.values())).metric_names
            write_summary(self.output_dir, self.results, self.convention, names)
            for logger in trainer.loggers:
                logger.log_metrics(flat_metrics(self.results))
class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights; the message names the step and the last
    finite checkpoint."""


class DivergenceGuard(L.Callback):
    """Stops a stage at the first non-finite training loss, and never lets a checkpoint of non-finite
    weights be written.

    The loss is checked before its backward pass (so the weights of the previous step are never updated
    with NaN gradients); under DDP one rank's NaN stops every rank at the same step. The weights are
    checked whenever a checkpoint is assembled (``on_save_checkpoint``): a non-finite one raises before
    the file is written, so ``ModelCheckpoint``'s rotation only ever deletes older *finite* checkpoints
    in favour of newer finite ones, and ``last.ckpt`` stays the last finite state. Either way the stage
    ends with :class:`DivergenceError`: the pipeline writes no ``DONE`` and a rerun resumes from the last
    finite checkpoint.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())  # one device sync per step
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            value = loss.detach().float().cpu().tolist() if bad else "finite here, not on another rank"
            raise DivergenceError(f"non-finite training loss ({value}) at global step {trainer.global_step}: "
                                  f"training stopped before this update. {_last_finite(trainer)}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            names = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
            raise DivergenceError(f"non-finite weights at global step {trainer.global_step} ({names}): "
                                  f"refusing to write a checkpoint of them. {_last_finite(trainer)}")


def _last_finite(trainer: L.Trainer) -> str:
    """The newest checkpoint this stage wrote or resumed from (every one of them passed the guard)."""
    paths = [trainer.ckpt_path] if trainer.ckpt_path else []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths += [callback.last_model_path, *callback.best_k_models]
    existing = [p for p in paths if p and os.path.isfile(p)]
    if not existing:
        return "No checkpoint was written before: a rerun starts the stage from its first step."
    return f"Last finite checkpoint: {max(existing, key=os.path.getmtime)}."
