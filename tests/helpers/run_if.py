"""``@RunIf(...)``: skip a test, saying why, unless the machine has what it needs (after
lightning-hydra-template's ``tests/helpers/run_if.py``)."""

from __future__ import annotations

import pytest
import torch


def RunIf(min_gpus: int = 0, bf16: bool = False, min_gpu_memory_gb: float = 0.0,  # noqa: N802 (a decorator)
          **kwargs) -> pytest.MarkDecorator:
    """A ``skipif`` mark for: at least ``min_gpus`` CUDA devices, bf16 support on device 0, and at least
    ``min_gpu_memory_gb`` GiB on device 0. Extra keyword arguments go to ``pytest.mark.skipif``."""
    conditions, reasons = [], []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if min_gpus:
        conditions.append(gpus < min_gpus)
        reasons.append(f"needs {min_gpus} CUDA GPU(s), found {gpus}")
    if bf16:
        conditions.append(gpus == 0 or not torch.cuda.is_bf16_supported(including_emulation=False))
        reasons.append("needs a GPU with native bf16 (compute capability >= 8.0)")
    if min_gpu_memory_gb:
        total = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpus else 0.0
        conditions.append(total < min_gpu_memory_gb)
        reasons.append(f"needs {min_gpu_memory_gb:g} GiB of GPU memory, found {total:.0f}")
    failing = [reason for condition, reason in zip(conditions, reasons, strict=True) if condition]
    return pytest.mark.skipif(bool(failing), reason="; ".join(failing) or "requirements met", **kwargs)
