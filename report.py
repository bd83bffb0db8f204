"""Ablation tables and plots from finished runs: ``python report.py`` (see README, Ablation report)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="report")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from sgdfuse.orchestration.report import report_from_config  # after Hydra parsed the command line

    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    _, files = report_from_config(cfg, output_dir)
    print(files["markdown"].read_text())
    print(f"report in {output_dir}")


if __name__ == "__main__":
    main()
