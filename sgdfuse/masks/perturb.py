"""Mask perturbation for the robustness study (docs/design.md, Mask perturbation): erode or dilate masks.

The paper perturbs the masks at test time to show that fusion quality does not hinge on exact masks. The
structuring element is an ellipse inscribed in a k×k square, as ``cv2.getStructuringElement`` builds it.
"""

from __future__ import annotations

import cv2
import numpy as np

MODES = (None, "erode", "dilate")


def perturb_mask(mask: np.ndarray, mode: str | None, kernel_size: int) -> np.ndarray:
    """Erode or dilate an H×W uint8 {0, 1} mask with an elliptic ``kernel_size``² kernel (``None``: copy)."""
    if mode not in MODES:
        raise ValueError(f"mask perturbation mode must be one of {MODES}, got {mode!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
        raise ValueError(f"mask perturbation kernel_size must be a positive integer, got {kernel_size!r}")
    if mask.ndim != 2:
        raise ValueError(f"perturb_mask expects an H×W mask, got shape {mask.shape}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mode is None:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(kernel_size), int(kernel_size)))
    op = cv2.erode if mode == "erode" else cv2.dilate
    # OpenCV's default border leaves image borders alone: objects cut by the frame continue outside it.
    return op(mask, kernel)
