"""The Lightning DataModule of both stages: IR/VIS pairs + masks -> batches (docs/design.md, Data flow).

Batch: ``ir`` B×1×H×W, ``vis`` B×3×H×W RGB, ``mask_ir`` / ``mask_vis`` B×1×H×W float32 in {0, 1} (zeros
with ``masks=none``), all float32 in [0, 1]; ``name`` list of str. Training batches are random crops with
flips; validation and test batches are full images, one per batch by default because sizes differ.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from sgdfuse.data.base import DataError, PairSource, named_test_sets
from sgdfuse.data.dataset import EpochSeededSampler, PairDataset, ShardSampler, collate_pairs
from sgdfuse.data.transforms import train_transform
from sgdfuse.masks.base import MaskSource
from sgdfuse.masks.perturb import MODES

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)
_PERTURB_DEFAULTS: dict[str, Any] = {"mode": None, "kernel_size": 5, "apply_to": ["test"]}


class IVIFDataModule(L.LightningDataModule):
    """Train / val / test pair sources with one mask source, for Stage I and Stage II alike.

    Args:
        train, val: the training splits (``None`` when a run does not need one, e.g. a test-only dataset).
        test: the test set, or a dict of named test sets (``{"TNO": ..., "RoadScene": ...}``) that the
            test stage scores and reports separately, as papers print them side by side. A single source
            is named ``name``; a set set to ``None`` is left out (how a preset drops one).
        name: the dataset's name (``TNO``, ``MSRS``, ...): the name of a single test set.
        mask_source: where masks come from (SAM, labels, none); run once per node in :meth:`prepare_data`.
        perturb: ``{"mode": None | "erode" | "dilate", "kernel_size": k, "apply_to": [splits]}`` — masks of
            the splits in ``apply_to`` are eroded/dilated when loaded (the paper's robustness test).
        batch_size, crop_size: training batches of random ``crop_size``² crops with flips.
        val_batch_size: validation/test batch size; full images of different sizes need 1.
        persistent_workers: keep loader workers alive between epochs (only with ``num_workers > 0``).
        seed: seeds the training shuffle and the augmentations.
        root, test_root: dataset roots the split configs share (``${..root}``); kept only to be logged
            with the hyperparameters.
    """

    def __init__(
        self,
        train: PairSource | None,
        val: PairSource | None,
        test: PairSource | dict[str, PairSource | None] | None,
        mask_source: MaskSource,
        perturb: dict[str, Any] | None = None,
        batch_size: int = 24,
        crop_size: int = 160,
        val_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        root: str | None = None,
        test_root: str | None = None,
        name: str = "test",
    ) -> None:
        super().__init__()
        self.test_sets = named_test_sets(test, name)
        self.sources: dict[str, PairSource | None] = {"train": train, "val": val, **self.test_sets}
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
        self.persistent_workers = bool(persistent_workers)
        self.seed = int(seed)
        self.save_hyperparameters(ignore=["train", "val", "test", "mask_source"])
        self.hparams["test_sets"] = list(self.test_sets)
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
        self._warn_small_training_pairs()
        for split, pairs in present.items():
            self.mask_source.prepare(pairs, split)

    @property
    def test_set_names(self) -> list[str]:
        """Names of the test sets, in the order of :meth:`test_dataloader`'s loaders."""
        return list(self.test_sets)

    def setup(self, stage: str | None = None) -> None:
        tests = tuple(self.test_sets)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": tests, "predict": tests}
        if stage == "fit" and self.sources["train"] is None:
            raise DataError("training needs a train split, but data.train is null; pick a dataset with one.")
        if stage == "fit" and len(self.sources["train"]) < self.batch_size:
            raise DataError(f"the train split has {len(self.sources['train'])} pair(s), fewer than one batch "
                            f"(data.batch_size={self.batch_size}): add pairs or lower data.batch_size.")
        for split in needed.get(stage, ("train", "val", *tests)):
            if self.sources[split] is not None:
                self._dataset(split)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        # No val split: an empty list tells Lightning to skip validation.
        return self._loader("val", self.val_batch_size) if self.sources["val"] is not None else []

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test set (Lightning's ``dataloader_idx`` = position in :attr:`test_set_names`)."""
        if not self.test_sets:
            raise DataError("no test split configured (data.test is null); pick a dataset with one.")
        return [self._loader(name, self.val_batch_size) for name in self.test_sets]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()

    # -- helpers -----------------------------------------------------------------------------------------
    def _present(self) -> dict[str, PairSource]:
        present = {split: pairs for split, pairs in self.sources.items() if pairs is not None}
        for split, pairs in present.items():
            _check_nonempty(split, pairs)
        return present

    def _warn_small_training_pairs(self) -> None:
        """Pairs smaller than the crop are reflect-padded by the training transform: say which ones."""
        train = self.sources["train"]
        small = [f"{n} ({h}×{w})" for n, (h, w) in getattr(train, "sizes", {}).items()
                 if min(h, w) < self.crop_size]
        if small:
            more = " ..." if len(small) > 5 else ""
            log.warning("%d training pair(s) are smaller than data.crop_size=%d and are reflect-padded "
                        "to it: %s%s", len(small), self.crop_size, ", ".join(small[:5]), more)

    def _perturb_for(self, split: str) -> dict[str, Any] | None:
        kind = "test" if split in self.test_sets else split
        if self.perturb["mode"] is None or kind not in self.perturb["apply_to"]:
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
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )


def _sampler(split: str, dataset: Dataset, seed: int) -> Sampler | None:
    if split == "train":
        return EpochSeededSampler(len(dataset), seed)
    if split not in ("val",) and torch.distributed.is_available() and torch.distributed.is_initialized():
        return ShardSampler(dataset)
    return None  # validation under DDP: Lightning's padded DistributedSampler (losses only)


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
