"""Mask sources behind one interface (docs/design.md, Masks): ``sam``, ``prior``, ``labels``, ``none``.

The DataModule calls :meth:`MaskSource.prepare` from ``prepare_data`` (once per node: expensive work and
disk caching happen there) and :meth:`MaskSource.load` from its datasets with the pair it has just read
(cheap, every epoch): data flows one way, the source never re-reads a pair. Whether a source yields masks
at all (:attr:`MaskSource.enabled`) decides Stage II's conditioning channels and mask-weighted losses.

A new source that computes masks is one subclass of :class:`CachedMaskSource` (``compute`` and
``identity``) plus one YAML in ``configs/masks/``: the on-disk cache, progress bar and lazy fill come
with it.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from sgdfuse.data.base import DataError, Pair, PairSource
from sgdfuse.masks.cache import MaskCache, hash_config

log = logging.getLogger(__name__)

Masks = tuple[np.ndarray, np.ndarray]


class MaskSource(ABC):
    #: False for ``none``: Stage II then uses a 3-channel UNet and unweighted losses.
    enabled: bool = True

    def prepare(self, pairs: PairSource, split: str) -> None:  # noqa: B027 - optional hook
        """Compute and cache masks for every pair of ``pairs`` (no-op for sources that need no work)."""

    @abstractmethod
    def load(self, pair: Pair) -> Masks:
        """(mask_ir, mask_vis) of ``pair``: H×W uint8 in {0, 1}, H×W = ``pair.ir.shape``."""


class NoMasks(MaskSource):
    """``masks=none``: all-zero masks (the w/o-SAM ablation ignores them)."""

    enabled = False

    def load(self, pair: Pair) -> Masks:
        zeros = np.zeros(pair.ir.shape[:2], dtype=np.uint8)
        return zeros, zeros.copy()


class LabelMasks(MaskSource):
    """``masks=labels``: masks shipped with the dataset (the synthetic set's ground-truth objects)."""

    def prepare(self, pairs: PairSource, split: str) -> None:
        if not pairs.has_labels:
            raise DataError(
                f"masks=labels but the {split!r} split of {type(pairs).__name__} has no mask labels; "
                "use masks=prior (weight-free), masks=sam (computes SAM masks) or masks=none."
            )

    def load(self, pair: Pair) -> Masks:
        if pair.masks is None:
            raise DataError(f"pair {pair.name!r} has no mask labels; use masks=prior, masks=sam or "
                            "masks=none.")
        return pair.masks


@dataclass
class PrepareStats:
    """What the last :meth:`CachedMaskSource.prepare` did (benchmarks and tests read it)."""

    split: str
    pairs: int
    computed: int = 0
    cached: int = 0
    calls: int = 0  # model calls (SAM: one per modality and pair)
    seconds: float = 0.0


class CachedMaskSource(MaskSource):
    """A mask source whose masks are computed per pair and kept in a :class:`MaskCache`.

    Subclasses implement :meth:`compute` (one pair → masks, no cache) and :meth:`identity` (everything
    that determines the masks, JSON-serialisable: its hash names the cache folder, so changing a
    setting never reads stale masks).
    """

    #: Shown in the progress bar and the log.
    label = "masks"
    #: Model calls per computed pair (for :class:`PrepareStats`).
    calls_per_pair = 1

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache = MaskCache(cache_dir)
        self.stats: PrepareStats | None = None  # of the last prepare()
        self._source_hash: str | None = None
        self._warned_lazy = False

    @abstractmethod
    def compute(self, pair: Pair) -> Masks:
        """(mask_ir, mask_vis) of ``pair``, H×W uint8 in {0, 1}, without the cache."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything that determines the masks (config, weights hash, format version)."""

    def manifest(self) -> dict[str, Any]:
        """What the cache folder records about its source (extended by subclasses)."""
        return {"source": self.identity()}

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free what ``compute`` built (e.g. a model on the GPU) once ``prepare`` is done."""

    @property
    def source_hash(self) -> str:
        if self._source_hash is None:
            self._source_hash = hash_config(self.identity())
        return self._source_hash

    def _write_manifest(self) -> None:
        try:
            self.cache.write_manifest(self.source_hash, self.manifest())
        except PermissionError as err:
            raise DataError(f"the mask cache {self.cache.root} is not writable ({err}); point it at a "
                            "writable folder: paths.cache_dir=... (or masks.source.cache_dir=...).") from err

    def prepare(self, pairs: PairSource, split: str) -> None:
        """Compute and cache the masks of every pair not cached yet (progress bar); see :attr:`stats`."""
        start = time.perf_counter()
        stats = PrepareStats(split=split, pairs=len(pairs))
        self._write_manifest()  # also resolves e.g. a SAM checkpoint: a missing one fails before any work
        try:
            for index in tqdm(range(len(pairs)), desc=f"{self.label} [{split}]", unit="pair"):
                pair = pairs[index]
                if self.cache.get(self.source_hash, pair.key, pair.ir.shape[:2]) is not None:
                    stats.cached += 1
                    continue
                self.cache.put(self.source_hash, pair.key, *self._checked(pair, self.compute(pair)))
                stats.computed += 1
                stats.calls += self.calls_per_pair
        finally:
            self.release()
            stats.seconds = time.perf_counter() - start
            self.stats = stats
        log.info("%s [%s]: %d pairs, %d computed, %d cached, %.1f s (cache %s)", self.label, split,
                 stats.pairs, stats.computed, stats.cached, stats.seconds,
                 self.cache.source_dir(self.source_hash))

    def load(self, pair: Pair) -> Masks:
        masks = self.cache.get(self.source_hash, pair.key, pair.ir.shape[:2])
        if masks is not None:
            return masks
        if not self._warned_lazy:
            log.warning("%s of pair %r is not in the cache %s (prepare() not run for this split, or the "
                        "entry was invalid): computing it now; run prepare_data or precompute_masks.py "
                        "first to avoid this", self.label, pair.name, self.cache.source_dir(self.source_hash))
            self._warned_lazy = True
        self._write_manifest()
        masks = self._checked(pair, self.compute(pair))
        self.cache.put(self.source_hash, pair.key, *masks)
        return masks

    def _checked(self, pair: Pair, masks: Masks) -> Masks:
        shape = pair.ir.shape[:2]
        for kind, mask in zip(("mask_ir", "mask_vis"), masks, strict=True):
            if mask.shape != shape or mask.dtype != np.uint8:
                raise DataError(f"{type(self).__name__}.compute returned a {kind} of shape {mask.shape} "
                                f"({mask.dtype}) for pair {pair.name!r}; expected uint8 {shape}")
        return masks
