"""Score fused images: ``python evaluate.py data.root=DATASET method=avg|max|folder|checkpoint``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from sgdfuse.orchestration.config_schema import EvaluateConfig, check_config
    from sgdfuse.orchestration.cpu import configure_from_config
    from sgdfuse.orchestration.evaluation import evaluate_from_config  # after Hydra parsed the command line

    check_config(cfg, EvaluateConfig)  # wrong types and bool-like strings fail before anything is written
    configure_from_config(cfg)  # torch threads per process (logged), allocator
    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    results = evaluate_from_config(cfg, output_dir)
    if cfg.wandb.enabled:
        from omegaconf import OmegaConf

        from sgdfuse.orchestration.wandb_utils import log_evaluation

        log_evaluation(OmegaConf.to_container(cfg.wandb), OmegaConf.to_container(cfg, resolve=True), results,
                       output_dir)
    print(f"results in {output_dir}")
    for name, result in results.items():
        for output in (o for o in result if o != "n_images"):
            means = "  ".join(f"{k}={v:.4f}" for k, v in result[output].items())
            print(f"{name} [{output}, {result['n_images']} images]  {means}")


if __name__ == "__main__":
    main()
