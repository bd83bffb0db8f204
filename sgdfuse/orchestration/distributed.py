"""Rank checks usable before a Trainer (and its process group) exists."""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Set by srun (SLURM_PROCID), torchrun (RANK, GROUP_RANK) or Lightning's launcher (LOCAL_RANK, NODE_RANK).
_RANK_VARS = ("SLURM_PROCID", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def is_global_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """True in the one process of a (possibly not yet started) distributed job that writes shared files."""
    env = os.environ if env is None else env
    return all(env.get(var, "0") == "0" for var in _RANK_VARS)
