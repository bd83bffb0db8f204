"""Fuse test sets (baseline, checkpoint or a folder of fused images) and score them as published tables do.

Outputs are those of the test stage of ``train.py`` (one path: :mod:`sgdfuse.orchestration.results`):
per set ``<out>/<set>/fused/*.png`` (+ ``stage1/`` for two-stage checkpoints), ``metrics.csv``,
``metrics.md`` and ``grid.png``; ``<out>/metrics.json`` over all sets. Any bad pair (missing fused file,
size mismatch, NaN) stops the run with an error naming it, so no mean silently leaves a pair out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sgdfuse.color import recombine, rgb_to_y
from sgdfuse.data.base import DataError, PairSource, named_test_sets
from sgdfuse.data.io import IMAGE_EXTENSIONS, read_vis, write_png_atomic
from sgdfuse.masks.base import MaskSource, NoMasks
from sgdfuse.orchestration.results import SetResults, write_summary

log = logging.getLogger(__name__)

METHODS = ("avg", "max", "folder", "checkpoint")
Fuser = Callable[[dict[str, Any]], dict[str, torch.Tensor]]


# --- fusion methods: batch -> {"final": B×3×H×W[, "stage1": ...]} in [0, 1] ---------------------------------
def baseline_fuser(mode: str) -> Fuser:
    """``avg`` / ``max`` of IR and the VIS luminance, chroma from VIS (the project's colour rule)."""
    if mode not in ("avg", "max"):
        raise ValueError(f"unknown baseline {mode!r}; use 'avg' or 'max'")

    def fuse(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        y_vis = rgb_to_y(batch["vis"])
        y = (batch["ir"] + y_vis) / 2 if mode == "avg" else torch.maximum(batch["ir"], y_vis)
        return {"final": recombine(y, batch["vis"])}

    return fuse


def folder_fuser(fused_dir: str | os.PathLike) -> Fuser:
    """Already fused images ``<fused_dir>/<pair name>.<ext>`` (any image extension), read as RGB [0, 1]."""
    folder = Path(fused_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"fused_dir {folder} does not exist; pass the folder of fused images "
                        "(fused_dir=...).")
    files = fused_files(folder)
    warned: list[Path] = []

    def fuse(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = []
        for name in batch["name"]:
            path = files.get(Path(name).stem)
            if path is None:
                raise DataError(f"pair {name!r}: no fused image {Path(name).stem}.* in {folder}; fuse "
                                "that pair or remove it from the dataset.")
            if not warned and _is_8bit_in_16bit(path):
                warned.append(path)
            images.append(torch.from_numpy(read_vis(path)).permute(2, 0, 1))
        sizes = {tuple(img.shape[-2:]) for img in images}
        if len(sizes) > 1:
            raise DataError(f"fused images of one batch differ in size: {sizes}")
        return {"final": torch.stack(images).to(batch["vis"].device)}

    return fuse


def fused_files(folder: Path) -> dict[str, Path]:
    """``{stem: file}`` of the images in ``folder``; two files with one stem (``a.png``, ``a.jpg``) are an
    error: which of them is the fused result cannot be guessed."""
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(p.stem, []).append(p)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        shown = "; ".join(", ".join(p.name for p in paths) for paths in list(clashes.values())[:5])
        raise DataError(f"fused_dir {folder}: {len(clashes)} pair name(s) have several fused images ({shown}"
                        f"{'; ...' if len(clashes) > 5 else ''}); keep one file per pair.")
    return {stem: paths[0] for stem, paths in by_stem.items()}


def _is_8bit_in_16bit(path: Path) -> bool:
    """A 16-bit file whose values all lie in 0..255 is 8-bit data in a 16-bit container: it is scored by
    the 16-bit rule (value / 65535), i.e. near-black, so say so (once per folder)."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        with open(path, "rb") as f:
            header = f.read(25)  # signature, IHDR length + type, width, height, bit depth
        if len(header) < 25 or header[24] != 16:
            return False  # 8-bit (the usual case): no second decode
    elif suffix not in (".tif", ".tiff"):
        return False  # JPEG and BMP have no 16-bit form that OpenCV reads
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or int(image.max(initial=0)) > 255:
        return False
    log.warning("fused image %s is 16-bit but holds only values 0..%d: 8-bit values saved as 16-bit? It is "
                "scored as 16-bit (value / 65535, near-black); re-save the fused images as 8-bit PNG if so "
                "(only the first such file is reported).", path, int(image.max(initial=0)))
    return True


def checkpoint_fuser(path: str | os.PathLike, device: str | torch.device = "cpu") -> Fuser:
    """A trained stage (``train.py`` checkpoint) via its own :meth:`FusionModule.fuse`, without gradients."""
    from lightning_modules import load_fusion_model  # Lightning is only needed for this method

    model = load_fusion_model(path, map_location=device)

    @torch.no_grad()
    def fuse(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return {k: v.float().clamp(0, 1).cpu() for k, v in model.fuse(moved).items()}

    return fuse


def make_fuser(method: str, checkpoint: str | None = None, fused_dir: str | None = None,
               device: str = "cpu") -> Fuser:
    if method in ("avg", "max"):
        return baseline_fuser(method)
    if method == "folder":
        if not fused_dir:
            raise ValueError("method=folder needs fused_dir=<folder of fused images named like the pairs>")
        return folder_fuser(fused_dir)
    if method == "checkpoint":
        if not checkpoint:
            raise ValueError("method=checkpoint needs checkpoint=<path to a .ckpt written by train.py>")
        return checkpoint_fuser(checkpoint, device)
    raise ValueError(f"unknown evaluation method {method!r}; use one of {METHODS}")


# --- batches ------------------------------------------------------------------------------------------------
def iterate_batches(pairs: PairSource, masks: MaskSource, perturb: dict[str, Any] | None = None,
                    count: int | None = None):
    """Pairs as batches of one in the project's batch format (full image, masks attached), built by the
    training loop's own dataset so that evaluate.py and the test step see identical inputs."""
    from sgdfuse.data.dataset import PairDataset, collate_pairs

    dataset = PairDataset(pairs, masks, perturb=perturb)
    for index in range(len(dataset) if count is None else count):
        yield collate_pairs([dataset[index]])


# --- the run ------------------------------------------------------------------------------------------------
def evaluate(
    pairs: PairSource | dict[str, PairSource | None],
    fuser: Fuser,
    output_dir: str | os.PathLike,
    masks: MaskSource | None = None,
    perturb: dict[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    convention: str = "cddfuse",
    write_fused: bool = True,
    grid_pairs: int = 4,
    max_pairs: int | None = None,
    name: str = "test",
) -> dict[str, dict[str, Any]]:
    """Fuse and score every pair of every set; write per-set PNGs, CSV, Markdown, grid and the summary.

    ``pairs``: one source (called ``name``) or a dict of named sets. Returns ``{set: {"n_images",
    "final": means, ...}}`` as in ``metrics.json`` (:mod:`sgdfuse.orchestration.results`).
    """
    sets = named_test_sets(pairs, name)
    masks = masks if masks is not None else NoMasks()
    for source in sets.values():
        source.validate()  # sizes and headers of every pair of every set before any work
    out = Path(output_dir)
    results: dict[str, dict[str, Any]] = {}
    writer = None
    for set_name, source in sets.items():
        masks.prepare(source, f"test/{set_name}")
        count = len(source) if max_pairs is None else min(len(source), int(max_pairs))
        if count == 0:
            raise DataError(f"the test set {set_name!r} ({source!r}) has no pairs to evaluate")
        writer = SetResults(out / set_name, set_name, metrics, convention, write_images=write_fused,
                            grid_pairs=grid_pairs, show_masks=masks.enabled)
        for batch in tqdm(iterate_batches(source, masks, perturb, count), total=count,
                          desc=f"evaluate {set_name}", unit="pair"):
            writer.add(batch, fuser(batch))
        results[set_name] = writer.finish()
    write_summary(out, results, convention, writer.metric_names)
    return results


def evaluate_from_config(cfg: Any, output_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``evaluate.py``: build the test sets, masks and method from the composed config and run."""
    from hydra.utils import instantiate

    if cfg.data.get("test") is None:
        raise DataError("the data config has no test split (data.test is null); pick a dataset with one, "
                        "e.g. data=folder data.root=/path/with/ir_and_vi")
    pairs = instantiate(cfg.data.test, _convert_="all")
    masks = instantiate(cfg.masks.source) if cfg.get("masks") else NoMasks()
    perturb_cfg = cfg.masks.get("perturb") if cfg.get("masks") else None
    perturb = None
    if perturb_cfg and perturb_cfg.get("mode") and "test" in perturb_cfg.get("apply_to", ["test"]):
        perturb = {"mode": perturb_cfg.mode, "kernel_size": int(perturb_cfg.kernel_size)}
    fuser = make_fuser(cfg.method, cfg.get("checkpoint"), cfg.get("fused_dir"), cfg.get("device", "cpu"))
    metric_names = list(cfg.metrics) if cfg.get("metrics") else None
    return evaluate(pairs, fuser, output_dir, masks=masks, perturb=perturb, metrics=metric_names,
                    convention=cfg.convention, write_fused=cfg.method != "folder",
                    grid_pairs=int(cfg.grid_pairs), max_pairs=cfg.get("max_pairs"),
                    name=str(cfg.data.get("name") or "test"))


def fuse_folder(pairs: PairSource, checkpoint: str | os.PathLike, output_dir: str | os.PathLike,
                masks: MaskSource | None = None, device: str = "cpu") -> list[Path]:
    """``fuse.py``: the final image of every pair as ``<output_dir>/<name>.png`` (RGB, VIS colour)."""
    fuser = checkpoint_fuser(checkpoint, device)
    masks = masks if masks is not None else NoMasks()
    pairs.validate()
    masks.prepare(pairs, "fuse")
    out, written = Path(output_dir), []
    for batch in tqdm(iterate_batches(pairs, masks), total=len(pairs), desc="fuse", unit="pair"):
        final = fuser(batch)["final"][0].permute(1, 2, 0).numpy()
        written.append(write_png_atomic(out / f"{Path(batch['name'][0]).stem}.png", final))
    return written
