"""8-bit grey conversion used by every fusion metric (docs/metrics.md, Grey conversion).

Published tables score images read back from 8-bit files and converted with OpenCV's float32
``COLOR_BGR2GRAY`` followed by ``np.round``. Scoring tensors the same way makes the training loop's test step,
``evaluate.py`` and a paper's evaluator agree on the same pixels.
"""

from __future__ import annotations

import torch

# OpenCV's float32 BGR2GRAY coefficients, as float32 constants.
_CR, _CG, _CB = (torch.tensor(c, dtype=torch.float32).item() for c in (0.299, 0.587, 0.114))


def luma8(rgb255: torch.Tensor) -> torch.Tensor:
    """B×3×H×W integer-valued RGB in 0..255 -> B×H×W float32 integer-valued luma.

    The evaluation order is OpenCV's SIMD path, ``fma(R, cr, fma(B, cb, G*cg))`` in float32: it reproduces
    ``cv2.cvtColor(float32, COLOR_BGR2GRAY)`` bit for bit on all 2^24 RGB triples, so the rounding to even
    below lands on the same integer as the reference loader even where the luma is within float32 noise
    of x.5. Each fma is a float64 multiply-add (which holds the 8-bit × float32 product and the sum exactly)
    rounded once to float32; in place, to keep the passes over the image few.
    """
    r, g, b = rgb255.float().unbind(1)  # views of the caller's tensor when it is float32: never in place
    y = b.double().mul_(_CB).add_(g * _CG).float()
    y = r.double().mul_(_CR).add_(y).float()
    return y.round_()  # round half to even, as np.round


def quantize8(image01: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> integer-valued float32 in 0..255, as an 8-bit PNG writer stores it."""
    return image01.float().clamp(0.0, 1.0).mul_(255.0).round_()


def to_grey8(images: torch.Tensor) -> torch.Tensor:
    """B×C×H×W images (C = 1 or 3) -> B×H×W float64 grey levels 0..255 as the reference evaluator reads them.

    ``uint8`` input is taken as stored 8-bit values; floating-point input must be in [0, 1] and is first
    quantised per channel like a PNG writer (``round(x*255)``, clamped). Three channels are RGB.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"to_grey8 expects B×C×H×W with C in (1, 3), got shape {tuple(images.shape)}")
    values = images.float() if images.dtype == torch.uint8 else quantize8(images)
    grey = values[:, 0] if values.shape[1] == 1 else luma8(values)
    return grey.double()
