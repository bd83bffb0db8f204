"""``masks=prior``: a semantic prior that needs no weights (our swap of SGDFuse's SAM, section 3).

SGDFuse conditions Stage II on SAM masks; its generalisability study swaps the semantic prior. This source
gives masks that mean something on real infrared–visible pairs without any download:

- **IR: thermal targets.** People, vehicles and engines are warmer than their surroundings. The IR image
  is smoothed (Gaussian), thresholded at ``mean + ir_k · std`` (and at least Otsu's threshold), holes are
  filled, and the connected components (scikit-image ``label``) whose area lies between ``min_area`` and
  ``max_area`` of the image and that touch the image border little are ranked by their contrast to the
  image mean; the union of the ``top_k`` brightest is the mask.
- **VIS: object-sized regions.** Felzenszwalb's graph-based segmentation (scikit-image) splits the
  visible image into regions; regions of object size (``min_area`` … ``max_area``) that touch the image
  border little (sky, road and walls usually run off the frame) are ranked by their CIELAB colour
  contrast to the whole image; the union of the ``top_k`` most distinct is the mask. A classical
  segmentation is weaker than SAM here: it finds vehicles, trees and signs, and sometimes a patch of sky.

A constant or all-black image has no structure: both masks are then empty (no crash). Masks are cached
like SAM's (:class:`~sgdfuse.masks.base.CachedMaskSource`), keyed by these settings.
"""

from __future__ import annotations

import inspect
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, filters, measure, segmentation

from sgdfuse.data.base import Pair
from sgdfuse.masks.base import CachedMaskSource, Masks

#: Bump when the way masks are derived changes: old cache entries then stop matching.
PRIOR_FORMAT_VERSION = 1


def thermal_targets(ir: np.ndarray, sigma: float = 1.5, k: float = 1.5, min_area: float = 0.0005,
                    max_area: float = 0.2, top_k: int = 5, max_border: float = 0.3) -> np.ndarray:
    """Mask of warm compact objects in ``ir`` (H×W float in [0, 1]): H×W uint8 in {0, 1}."""
    smooth = filters.gaussian(ir.astype(np.float64), sigma=sigma)
    std = float(smooth.std())
    if std < 1e-3:  # flat image: nothing stands out
        return np.zeros(ir.shape, np.uint8)
    threshold = max(float(smooth.mean()) + k * std, float(filters.threshold_otsu(smooth)))
    labels = measure.label(ndimage.binary_fill_holes(smooth > threshold), connectivity=2)
    contrast = _label_means(smooth[..., None], labels)[:, 0] - float(smooth.mean())
    return _union_of_best(labels, contrast, min_area, max_area, top_k, max_border, background=0)


def salient_regions(vis: np.ndarray, scale: float = 300.0, sigma: float = 0.8, min_area: float = 0.002,
                    max_area: float = 0.15, top_k: int = 5, max_border: float = 0.3,
                    max_side: int = 400) -> np.ndarray:
    """Mask of distinct object-sized regions in ``vis`` (H×W×3 RGB float in [0, 1]): H×W uint8 in {0, 1}.

    Segmentation runs on the image downscaled to ``max_side`` (areas are fractions, so the result barely
    depends on it; it is 3–4× faster on 768×576 TNO frames) and the mask is resized back.
    """
    if float(vis.std()) < 1e-3:
        return np.zeros(vis.shape[:2], np.uint8)
    factor = max_side / max(vis.shape[:2])
    if factor < 1:
        small = cv2.resize(vis, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        mask = salient_regions(small, scale, sigma, min_area, max_area, top_k, max_border, max_side)
        return cv2.resize(mask, vis.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    h, w = vis.shape[:2]
    min_size = max(int(min_area * h * w) // 4, 10)
    labels = segmentation.felzenszwalb(vis, scale=scale, sigma=sigma, min_size=min_size)
    lab = color.rgb2lab(vis)
    distinct = np.linalg.norm(_label_means(lab, labels) - lab.reshape(-1, 3).mean(axis=0), axis=1)
    return _union_of_best(labels, distinct, min_area, max_area, top_k, max_border)


def _label_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-label mean of H×W×C ``values``: (labels.max() + 1)×C (vectorised; thousands of segments)."""
    flat = labels.ravel()
    area = np.maximum(np.bincount(flat), 1)
    return np.stack([np.bincount(flat, weights=values[..., c].ravel(), minlength=len(area)) / area
                     for c in range(values.shape[-1])], axis=1)


def _union_of_best(labels: np.ndarray, score: np.ndarray, min_area: float, max_area: float, top_k: int,
                   max_border: float, background: int | None = None) -> np.ndarray:
    """Union of the ``top_k`` labels by ``score`` (> 0) among those of object size that touch the image
    border along at most ``max_border`` of a same-area square's perimeter (sky, road and walls run off
    the frame). ``background``: a label that never counts (0 of a binary labelling)."""
    area = np.bincount(labels.ravel(), minlength=len(score))
    edge = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    on_border = np.bincount(edge, minlength=len(score))
    ok = (area >= min_area * labels.size) & (area <= max_area * labels.size) & (score > 0)
    ok &= on_border <= max_border * 4 * np.sqrt(area)
    if background is not None:
        ok[background] = False
    chosen = [i for i in np.argsort(-score) if ok[i]][:top_k]
    return np.isin(labels, chosen).astype(np.uint8)


class PriorMasks(CachedMaskSource):
    """Thermal targets (IR) and distinct object-sized regions (VIS), computed once and cached on disk.

    Args:
        ir: keyword arguments of :func:`thermal_targets` (``sigma``, ``k``, ``min_area``, ``max_area``,
            ``top_k``).
        vis: keyword arguments of :func:`salient_regions` (``scale``, ``sigma``, ``min_area``,
            ``max_area``, ``top_k``, ``max_border``).
        cache_dir: root of the mask cache.
    """

    label = "prior masks"

    def __init__(self, ir: dict[str, Any] | None = None, vis: dict[str, Any] | None = None, *,
                 cache_dir: str) -> None:
        super().__init__(cache_dir)
        self.ir_kwargs = dict(ir or {})
        self.vis_kwargs = dict(vis or {})
        for name, fn, kwargs in (("ir", thermal_targets, self.ir_kwargs), ("vis", salient_regions,
                                                                             self.vis_kwargs)):
            unknown = set(kwargs) - set(list(inspect.signature(fn).parameters)[1:])
            if unknown:
                raise ValueError(f"masks.source.{name}: unknown key(s) {sorted(unknown)} for {fn.__name__}")

    def identity(self) -> dict[str, Any]:
        return {"format": PRIOR_FORMAT_VERSION, "kind": "prior", "ir": self.ir_kwargs, "vis": self.vis_kwargs}

    def compute(self, pair: Pair) -> Masks:
        return thermal_targets(pair.ir, **self.ir_kwargs), salient_regions(pair.vis, **self.vis_kwargs)
