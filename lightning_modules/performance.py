"""Speed settings that do not change what is computed: memory format, compilation, cuDNN autotuning.

:class:`PerformanceTuning` is a Lightning callback (``configs/callbacks/performance.yaml``) that acts in
``setup``, before the strategy moves the module to its device, on the module's own submodules, so neither
the modules nor their checkpoints know about it:

- ``channels_last``: 4-D parameters in NHWC, so convolutions run channels-last (cuDNN's tensor-core kernels
  and oneDNN want it; Stage I computes channels-last internally anyway, see sgdfuse/models/stage1/layout.py).
- ``compile``: ``nn.Module.compile`` (in place: parameter names and checkpoints unchanged) of the listed
  submodules, during fit only (test images differ in size, each size would recompile). ``True`` compiles
  :data:`DEFAULT_COMPILE`: Stage I's network and Stage II's UNet.
- ``cudnn_benchmark``: cuDNN autotuning while fitting, where batch shapes are fixed (random crops); restored
  afterwards, since test images of varying size would re-tune for every new shape.
- ``float32_matmul_precision``: ``torch.set_float32_matmul_precision`` on CUDA (``"high"`` = TF32 on
  Ampere+ for what runs in fp32).

On a GPU older than Ampere bf16 autocast is emulated (slow): a warning names ``trainer.precision=16-mixed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

log = logging.getLogger(__name__)

#: Submodules compiled with ``compile: true`` (those present): Stage I's FusionNet (``net`` in Stage I,
#: frozen ``stage1`` in Stage II) and Stage II's UNet.
DEFAULT_COMPILE = ("net", "stage1", "refiner.denoiser")


def submodule(root: nn.Module, path: str) -> nn.Module | None:
    """``root.a.b`` for ``path = "a.b"``; None where an attribute is missing or None."""
    module: Any = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    if not isinstance(module, nn.Module):
        raise TypeError(f"callbacks.performance.compile: {path!r} is a {type(module).__name__}, not a module")
    return module


class PerformanceTuning(Callback):
    """See the module docstring.

    Args:
        channels_last: convert the module's 4-D parameters to channels-last.
        compile: submodule paths to compile during fit (``True`` = :data:`DEFAULT_COMPILE`, ``False``/empty:
            none); a path the module lacks is skipped, so one list serves Stage I and Stage II.
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
        cudnn_benchmark: cuDNN autotuning during fit (CUDA only).
        float32_matmul_precision: ``"highest"`` | ``"high"`` | ``"medium"`` (CUDA only), or None to leave it.
    """

    def __init__(self, channels_last: bool = True, compile: Sequence[str] | bool = False,
                 compile_kwargs: dict[str, Any] | None = None, cudnn_benchmark: bool = True,
                 float32_matmul_precision: str | None = None) -> None:
        self.channels_last = bool(channels_last)
        if compile is True:
            self.compile: tuple[str, ...] = DEFAULT_COMPILE
        elif not compile:
            self.compile = ()
        elif isinstance(compile, str):
            self.compile = (compile,)
        else:
            self.compile = tuple(compile)
        self.compile_kwargs = dict(compile_kwargs or {})
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self.float32_matmul_precision = float32_matmul_precision
        self.compiled: list[str] = []
        self._cudnn_before: bool | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        on_cuda = trainer.strategy.root_device.type == "cuda"
        if self.float32_matmul_precision and on_cuda:  # on a CPU it could change fp32 matmul numerics
            torch.set_float32_matmul_precision(self.float32_matmul_precision)
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if stage == "fit":
            self.compiled = []
            for path in self.compile:
                module = submodule(pl_module, path)
                if module is not None:
                    module.compile(**self.compile_kwargs)
                    self.compiled.append(path)
            if self.cudnn_benchmark and on_cuda:
                self._cudnn_before = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = True
        if on_cuda and "bf16" in str(trainer.precision) and torch.cuda.get_device_capability()[0] < 8:
            log.warning("trainer.precision=%s on %s (compute capability < 8.0): bf16 is emulated there; "
                        "use trainer.precision=16-mixed", trainer.precision, torch.cuda.get_device_name())
        log.info("performance (%s): channels_last=%s, compiled=%s, cudnn.benchmark=%s, precision=%s",
                 stage, self.channels_last, self.compiled or "none", torch.backends.cudnn.benchmark,
                 trainer.precision)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._cudnn_before is not None:
            torch.backends.cudnn.benchmark = self._cudnn_before
            self._cudnn_before = None
