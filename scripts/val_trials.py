"""Choose settings on the validation split (sgdfuse/orchestration/val_trials.py).

    python scripts/val_trials.py --run checkpoints/full/<run_id> --out outputs/val_trials \\
        --trial "run=" --trial "grad3=model.stage2.loss.w_grad=3" \\
        preset=cpu_real +experiment=full data.root=/data/RoadScene_train data.test_root=/data/ivif_test

The trailing overrides are the ones the run was trained with; each ``--trial NAME=OVERRIDES`` retrains phase
b on the run's Stage I and phase a with OVERRIDES added, and scores the val split. Writes
``<out>/<NAME>/stage2_b/`` and ``<out>/trials.csv|md`` (final − Stage I per metric, count at least Stage I).
With ``--stage stage1`` each trial retrains Stage I instead (``<out>/<NAME>/stage1/``) and its Stage-I
image is compared with the run's own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PROJECT_ROOT", str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path,
                        help="a finished run folder (stage1/, and stage2_a/ for phase-b trials)")
    parser.add_argument("--out", required=True, type=Path, help="where trials and tables go")
    parser.add_argument("--trial", action="append", required=True, help="NAME=OVERRIDES (space-separated)")
    parser.add_argument("--stage", choices=("stage2_b", "stage1"), default="stage2_b",
                        help="what each trial retrains: phase b (default) or Stage I")
    parser.add_argument("overrides", nargs="*", help="the run's own train.py overrides")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig

    from sgdfuse.orchestration.cpu import configure_from_config
    from sgdfuse.orchestration.pipeline import validate
    from sgdfuse.orchestration.val_trials import (
        Trial,
        at_least_stage1,
        judged_metrics,
        run_stage1_scores,
        run_trial,
        write_tables,
    )

    def config(overrides: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        validate(cfg)  # types and keys, as train.py checks them
        configure_from_config(cfg)
        return cfg

    trials = [Trial.parse(spec) for spec in args.trial]
    reference = run_stage1_scores(config(args.overrides), args.run) if args.stage == "stage1" else None
    rows = []
    for trial in trials:
        cfg = config([*args.overrides, *trial.overrides])
        scores = run_trial(cfg, args.run, args.stage, args.out / trial.name, reference)
        rows.append({"trial": trial.name, "overrides": trial.overrides, "scores": scores,
                     "wins": at_least_stage1(scores)})
        print(f"{trial.name}: at least the run's Stage I on {len(rows[-1]['wins'])}/"
              f"{len(judged_metrics(scores['final']))} "
              f"({', '.join(rows[-1]['wins'])})", flush=True)
        write_tables(rows, args.out, args.stage)  # after every trial: a long list can be read while it runs
    print((args.out / "trials.md").read_text())


if __name__ == "__main__":
    main()
