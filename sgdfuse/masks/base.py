"""Mask sources behind one interface (docs/design.md, Mask sources): ``sam``, ``labels``, ``none``.

The DataModule calls :meth:`MaskSource.prepare` from ``prepare_data`` (once per node: expensive work and
disk caching happen there) and :meth:`MaskSource.load` from its datasets (cheap, every epoch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from sgdfuse.data.base import DataError, PairSource


class MaskSource(ABC):
    #: False for ``none``: Stage II then uses a 3-channel UNet and unweighted losses.
    enabled: bool = True

    def prepare(self, pairs: PairSource, split: str) -> None:  # noqa: B027 - optional hook
        """Compute and cache masks for every pair of ``pairs`` (no-op for sources that need no work)."""

    @abstractmethod
    def load(self, pairs: PairSource, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask_ir, mask_vis) of pair ``index``: H×W uint8 in {0, 1}."""


class NoMasks(MaskSource):
    """``masks=none``: all-zero masks (the w/o-SAM ablation ignores them)."""

    enabled = False

    def load(self, pairs: PairSource, index: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = pairs[index].ir.shape
        zeros = np.zeros((h, w), dtype=np.uint8)
        return zeros, zeros.copy()


class LabelMasks(MaskSource):
    """``masks=labels``: masks shipped with the dataset (the synthetic set's ground-truth objects)."""

    def prepare(self, pairs: PairSource, split: str) -> None:
        if not pairs.has_labels:
            raise DataError(
                f"masks=labels but the {split!r} split of {type(pairs).__name__} has no mask labels; "
                "use masks=sam (computes SAM masks) or masks=none."
            )

    def load(self, pairs: PairSource, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = pairs[index]
        if pair.masks is None:
            raise DataError(f"pair {pair.name!r} has no mask labels; use masks=sam or masks=none.")
        return pair.masks
