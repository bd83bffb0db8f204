"""Released models: a trained run's final checkpoint stripped to what inference needs.

A release keeps the weights, the hyperparameters that rebuild the model, the class that wrote it and
the sgdfuse version; optimiser state, loop state and callback state are dropped (they are most of a
training checkpoint). It loads with ``torch.load(..., weights_only=True)`` and with
:func:`lightning_modules.load_fusion_model`, like any checkpoint of ``train.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sgdfuse import __version__
from sgdfuse.atomic import atomic_write

#: Bump when the layout of a release changes.
RELEASE_FORMAT = 1
_KEPT = ("state_dict", "hyper_parameters", "sgdfuse_class", "pytorch-lightning_version")


def export_release(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the inference part of ``checkpoint_path`` to ``out_path`` (atomically); returns the path."""
    from lightning_modules import CheckpointError, read_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)
    missing = [k for k in ("state_dict", "hyper_parameters", "sgdfuse_class") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{checkpoint_path} lacks {missing}: pass a last.ckpt written by train.py")
    release: dict[str, Any] = {k: checkpoint[k] for k in _KEPT if k in checkpoint}
    release["state_dict"] = {k: v.clone() for k, v in checkpoint["state_dict"].items()}  # off the mmap
    hparams = dict(release["hyper_parameters"])
    if hparams.get("stage1_net") is not None:  # Stage I is inside: the run folder's path means nothing
        hparams["stage1_ckpt"] = None
    release["hyper_parameters"] = hparams
    release.update(sgdfuse_version=__version__, sgdfuse_release=RELEASE_FORMAT)
    return atomic_write(out_path, lambda f: torch.save(release, f))
