"""Procedural IR/VIS pairs with ground-truth masks: a dataset that needs no download.

Each scene is a night-time view with three kinds of objects, so that fusion has something to gain from each
modality and the masks say which is which:

- *thermal-only* (a warm target in the dark): bright and smooth in IR, absent from the VIS image, which stays
  as dark and flat as its background there;
- *visible-only* (a cold textured object: a sign, a painted wall): fine coloured texture in VIS, absent from
  IR, which keeps its flat background there;
- *both* (a lit, warm object): texture in VIS and a moderately warm, smooth IR signature.

``mask_ir`` marks the thermally visible pixels (thermal-only and both), ``mask_vis`` the VIS-visible ones
(visible-only and both). Objects sit in distinct cells of a 3×3 grid, so they never overlap and every
kind is present in every pair: both masks are never empty.

Pairs are a pure function of ``(seed, split, index, height, width)``; splits draw from disjoint random
streams, so train and test never share a scene.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from sgdfuse.data.base import DataError, Pair, PairSource

_GRID = 3  # objects are placed in distinct cells of a _GRID × _GRID layout
_THERMAL_ONLY, _VISIBLE_ONLY, _BOTH = 1, 2, 3


class SyntheticPairs(PairSource):
    """``num_pairs`` procedural pairs of ``height`` × ``width`` pixels for one ``split``, with label masks."""

    def __init__(
        self, split: str = "train", num_pairs: int = 64, height: int = 128, width: int = 128, seed: int = 0
    ) -> None:
        if num_pairs < 1:
            raise DataError(f"SyntheticPairs(num_pairs={num_pairs}): need at least one pair")
        if min(height, width) < 2 * _GRID:
            raise DataError(f"SyntheticPairs: height and width must be >= {2 * _GRID}, got {height}×{width}")
        self.split = split
        self.num_pairs = int(num_pairs)
        self.height = int(height)
        self.width = int(width)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_pairs

    def names(self) -> list[str]:
        return [self._name(i) for i in range(self.num_pairs)]

    def key(self, index: int) -> str:
        index = self._check_index(index)
        return f"synthetic:{self.seed}:{self.split}:{index}:{self.height}x{self.width}"

    @property
    def has_labels(self) -> bool:
        return True

    def __getitem__(self, index: int) -> Pair:
        index = self._check_index(index)
        ir, vis, mask_ir, mask_vis = render_scene(self._rng(index), self.height, self.width)
        pair = Pair(name=self._name(index), ir=ir, vis=vis, key=self.key(index), masks=(mask_ir, mask_vis))
        for array in (ir, vis, mask_ir, mask_vis):
            array.setflags(write=False)  # shared through the cache: copy before modifying
        return pair

    def _name(self, index: int) -> str:
        return f"{self.split}_{index:05d}"

    def _check_index(self, index: int) -> int:
        if not -self.num_pairs <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for {self.num_pairs} synthetic pairs")
        return index % self.num_pairs

    def _rng(self, index: int) -> np.random.Generator:
        # One independent stream per (seed, split, index): splits never share scenes.
        split_id = zlib.crc32(self.split.encode())
        return np.random.default_rng(np.random.SeedSequence([self.seed, split_id, index]))


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene: (ir H×W float32, vis H×W×3 float32 RGB, mask_ir, mask_vis H×W uint8 in {0, 1})."""
    ir = _smooth_field(rng, height, width, low=0.15, high=0.35)
    vis = _night_background(rng, height, width)
    labels = _object_labels(rng, height, width)
    kinds = np.zeros_like(labels)

    for object_id in range(1, int(labels.max()) + 1):
        region = labels == object_id
        ys, xs = (v.astype(np.float32) for v in np.nonzero(region))  # same order as boolean indexing
        # The first three objects are one of each kind, so that both masks are never empty.
        kind = object_id if object_id <= 3 else int(rng.choice([_THERMAL_ONLY, _VISIBLE_ONLY, _BOTH]))
        if kind in (_THERMAL_ONLY, _BOTH):
            hot = (0.75, 0.95) if kind == _THERMAL_ONLY else (0.5, 0.68)
            ir[region] = _warm_body(rng, ys, xs, *hot)
        if kind in (_VISIBLE_ONLY, _BOTH):
            vis[region] = _textured_surface(rng, ys, xs)
        kinds[region] = kind

    mask_ir = np.isin(kinds, (_THERMAL_ONLY, _BOTH)).astype(np.uint8)
    mask_vis = np.isin(kinds, (_VISIBLE_ONLY, _BOTH)).astype(np.uint8)
    ir = np.clip(ir + rng.normal(0.0, 0.004, ir.shape).astype(np.float32), 0.0, 1.0)
    vis = np.clip(vis + rng.normal(0.0, 0.004, vis.shape).astype(np.float32), 0.0, 1.0)
    return ir.astype(np.float32), vis.astype(np.float32), mask_ir, mask_vis


