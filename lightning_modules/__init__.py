"""Lightning wrappers of the SGDFuse stages."""

from __future__ import annotations

import importlib
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from lightning_modules.base import CLASS_KEY, FusionModule


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path, verify: bool = True) -> dict:
    """``torch.load`` with ``weights_only=True`` and errors that name the file.

    ``verify``: also check the CRC-32 of every member of torch's zip format and that every weight is
    finite. ``torch.load`` memory-maps the tensors without reading them, so flipped bytes inside a tensor
    (bit rot, a bad copy) would otherwise load as garbage or NaN without any error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Train the stage first or fix the path.")
    if verify:
        _check_crc(path)
    try:
        # mmap: checking a paper-sized checkpoint (weights + Adam state) does not read it all into memory
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, pickle of a non-allowed type, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}): it is corrupt or not an sgdfuse "
                              "checkpoint; pass another file (e.g. an earlier step*.ckpt of the same "
                              "stage).") from err
    if verify:
        bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            raise CheckpointError(f"checkpoint {path} holds non-finite weights ({', '.join(bad[:4])}"
                                  f"{', ...' if len(bad) > 4 else ''}): the training had diverged; pass "
                                  "another file (e.g. an earlier step*.ckpt of the same stage).")
    return checkpoint


def _check_crc(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and compares its CRC-32
    except zipfile.BadZipFile:
        return  # truncated, or torch's legacy (non-zip) format: torch.load reports the former
    except (OSError, EOFError, zlib.error) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}): it is corrupt; pass another "
                              "file (e.g. an earlier step*.ckpt of the same stage).") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: the CRC-32 of its member {bad!r} does not "
                              "match (bit rot or an incomplete copy); pass another file (e.g. an earlier "
                              "step*.ckpt of the same stage).")


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or inf (one sync per device)."""
    by_device: dict[torch.device, list[str]] = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            by_device.setdefault(value.device, []).append(key)
    bad = []
    for names in by_device.values():  # one stacked flag tensor and one transfer per device
        finite = torch.stack([torch.isfinite(state_dict[k]).all() for k in names]).cpu().tolist()
        bad += [k for k, ok in zip(names, finite, strict=True) if not ok]
    return bad


def load_fusion_model(path: str | Path, map_location: str | torch.device = "cpu") -> FusionModule:
    """Rebuild whichever stage wrote ``path`` (its class is recorded in the checkpoint), in eval mode."""
    checkpoint = read_checkpoint(path)
    class_path = checkpoint.get(CLASS_KEY)
    if not class_path:
        raise CheckpointError(f"{path} records no sgdfuse module class (key {CLASS_KEY!r}); "
                              "it was not written by sgdfuse's train.py.")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except (ImportError, AttributeError, TypeError, KeyError, RuntimeError, ValueError) as err:
        from sgdfuse import __version__

        written = checkpoint.get("sgdfuse_version", "an unrecorded version")
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise CheckpointError(f"{path} does not fit this code's {class_path} ({detail}). It was written by "
                              f"sgdfuse {written}; this is sgdfuse {__version__}: use the code version "
                              "that wrote it, or a checkpoint made with this one.") from err
    return model.eval()


__all__ = ["CheckpointError", "FusionModule", "load_fusion_model", "nonfinite_tensors", "read_checkpoint"]
