"""Train SGDFuse: ``python train.py +experiment=full`` (see README and configs/)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # imported after Hydra parsed the command line: `--help` stays fast
    from sgdfuse.orchestration.cpu import configure_from_config
    from sgdfuse.orchestration.pipeline import run

    configure_from_config(cfg)  # torch threads per process (logged), allocator
    run(cfg)


if __name__ == "__main__":
    main()
