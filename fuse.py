"""Fuse your own pairs: ``python fuse.py input=FOLDER output=FOLDER [checkpoint=...]`` (configs/fuse.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="fuse")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from sgdfuse.data.folder import FolderPairs
    from sgdfuse.orchestration.evaluation import fuse_folder  # after Hydra parsed the command line

    pairs = FolderPairs(cfg.input, cfg.ir_dir, cfg.vis_dir)
    written = fuse_folder(pairs, cfg.checkpoint, cfg.output, instantiate(cfg.masks.source), cfg.device)
    print(f"{len(written)} fused images in {cfg.output}")


if __name__ == "__main__":
    main()
