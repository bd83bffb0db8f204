"""Say what a stage is about to cost: its step count at once, then a time estimate from a few timed steps.

A paper-sized run (20k Stage-I steps, 200k ε-steps of a 62 M-parameter UNet at batch 24 × 160²) started on
a machine without a GPU would otherwise sit silently for weeks. :class:`TimeEstimate` logs at the start of
every fit what is about to run, times ``measure_steps`` steps after one warm-up step, and logs the estimate
with the ``steps.*`` counts of this and the later stages. On a CPU, when the estimate exceeds
``warn_after_s``, it warns and names the preset that gives a quick run instead (``preset=cpu``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from sgdfuse.orchestration.run_folders import training_stages  # noqa: F401 - one definition, re-exported

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class TimeEstimate(Callback):
    """See the module docstring.

    Args:
        measure_steps: steps timed after the warm-up step.
        warn_after_s: on a CPU, an estimate above this (seconds) is a warning naming ``quick_run``.
        quick_run: the override that gives a quick run on a CPU.
        steps, stages, stage2_phases: the run's ``steps``, ``stages`` and ``stage2_phases`` (interpolated
            in configs/callbacks/default.yaml), to list the later stages' step counts.
    """

    def __init__(self, measure_steps: int = 2, warn_after_s: float = 1800.0, quick_run: str = "preset=cpu",
                 steps: Mapping[str, int] | None = None, stages: Sequence[str] = (),
                 stage2_phases: Sequence[str] = ()) -> None:
        if measure_steps < 1:
            raise ValueError(f"callbacks.time_estimate.measure_steps must be >= 1, got {measure_steps}")
        self.measure_steps = int(measure_steps)
        self.warn_after_s = float(warn_after_s)
        self.quick_run = quick_run
        self.steps = dict(steps or {})
        self.order = training_stages(stages, stage2_phases)
        self.estimate_s: float | None = None
        self._first_step = 0
        self._timer: float | None = None

    @staticmethod
    def _stage(trainer: L.Trainer) -> str:
        return Path(trainer.default_root_dir).name  # the pipeline trains each stage in <run_dir>/<stage>/

    @staticmethod
    def _device(trainer: L.Trainer) -> str:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            return f"{trainer.num_devices} × {torch.cuda.get_device_name(device)}"
        threads = torch.get_num_threads()
        return f"{device.type} ({trainer.num_devices} process(es), {threads} torch thread(s) each)"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step, self._timer, self.estimate_s = trainer.global_step, None, None
        self._announce(trainer)

    @rank_zero_only
    def _announce(self, trainer: L.Trainer) -> None:
        dm = trainer.datamodule
        batch = f", batch {dm.batch_size} of {dm.crop_size}² crops" if hasattr(dm, "crop_size") else ""
        left = max(trainer.max_steps - trainer.global_step, 0)
        log.info("%s: %d of %d steps to go on %s%s, precision %s; timing %d step(s) after a warm-up step "
                 "for an estimate", self._stage(trainer), left, trainer.max_steps, self._device(trainer),
                 batch, trainer.precision, self.measure_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.estimate_s is not None:
            return
        done = trainer.global_step - self._first_step
        if done == 1:
            self._timer = time.perf_counter()
        elif done == 1 + self.measure_steps and self._timer is not None:
            per_step = (time.perf_counter() - self._timer) / self.measure_steps
            self.estimate_s = per_step * max(trainer.max_steps - self._first_step, 0)
            self._report(trainer, per_step)

    @rank_zero_only
    def _report(self, trainer: L.Trainer, per_step: float) -> None:
        stage = self._stage(trainer)
        later = self.order[self.order.index(stage) + 1:] if stage in self.order else []
        later_text = ", ".join(f"steps.{s}={self.steps[s]}" for s in later if s in self.steps)
        left = max(trainer.max_steps - self._first_step, 0)
        message = (f"{stage}: {format_duration(per_step)} per step (mean of {self.measure_steps}) -> about "
                   f"{format_duration(self.estimate_s)} for its {left} steps to go "
                   f"(steps.{stage}={trainer.max_steps})")
        if later_text:
            message += f"; then {later_text} (timed when they start)"
        on_cpu = trainer.strategy.root_device.type == "cpu"
        if on_cpu and self.estimate_s > self.warn_after_s:
            log.warning("%s. No GPU in use: for a quick run on this CPU use `%s` (small model, few steps); "
                        "the paper-sized settings are meant for trainer=gpu|ddp.", message, self.quick_run)
        else:
            log.info("%s.", message)
