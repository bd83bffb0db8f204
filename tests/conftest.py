"""Shared fixtures: config composition, the real IR/VIS folder, tiny batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
os.environ.setdefault("PROJECT_ROOT", str(REPO))
torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_data_root(env: str, name: str, required: tuple[str, ...]) -> Path | None:
    """``$env`` or ``<repo>/../shared/data/<name>``, the first holding every folder of ``required``."""
    for c in (os.environ.get(env), REPO.parent / "shared" / "data" / name):
        if c and all((Path(c) / sub).is_dir() for sub in required):
            return Path(c)
    return None


def real_data_root() -> Path | None:
    """``$SGDFUSE_REAL_DATA`` or ``<repo>/../shared/data/ivif_real`` (TNO + RoadScene), if present."""
    return shared_data_root("SGDFUSE_REAL_DATA", "ivif_real", ("TNO",))


@pytest.fixture
def real_data() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real IR/VIS pairs not found: set SGDFUSE_REAL_DATA to the ivif_real folder "
                    "(holding TNO/ and RoadScene/) or place it at ../shared/data/ivif_real")
    return root


def compose_train(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose a config as ``train.py`` would (Hydra resolvers included, no run)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def make_batch(b: int = 2, h: int = 32, w: int = 40, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ir = torch.rand(b, 1, h, w, generator=g)
    vis = torch.rand(b, 3, h, w, generator=g)
    masks = (torch.rand(b, 2, h, w, generator=g) > 0.7).float()
    return {"ir": ir, "vis": vis, "mask_ir": masks[:, :1], "mask_vis": masks[:, 1:],
            "name": [f"p{i}.png" for i in range(b)]}


#: A Stage-II model small enough for a few CPU steps in tests (attention still at the lowest level).
TINY_STAGE2 = [
    "model.stage2.unet.block_out_channels=[8,16]", "model.stage2.unet.norm_num_groups=4",
    "model.stage2.unet.attention_head_dim=4", "model.head_widths.level_channels=8",
    "model.head_widths.hidden_channels=[8,8]",
]


#: Keyword arguments of tiny Stage-I / Stage-II modules for direct construction in tests.
TINY_STAGE1_NET = {"channels": 8, "num_stages": 1, "num_heads": 2}
TINY_STAGE2_ARGS = {
    "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "dropout": 0.0, "attention_head_dim": 8,
             "norm_num_groups": 4},
    "head": {"_target_": "sgdfuse.models.stage2.hfah.HFAH", "level_channels": 8, "hidden_channels": [8, 8],
             "ratio": 4},
    "masks": True,
    "feature_timesteps": [5, 50],
}
#: A quiet CPU Trainer for unit tests.
NO_LOG = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without run ids that would make a child resume another run."""
    env = {k: v for k, v in os.environ.items() if k not in ("SGDFUSE_RUN_ID", "WANDB_RUN_ID")}
    return {**env, **extra}


def run_script(script: str, *args: str, env: dict[str, str] | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args...`` from the repository root, output captured."""
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env if env is not None else clean_env())
