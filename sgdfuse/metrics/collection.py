"""``FusionMetrics``: the standard fusion metrics as one ``torchmetrics.Metric`` (mean over images).

States are a per-metric sum and an image count, both reduced with ``sum`` across processes, so the mean
under DDP is exactly the mean over every image of every rank. Per-image values are also kept for the
per-image CSV (this process's images only: they are not synchronised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from sgdfuse.metrics import functional as MF
from sgdfuse.metrics.grey import to_grey8

_Fn = Callable[[Tensor, Tensor, Tensor, str], Tensor]

#: name -> fn(f, a, b, convention) on B×H×W grey levels, in the order tables print them.
METRIC_FUNCTIONS: dict[str, _Fn] = {
    "EN": lambda f, a, b, c: MF.entropy(f),
    "SD": lambda f, a, b, c: MF.standard_deviation(f),
    "SF": lambda f, a, b, c: MF.spatial_frequency(f),
    "AG": lambda f, a, b, c: MF.average_gradient(f, c),
    "MI": MF.mutual_information,
    "SCD": lambda f, a, b, c: MF.scd(f, a, b),
    "VIF": lambda f, a, b, c: MF.vif(f, a, b),
    "Qabf": lambda f, a, b, c: MF.qabf(f, a, b),
    "SSIM": MF.ssim,
    "MSE": MF.mean_squared_error,
    "CC": lambda f, a, b, c: MF.correlation_coefficient(f, a, b),
    "PSNR": MF.psnr,
    "MS_SSIM": MF.ms_ssim,
    "Nabf": lambda f, a, b, c: MF.nabf(f, a, b),
    # Toolbox-only metrics (the same under both conventions). "FMI" is the toolbox default feature (edge),
    # which the toolbox drivers print as "FMI_pixel"; our FMI_pixel is the raw-pixel feature ('none').
    "FMI": lambda f, a, b, c: MF.fmi(f, a, b, "edge"),
    "FMI_pixel": lambda f, a, b, c: MF.fmi(f, a, b, "none"),
    "FMI_edge": lambda f, a, b, c: MF.fmi(f, a, b, "edge"),
    "FMI_dct": lambda f, a, b, c: MF.fmi(f, a, b, "dct"),
    "FMI_wavelet": lambda f, a, b, c: MF.fmi(f, a, b, "wavelet"),
}
DEFAULT_METRICS: tuple[str, ...] = (
    "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "MSE", "CC", "PSNR",
)
OPTIONAL_METRICS: tuple[str, ...] = (
    "MS_SSIM", "Nabf", "FMI", "FMI_pixel", "FMI_edge", "FMI_dct", "FMI_wavelet",
)


def _resolve(metrics: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(metrics) if metrics is not None else DEFAULT_METRICS
    unknown = [m for m in names if m not in METRIC_FUNCTIONS]
    if unknown or not names:
        raise ValueError(f"unknown fusion metric(s) {unknown or names}; available: {list(METRIC_FUNCTIONS)}")
    return names


def _pair_names(names: Sequence[str] | None, batch: int) -> list[str]:
    if names is None:
        return [f"batch item {i}" for i in range(batch)]
    if len(names) != batch:
        raise ValueError(f"got {len(names)} pair names for a batch of {batch} images")
    return [str(n) for n in names]


def check_inputs(fused: Tensor, ir: Tensor, vis: Tensor, names: Sequence[str]) -> None:
    """Raise a ValueError naming the pair for a size mismatch or a NaN/inf pixel."""
    for label, t in (("fused", fused), ("IR", ir), ("VIS", vis)):
        if t.ndim != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"{label} images must be B×C×H×W with C = 1 or 3, got shape {tuple(t.shape)}")
    if not fused.shape[0] == ir.shape[0] == vis.shape[0]:
        raise ValueError(f"batch sizes differ: fused {fused.shape[0]}, IR {ir.shape[0]}, VIS {vis.shape[0]}")
    sizes = {label: tuple(t.shape[-2:]) for label, t in (("fused", fused), ("IR", ir), ("VIS", vis))}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"pair {', '.join(names)}: image sizes differ (H, W) {sizes}; the fused image must "
                         "have its sources' size (no cropping or resizing before scoring).")
    for label, t in (("fused", fused), ("IR", ir), ("VIS", vis)):
        # A NaN or inf pixel makes the image's sum NaN or inf, so a finite sum clears the whole batch at once;
        # only a non-finite one (or a sum too large for float32, which is harmless) searches pair by pair.
        if t.is_floating_point() and not torch.isfinite(t.sum(dtype=torch.float32)):
            bad = ~torch.isfinite(t).flatten(1).all(1)
            if bad.any():
                which = [names[i] for i in bad.nonzero().flatten().tolist()]
                raise ValueError(f"pair {', '.join(which)}: the {label} image contains NaN or inf; fix the "
                                 "model output or the input file before scoring.")


def score_grey(f: Tensor, a: Tensor, b: Tensor, metrics: Sequence[str] | None = None,
               convention: str = "cddfuse") -> Tensor:
    """B×H×W grey levels (0..255) -> B×M float64 values, M = len(metrics)."""
    MF._check_convention(convention)
    return torch.stack([METRIC_FUNCTIONS[m](f, a, b, convention).double() for m in _resolve(metrics)], dim=1)


def as_image_batch(image: np.ndarray | Tensor) -> Tensor:
    """One image (H×W, H×W×C numpy array or C×H×W / B×C×H×W tensor; uint8 0..255 or float 0..1, RGB) ->
    B×C×H×W tensor accepted by :class:`FusionMetrics` and :func:`score_pair`."""
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
        return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return image[None, None] if image.ndim == 2 else image[None] if image.ndim == 3 else image


def score_pair(fused: np.ndarray | Tensor, ir: np.ndarray | Tensor, vis: np.ndarray | Tensor,
               metrics: Sequence[str] | None = None, convention: str = "cddfuse",
               name: str = "pair") -> dict[str, float]:
    """Metrics of one pair (any of the image forms :func:`as_image_batch` takes) as floats."""
    f, a, b = (as_image_batch(x) for x in (fused, ir, vis))
    check_inputs(f, a, b, [name])
    try:
        values = score_grey(to_grey8(f), to_grey8(a), to_grey8(b), metrics, convention)[0]
    except ValueError as err:
        raise ValueError(f"pair {name}: {err}") from err
    return dict(zip(_resolve(metrics), values.tolist(), strict=True))


class FusionMetrics(Metric):
    """Fusion metrics (docs/metrics.md), each image scored as 8-bit grey, mean over images.

    Args:
        metrics: names to compute (default :data:`DEFAULT_METRICS`; optional: :data:`OPTIONAL_METRICS`).
        convention: ``"cddfuse"`` (MMIF-CDDFuse evaluator, default) or ``"matlab"`` (Linfeng-Tang toolbox:
            MI in bits, SSIM averaged with a Gaussian window, AG over (H-1)(W-1), MSE/PSNR on /255, MS_SSIM
            the toolbox's multi-scale MEF-SSIM).

    ``update(fused, ir, vis, names=None)`` takes B×C×H×W RGB or grey images, float in [0, 1] (quantised to
    8 bit as a PNG writer would) or uint8; ``compute()`` returns ``{name: mean}``; ``per_image()`` the rows.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self, metrics: Sequence[str] | None = None, convention: str = "cddfuse", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        MF._check_convention(convention)
        self.metric_names = _resolve(metrics)
        self.convention = convention
        self.add_state("totals", default=torch.zeros(len(self.metric_names), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self._records: list[tuple[str, list[float]]] = []

    def _score(self, fused: Tensor, ir: Tensor, vis: Tensor, names: Sequence[str] | None) -> Tensor:
        pair_names = _pair_names(names, fused.shape[0])
        check_inputs(fused, ir, vis, pair_names)
        f, a, b = to_grey8(fused), to_grey8(ir), to_grey8(vis)
        try:
            values = score_grey(f, a, b, self.metric_names, self.convention)
        except ValueError as err:  # e.g. an image too small for VIF / MS_SSIM: say which pair
            raise ValueError(f"pair {', '.join(pair_names)}: {err}") from err
        self._records.extend(zip(pair_names, values.cpu().tolist(), strict=True))
        return values

    def update(self, fused: Tensor, ir: Tensor, vis: Tensor, names: Sequence[str] | None = None) -> None:
        values = self._score(fused, ir, vis, names)
        self.totals += values.sum(0).to(self.totals)
        self.count += values.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if int(self.count) == 0:
            raise RuntimeError("FusionMetrics.compute() called before any update(): no image was scored")
        means = self.totals / self.count
        return {name: means[i] for i, name in enumerate(self.metric_names)}

    def forward(self, fused: Tensor, ir: Tensor, vis: Tensor, names: Sequence[str] | None = None) -> dict:
        """Accumulate the batch and return the batch's own means (no reset/restore round trip, which would
        drop the per-image records)."""
        self.update(fused, ir, vis, names)
        batch = self._records[-fused.shape[0]:]
        values = torch.tensor([v for _, v in batch], dtype=torch.float64).mean(0)
        return {name: values[i] for i, name in enumerate(self.metric_names)}

    def per_image(self) -> list[dict[str, Any]]:
        """This process's scored pairs in update order: ``[{"name": ..., "EN": ..., ...}, ...]``."""
        return [{"name": n, **dict(zip(self.metric_names, v, strict=True))} for n, v in self._records]

    def reset(self) -> None:
        super().reset()
        self._records = []

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """torchmetrics' sum merge of the states, plus the incoming metric's per-image records."""
        if isinstance(incoming_state, FusionMetrics) and (
            incoming_state.metric_names != self.metric_names or incoming_state.convention != self.convention
        ):
            raise ValueError("cannot merge FusionMetrics with different metric lists or conventions")
        super().merge_state(incoming_state)
        if isinstance(incoming_state, FusionMetrics):
            self._records.extend(incoming_state._records)
