#!/usr/bin/env bash
# The CPU-scale ablation study (README, "Ablation study on a CPU"): every experiment the sweeps cover, with
# 2 seeds, as Hydra multiruns on one machine, then the report. Under 2 hours on a 2-core CPU.
#   bash scripts/cpu_study.sh /data/RoadScene_train /data/ivif_test [SEEDS] [OUT]
# TRAIN: a folder of training pairs (<TRAIN>/{ir,vi}); TEST_ROOT: holds TNO/ (preset=cpu_study tests on
# TNO only); SEEDS: comma-separated (default 0,1); OUT: where runs and report go (default checkpoints/cpu_study).
# Rerunning resumes: finished stages of every run are skipped.
set -euo pipefail
train=${1:?usage: bash scripts/cpu_study.sh TRAIN TEST_ROOT [SEEDS] [OUT]}
test_root=${2:?usage: bash scripts/cpu_study.sh TRAIN TEST_ROOT [SEEDS] [OUT]}
seeds=${3:-0,1}
out=${4:-checkpoints/cpu_study}
common=(preset=cpu_study "data.root=$train" "data.test_root=$test_root" "paths.checkpoint_dir=$out" logger=csv)

# 1. Every trained row (full first: the test-time rows below score its checkpoints).
python train.py -m "${common[@]}" \
  +experiment=full,paper,ablate_cfc,ablate_sam,ablate_diffusion,ablate_hfah,ablate_residual,single_stage,stage1_only \
  "seed=$seeds" 'run_id=s${seed}'
# 2. Test-time mask ablations: the `full` run of the same seed with its test masks eroded / dilated by k.
python train.py -m "${common[@]}" +experiment=mask_erode,mask_dilate masks.perturb.kernel_size=3,5,7,9 \
  "seed=$seeds" 'run_id=s${seed}-k${masks.perturb.kernel_size}'
# 3. Tables and plots (report.md / .tex / .csv, TNO_ablation.png, TNO_robustness.png).
python report.py "local.dirs=[$out]" "output_dir=$out/report"
