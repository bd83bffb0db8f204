"""Lightning wrappers of the SGDFuse stages."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from lightning_modules.base import CLASS_KEY, FusionModule


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` with ``weights_only=True`` and errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Train the stage first or fix the path.")
    try:
        # mmap: checking a paper-sized checkpoint (weights + Adam state) does not read it all into memory
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, pickle of a non-allowed type, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}); it is corrupt or not an "
                              "sgdfuse checkpoint. Delete it to retrain, or pass another file.") from err


def load_fusion_model(path: str | Path, map_location: str | torch.device = "cpu") -> FusionModule:
    """Rebuild whichever stage wrote ``path`` (its class is recorded in the checkpoint), in eval mode."""
    checkpoint = read_checkpoint(path)
    class_path = checkpoint.get(CLASS_KEY)
    if not class_path:
        raise CheckpointError(f"{path} records no sgdfuse module class (key {CLASS_KEY!r}); "
                              "it was not written by sgdfuse's train.py.")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()


__all__ = ["CheckpointError", "FusionModule", "load_fusion_model", "read_checkpoint"]
