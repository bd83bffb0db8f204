"""A Stage-II head that starts from Stage I: F2 = F1 + a bounded correction (our addition to SGDFuse).

The published head (HFAH, section 3) emits the final image from the UNet's decoder features, so at the
start of phase b the output is unrelated to F1 and a short training budget leaves it worse than Stage I.
This wrapper turns any head into a residual one: the inner head's last convolution is zero-initialised,
so at step 0 the correction is exactly 0 and F2 equals F1; training moves away from F1 only where the
mask-guided losses pay. The correction is ``max_correction · inner(...)`` with the inner head's Tanh, i.e.
bounded to ``±max_correction`` in the [-1, 1] image range (ControlNet uses zero convolutions the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn


class ResidualHead(nn.Module):
    """``clamp(base + max_correction · inner(features, size), -1, 1)`` with ``inner``'s last conv zeroed.

    Args:
        in_channels: channels of each feature level, highest resolution first (supplied by Stage II).
        inner: class path of the head that computes the correction (``HFAH``, ``ConvHead`` or any head with
            their call signature ending in a bounded activation such as Tanh).
        max_correction: bound of the correction in the [-1, 1] image range (0.25 = a quarter of it).
        **inner_kwargs: the inner head's own arguments (widths, attention ratio, ...).
    """

    #: The refiner passes F1 (``base``, B×3×H×W in [-1, 1]) to heads that declare this.
    needs_base = True
    #: For the config checker: ``**inner_kwargs`` are the arguments of the class named by ``inner``.
    KWARGS_FORWARDED_TO = "inner"

    def __init__(self, in_channels: Sequence[int], inner: str, max_correction: float = 0.25,
                 **inner_kwargs: Any) -> None:
        super().__init__()
        if not 0.0 < float(max_correction) <= 2.0:
            raise ValueError(f"ResidualHead: max_correction must be in (0, 2], got {max_correction}")
        self.inner = get_class(inner)(in_channels, **inner_kwargs)
        self.max_correction = float(max_correction)
        last = [m for m in self.inner.modules() if isinstance(m, nn.Conv2d)]
        if not last:
            raise ValueError(f"ResidualHead: {inner} has no Conv2d to zero-initialise")
        nn.init.zeros_(last[-1].weight)
        if last[-1].bias is not None:
            nn.init.zeros_(last[-1].bias)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int] | None,
                base: torch.Tensor) -> torch.Tensor:
        """``base``: F1 in [-1, 1], B×3×H×W at the output size (the refiner crops the padding first)."""
        h, w = base.shape[-2:]
        correction = self.inner(features, size=size)[..., :h, :w]
        return (base + self.max_correction * correction).clamp(-1.0, 1.0)
