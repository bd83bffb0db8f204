"""What every paired IR/VIS source provides, before masks and augmentation.

A :class:`PairSource` is an indexable list of registered pairs. Images are numpy arrays so that the mask
generator (SAM), OpenCV and albumentations can use them without conversion:

- ``ir``: H×W float32 in [0, 1]
- ``vis``: H×W×3 float32 in [0, 1] (RGB; grey VIS replicated)
- ``masks``: optional (mask_ir, mask_vis), H×W uint8 in {0, 1}, when the dataset ships them (labels)
- ``key``: a string that changes whenever the pair's content changes (file bytes hash, or generator
  seed + index for synthetic data); the mask cache is keyed by it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Bad dataset input (missing folder, unpaired file, undecodable image...); says what to do."""


@dataclass
class Pair:
    name: str
    ir: np.ndarray
    vis: np.ndarray
    key: str
    masks: tuple[np.ndarray, np.ndarray] | None = None


class PairSource(ABC):
    """An indexable, deterministic collection of registered IR/VIS pairs (one split of one dataset)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def names(self) -> list[str]:
        """Pair names in index order (file names for folders)."""

    @abstractmethod
    def key(self, index: int) -> str:
        """Content key of pair ``index`` (cheap: must not decode the images twice where avoidable)."""

    @abstractmethod
    def __getitem__(self, index: int) -> Pair: ...

    @property
    def has_labels(self) -> bool:
        """True when pairs carry ground-truth masks (``Pair.masks``)."""
        return False

    def validate(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Cheap checks of the whole source before any training; raise DataError naming the pair.

        Called by the DataModule's ``prepare_data`` before masks are computed, so that a bad pair fails
        before SAM runs or anything is cached. Sources that cannot be inconsistent keep this no-op.
        """


def named_test_sets(test: PairSource | dict[str, PairSource | None] | None,
                    name: str) -> dict[str, PairSource]:
    """``{set name: source}`` from one source (called ``name``) or a dict of named sources.

    A ``None`` entry is a set left out (Hydra cannot delete a key from a preset, it can null it); a dict
    whose sets are all left out is an error, raised before any training.
    """
    if test is None:
        return {}
    if isinstance(test, PairSource):
        return {name: test}
    if isinstance(test, dict) and all(v is None or isinstance(v, PairSource) for v in test.values()):
        sets = {str(k): v for k, v in test.items() if v is not None}
        if test and not sets:
            raise DataError(f"data.test: every test set is null ({sorted(test)}); keep at least one.")
        reserved = {"train", "val"} & set(sets)
        if reserved:
            raise DataError(f"data.test: a test set may not be called {sorted(reserved)}; rename it.")
        return sets
    raise DataError(f"data.test must be a pair source or a dict of named pair sources, got "
                    f"{type(test).__name__}: {test!r}")
