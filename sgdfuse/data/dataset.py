"""Plain-PyTorch pieces of the data pipeline: the split Dataset, the samplers and the collate function.

Batch item: ``ir`` 1×H×W, ``vis`` 3×H×W RGB, ``mask_ir`` / ``mask_vis`` 1×H×W float32 in {0, 1} (zeros
with ``masks=none``), all float32 in [0, 1]; ``name`` str. No Lightning here: the DataModule in
``datamodules/ivif.py`` wires these into loaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, default_collate

from sgdfuse.data.base import DataError, PairSource
from sgdfuse.data.transforms import apply_joint, seed_transform
from sgdfuse.masks.base import MaskSource
from sgdfuse.masks.perturb import perturb_mask


class PairDataset(Dataset):
    """One split as a torch Dataset: pair + masks (perturbed if asked) + joint augmentation -> batch item."""

    def __init__(
        self,
        pairs: PairSource,
        mask_source: MaskSource,
        transform: A.Compose | None = None,
        perturb: dict[str, Any] | None = None,
    ) -> None:
        self.pairs = pairs
        self.mask_source = mask_source
        self.transform = transform
        self.perturb = perturb  # {"mode", "kernel_size"} or None

    def __len__(self) -> int:
        return len(self.pairs)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation's own random state (albumentations ignores global seeds)."""
        if self.transform is not None:
            seed_transform(self.transform, seed)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``index`` or ``(index, augmentation_seed)`` as yielded by :class:`EpochSeededSampler`."""
        if isinstance(index, tuple):
            index, aug_seed = index
            self.reseed(aug_seed)
        pair = self.pairs[index]
        mask_ir, mask_vis = self.mask_source.load(pair)
        for kind, mask in (("mask_ir", mask_ir), ("mask_vis", mask_vis)):
            if mask.shape != pair.ir.shape or mask.max(initial=0) > 1:
                raise DataError(
                    f"pair {pair.name!r}: {type(self.mask_source).__name__} returned a {kind} of shape "
                    f"{mask.shape} with maximum {mask.max(initial=0)}; expected H×W = {pair.ir.shape} in "
                    "{0, 1} (a stale mask cache? delete it to recompute)."
                )
        if self.perturb is not None:
            mask_ir = perturb_mask(mask_ir, self.perturb["mode"], self.perturb["kernel_size"])
            mask_vis = perturb_mask(mask_vis, self.perturb["mode"], self.perturb["kernel_size"])
        ir, vis = pair.ir, pair.vis
        if self.transform is not None:
            ir, vis, mask_ir, mask_vis = apply_joint(self.transform, ir, vis, mask_ir, mask_vis)
        return {
            "ir": _tensor(ir[None]),
            "vis": _tensor(np.moveaxis(vis, 2, 0)),
            "mask_ir": _tensor(mask_ir[None]),
            "mask_vis": _tensor(mask_vis[None]),
            "name": pair.name,
        }


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Shuffled indices, each with its own augmentation seed: a pure function of ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch (as for a DistributedSampler), and a
    StatefulDataLoader resumed mid-epoch fast-forwards through the same sequence, so order, crops and flips
    of a resumed run equal those of an uninterrupted one, whatever ``num_workers``.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(epoch_seed))
        order = torch.randperm(self.num_samples, generator=g).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.num_samples,), generator=g).tolist()
        return iter(zip(order, seeds, strict=True))


def _tensor(array: np.ndarray) -> torch.Tensor:
    # A fresh, writable, contiguous float32 copy: pair arrays are cached read-only by the sources.
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` with a clear error when images of different sizes meet in one batch."""
    sizes = {tuple(item["ir"].shape[-2:]) for item in items}
    if len(sizes) > 1:
        shown = ", ".join(f"{item['name']}: {tuple(item['ir'].shape[-2:])}" for item in items[:4])
        raise DataError(
            f"cannot batch images of different sizes (H×W) without cropping: {shown}; "
            "use data.val_batch_size=1 for full-image validation/test, or crop them."
        )
    return default_collate(items)


class ShardSampler(DistributedSampler):
    """Test images under DDP: rank r takes images r, r + W, r + 2W, ... — every image exactly once.

    Lightning's default DistributedSampler pads the shards with repeated images (which would count them
    twice in the test metrics) and its UnrepeatedDistributedSampler refuses a rank without images; being a
    DistributedSampler, this one is kept by Lightning as it is.
    """

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(self.rank, self.total_size, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
