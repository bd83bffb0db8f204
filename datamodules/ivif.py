"""The Lightning DataModule of both stages: paired IR/VIS sources + masks -> batches (DESIGN.md, Data flow).

Batch: ``ir`` B×1×H×W, ``vis`` B×3×H×W RGB, ``mask_ir`` / ``mask_vis`` B×1×H×W float32 in {0, 1} (zeros
with ``masks=none``), all float32 in [0, 1]; ``name`` list of str. Training batches are random crops with
flips; validation and test batches are full images, one per batch by default because sizes differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    default_collate,
)
from torchdata.stateful_dataloader import StatefulDataLoader

from sgdfuse.data.base import DataError, PairSource
from sgdfuse.data.transforms import apply_joint, seed_transform, train_transform
from sgdfuse.masks.base import MaskSource
from sgdfuse.masks.perturb import MODES, perturb_mask

SPLITS = ("train", "val", "test")
_PERTURB_DEFAULTS: dict[str, Any] = {"mode": None, "kernel_size": 5, "apply_to": ["test"]}


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
        mask_ir, mask_vis = self.mask_source.load(self.pairs, index)
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


class IVIFDataModule(L.LightningDataModule):
    """Train / val / test pair sources with one mask source, for Stage I and Stage II alike.

    Args:
        train, val, test: the splits (``None`` when a run does not need one, e.g. a test-only dataset).
        mask_source: where masks come from (SAM, labels, none); run once per node in :meth:`prepare_data`.
        perturb: ``{"mode": None | "erode" | "dilate", "kernel_size": k, "apply_to": [splits]}`` — masks of
            the splits in ``apply_to`` are eroded/dilated when loaded (the paper's robustness test).
        batch_size, crop_size: training batches of random ``crop_size``² crops with flips.
        val_batch_size: validation/test batch size; full images of different sizes need 1.
        seed: seeds the training shuffle and the augmentations.
        root: dataset root the split configs share (``${..root}``); kept only to be logged with the
            hyperparameters.
    """

    def __init__(
        self,
        train: PairSource | None,
        val: PairSource | None,
        test: PairSource | None,
        mask_source: MaskSource,
        perturb: dict[str, Any] | None = None,
        batch_size: int = 24,
        crop_size: int = 160,
        val_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        super().__init__()
        self.sources: dict[str, PairSource | None] = {"train": train, "val": val, "test": test}
        if not isinstance(mask_source, MaskSource):
            raise DataError(f"mask_source must be a MaskSource, got {type(mask_source).__name__}")
        self.mask_source = mask_source
        self.perturb = _check_perturb(perturb)
        for name, value in (("batch_size", batch_size), ("crop_size", crop_size),
                            ("val_batch_size", val_batch_size)):
            if int(value) < 1:
                raise DataError(f"data.{name} must be a positive integer, got {value}")
        if int(num_workers) < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers}")
        if all(source is None for source in self.sources.values()):
            raise DataError("the data config has no split at all: set data.train, data.val or data.test.")
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.seed = int(seed)
        self.save_hyperparameters(ignore=["train", "val", "test", "mask_source"])
        self.datasets: dict[str, PairDataset] = {}

    @property
    def mask_channels_enabled(self) -> bool:
        """False with ``masks=none``: Stage II then drops the mask channels and the mask weights."""
        return bool(self.mask_source.enabled)

    # -- Lightning hooks ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the splits, then let the mask source do its expensive work (SAM) once per node.

        Every split is validated (cheap: image headers) before the mask source of any split starts, so a
        broken dataset fails before SAM runs and before anything is written to the mask cache.
        """
        present = self._present()
        for pairs in present.values():
            pairs.validate()
        for split, pairs in present.items():
            self.mask_source.prepare(pairs, split)

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        if stage == "fit" and self.sources["train"] is None:
            raise DataError("training needs a train split, but data.train is null; pick a dataset with one.")
        for split in needed.get(stage, SPLITS):
            if self.sources[split] is not None:
                self._dataset(split)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        # No val split: an empty list tells Lightning to skip validation.
        return self._loader("val", self.val_batch_size) if self.sources["val"] is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size)

    # -- helpers -----------------------------------------------------------------------------------------
    def _present(self) -> dict[str, PairSource]:
        present = {split: pairs for split, pairs in self.sources.items() if pairs is not None}
        for split, pairs in present.items():
            _check_nonempty(split, pairs)
        return present

    def _perturb_for(self, split: str) -> dict[str, Any] | None:
        if self.perturb["mode"] is None or split not in self.perturb["apply_to"]:
            return None
        return {"mode": self.perturb["mode"], "kernel_size": self.perturb["kernel_size"]}

    def _dataset(self, split: str) -> PairDataset:
        """The split's Dataset, built once (the same DataModule serves every stage of a run)."""
        pairs = self.sources[split]
        if pairs is None:
            raise DataError(f"no {split} split configured (data.{split} is null); pick a dataset with one.")
        if split not in self.datasets:
            _check_nonempty(split, pairs)
            self.datasets[split] = PairDataset(
                pairs,
                self.mask_source,
                transform=train_transform(self.crop_size) if split == "train" else None,
                perturb=self._perturb_for(split),
            )
            # for direct indexing: the train loader seeds every sample itself, and
            # seed_everything(workers=True) seeds NumPy/random in each loader worker
            self.datasets[split].reseed(self.seed)
        return self.datasets[split]

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        dataset = self._dataset(split)
        # torchdata's StatefulDataLoader: Lightning checkpoints its position and restores it, so resuming
        # mid-epoch continues with the next batch of the same epoch, not a new epoch.
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=_sampler(split, dataset, self.seed),
            drop_last=split == "train" and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_pairs,
            persistent_workers=False,
        )


def _sampler(split: str, dataset: Dataset, seed: int) -> Sampler | None:
    if split == "train":
        return EpochSeededSampler(len(dataset), seed)
    if split == "test" and torch.distributed.is_available() and torch.distributed.is_initialized():
        return ShardSampler(dataset)
    return None  # validation under DDP: Lightning's padded DistributedSampler (losses only)


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


def _check_nonempty(split: str, pairs: PairSource) -> None:
    if len(pairs) == 0:
        raise DataError(f"the {split} split ({pairs!r}) has no pairs; check the dataset folder or config.")


def _check_perturb(perturb: dict[str, Any] | None) -> dict[str, Any]:
    """Merge with the defaults and validate, so that a typo fails before any training."""
    perturb = dict(perturb or {})
    unknown = sorted(set(perturb) - set(_PERTURB_DEFAULTS))
    if unknown:
        raise DataError(f"masks.perturb: unknown key(s) {unknown}; allowed: {sorted(_PERTURB_DEFAULTS)}")
    merged = {**_PERTURB_DEFAULTS, **perturb}
    if merged["mode"] not in MODES:
        raise DataError(f"masks.perturb.mode must be one of {list(MODES)}, got {merged['mode']!r}")
    k = merged["kernel_size"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"masks.perturb.kernel_size must be a positive integer, got {k!r}")
    apply_to = merged["apply_to"]
    apply_to = [apply_to] if isinstance(apply_to, str) else list(apply_to or [])
    bad = [s for s in apply_to if s not in SPLITS]
    if bad:
        raise DataError(f"masks.perturb.apply_to: unknown split(s) {bad}; use a list of {list(SPLITS)}")
    merged["apply_to"] = apply_to
    return merged
