"""Fusion metrics matching published evaluators (docs/metrics.md): EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM,
MSE, CC, PSNR by default; MS_SSIM, Nabf and FMI (FMI_pixel, FMI_edge, FMI_dct, FMI_wavelet) on request. See
:class:`FusionMetrics`."""

from sgdfuse.metrics.collection import (
    DEFAULT_METRICS,
    METRIC_FUNCTIONS,
    OPTIONAL_METRICS,
    FusionMetrics,
    as_image_batch,
    score_pair,
)
from sgdfuse.metrics.grey import to_grey8

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_FUNCTIONS",
    "OPTIONAL_METRICS",
    "FusionMetrics",
    "as_image_batch",
    "score_pair",
    "to_grey8",
]
