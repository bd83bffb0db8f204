"""Joint augmentations for registered pairs (albumentations).

IR, VIS and both masks receive the same random crop and flips, so they stay pixel-aligned: the IR image is
the primary ``image`` target, VIS an additional ``image`` target, ``mask_ir`` the primary ``mask`` and
``mask_vis`` an additional ``mask`` (masks are never interpolated). Images smaller than the crop are first
padded by reflection (no artificial edges for the gradient loss). Validation and test use full images
without augmentation, so they have no transform.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

_TARGETS = {"vis": "image", "mask_vis": "mask"}


def train_transform(crop_size: int, seed: int | None = None) -> A.Compose:
    """Random ``crop_size``² crop (after reflect-padding smaller images), horizontal and vertical flips.

    ``seed`` seeds the transform's own random state (albumentations ignores the global seeds); see
    :func:`seed_transform`.
    """
    if crop_size < 1:
        raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size}")
    transform = A.Compose(
        [
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=crop_size, width=crop_size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ],
        additional_targets=_TARGETS,
        mask_interpolation=cv2.INTER_NEAREST,
    )
    if seed is not None:
        seed_transform(transform, seed)
    return transform


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Make ``transform`` draw from one random stream seeded by ``seed``.

    Not ``Compose(seed=...)``: albumentations 2.0 then gives every child transform its own generator
    seeded with the *same* seed, so HorizontalFlip and VerticalFlip always take the same decision and the
    crop position follows them. ``set_random_state`` shares a single stream among all of them instead.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def apply_joint(
    transform: A.Compose, ir: np.ndarray, vis: np.ndarray, mask_ir: np.ndarray, mask_vis: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Apply one random draw of ``transform`` to IR (H×W), VIS (H×W×3) and both masks (H×W)."""
    out = transform(image=ir, vis=vis, mask=mask_ir, mask_vis=mask_vis)
    return out["image"], out["vis"], out["mask"], out["mask_vis"]
