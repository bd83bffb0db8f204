"""Side-by-side panels (IR | VIS | masks | Stage I | final) for loggers and evaluation grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

PANEL_COLUMNS = ("ir", "vis", "mask_ir", "mask_vis", "stage1", "final")


def _to_rgb(img: torch.Tensor) -> np.ndarray:
    """C×H×W tensor in [0, 1] (C = 1 or 3) -> H×W×3 float32 array."""
    arr = img.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def panel_row(images: Sequence[torch.Tensor], gap: int = 2) -> np.ndarray:
    """Concatenate C×H×W images horizontally with a white ``gap``-pixel separator."""
    tiles = [_to_rgb(img) for img in images]
    sep = np.ones((tiles[0].shape[0], gap, 3), dtype=np.float32)
    out = [tiles[0]]
    for tile in tiles[1:]:
        out += [sep, tile]
    return np.concatenate(out, axis=1)


def panel_rows(batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor],
               columns: Sequence[str] = PANEL_COLUMNS) -> list[np.ndarray]:
    """One H×W'×3 row per image of the batch; columns missing from batch and outputs are left out."""
    merged = {**batch, **outputs}
    present = [c for c in columns if isinstance(merged.get(c), torch.Tensor)]
    return [panel_row([merged[c][i] for c in present]) for i in range(merged[present[0]].shape[0])]