def _smooth_field(rng: np.random.Generator, height: int, width: int, low: float, high: float) -> np.ndarray:
    """Low-frequency random field in [low, high] (bicubic upsampling of a 4×4 grid)."""
    coarse = rng.uniform(low, high, size=(4, 4)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), low, high)


def _night_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dark, nearly flat VIS background with a slight colour cast."""
    luminance = _smooth_field(rng, height, width, low=0.04, high=0.16)
    tint = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    return np.clip(luminance[..., None] * tint, 0.0, 1.0)


def _object_labels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """int32 label map: 0 background, 1..n one filled shape per grid cell (objects 1, 2, 3 always present)."""
    labels = np.zeros((height, width), dtype=np.int32)
    n_objects = int(rng.integers(3, 7))
    cells = rng.permutation(_GRID * _GRID)[:n_objects]
    ys = np.linspace(0, height, _GRID + 1).astype(int)
    xs = np.linspace(0, width, _GRID + 1).astype(int)
    for object_id, cell in enumerate(cells, start=1):
        r, c = divmod(int(cell), _GRID)
        _draw_shape(rng, labels, object_id, ys[r], ys[r + 1], xs[c], xs[c + 1])
    return labels


def _draw_shape(rng: np.random.Generator, labels: np.ndarray, value: int, y0: int, y1: int, x0: int, x1: int):
    """Fill an ellipse, a rotated rectangle or a triangle inside the cell [y0, y1) × [x0, x1)."""
    ch, cw = y1 - y0, x1 - x0
    half_h = max(1, int(ch * rng.uniform(0.25, 0.42)))
    half_w = max(1, int(cw * rng.uniform(0.25, 0.42)))
    cy = y0 + ch // 2 + int(rng.integers(-(ch // 2 - half_h), ch // 2 - half_h + 1))
    cx = x0 + cw // 2 + int(rng.integers(-(cw // 2 - half_w), cw // 2 - half_w + 1))
    shape = int(rng.integers(3))
    if shape == 0:
        cv2.ellipse(labels, (cx, cy), (half_w, half_h), 0.0, 0.0, 360.0, int(value), thickness=-1)
        return
    if shape == 1:
        # Corners at ±half extents, rotated a little: stays inside the cell (|rotation| < 20°, rescaled).
        angle = np.deg2rad(rng.uniform(-20.0, 20.0))
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.75
    else:
        angle = 0.0
        corners = np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64) * rng.uniform(0.8, 1.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (corners @ rot.T) * [half_w, half_h] + [cx, cy]
    cv2.fillPoly(labels, [np.round(points).astype(np.int32)], int(value))


def _warm_body(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, low: float, high: float):
    """IR values at pixels (ys, xs) of a warm object: hottest at its centre, 0.06 cooler at its edge."""
    peak = rng.uniform(low, high)
    distance = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return (peak - 0.06 * distance / max(float(distance.max()), 1.0)).astype(np.float32)


def _textured_surface(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """N×3 RGB values at pixels (ys, xs) of a lit coloured surface with fine texture (stripes of 3-6 px
    period, or a checkerboard of 2-3 px squares)."""
    colour = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
    brightness = rng.uniform(0.45, 0.7)
    if rng.random() < 0.5:
        theta = rng.uniform(0.0, np.pi)
        period = rng.uniform(3.0, 6.0)
        pattern = np.sin((np.cos(theta) * xs + np.sin(theta) * ys) * (2.0 * np.pi / period))
    else:
        cell = int(rng.integers(2, 4))
        pattern = (((ys // cell) + (xs // cell)) % 2) * 2.0 - 1.0
    luminance = brightness + 0.25 * pattern
    return np.clip(luminance[:, None] * (colour / colour.max()), 0.0, 1.0).astype(np.float32)
