#!/usr/bin/env bash
# The CPU-scale ablation study (README, "Ablation study on a CPU"): every experiment the sweeps cover, with
# 2 seeds, as Hydra multiruns on one machine, then the report (README states the measured time).
# From the repository root:
#   bash scripts/cpu_study.sh TRAIN TEST_ROOT [OVERRIDE ...]
#   SEEDS=0,1,2 OUT=checkpoints/my_study bash scripts/cpu_study.sh /data/RoadScene_train /data/ivif_test
# TRAIN holds ir/ and vi/; TEST_ROOT holds TNO/ (preset=cpu_study tests on TNO only). Extra Hydra overrides
# go to every run (e.g. debug=fast for a smoke run). Rerunning resumes: finished training stages are
# skipped; the test stage of every run is run again (earlier results are kept as test.<time>/).
#
# Stage I is trained once per seed and Stage-I config and shared: `stage1_only` trains the Stage I of
# `full` (CFC on) and `ablate_cfc` the one without CFC; the rows that differ from them only in Stage II
# build on those files (model.stage2.stage1_ckpt). Retraining it per row would repeat the same training
# (same seed, same config, same data) 12 more times and add about half to the study's time.
set -euo pipefail
usage="usage: [SEEDS=0,1] [OUT=checkpoints/cpu_study] bash scripts/cpu_study.sh TRAIN TEST_ROOT [OVERRIDE...]"
train=${1:?$usage}
test_root=${2:?$usage}
shift 2
seeds=${SEEDS:-0,1}
out=${OUT:-checkpoints/cpu_study}
common=(preset=cpu_study "data.root=$train" "data.test_root=$test_root" "paths.checkpoint_dir=$out"
        logger=csv "$@")
stage1_of() { echo "model.stage2.stage1_ckpt=\${paths.checkpoint_dir}/$1/s\${seed}/stage1/last.ckpt"; }
masks() {  # the test-time mask rows of one mode
  python train.py -m "${common[@]}" threads=1 "+experiment=mask_$1" masks.perturb.kernel_size=3,5,7,9 \
    "seed=$seeds" 'run_id=s${seed}-k${masks.perturb.kernel_size}' "$(stage1_of stage1_only)"
}

# 1. The two Stage I's per seed (stage1_only is also a row), and the row without Stage I.
python train.py -m "${common[@]}" +experiment=stage1_only,ablate_cfc,single_stage "seed=$seeds" \
  'run_id=s${seed}'
# 2. Rows that differ only in Stage II, on the shared Stage I of the same seed, then (3.) the test-time
#    mask rows: the `full` run of the same seed with its test masks eroded / dilated by k (the same
#    stage1_ckpt as `full`'s, so that the model config matches the run they score). Two multiruns side by
#    side with one torch thread each: on 2 cores that beats one process with two threads. The experiment is
#    the outer loop, so both `full` runs are done long before the second multirun reaches the masks.
stage2_rows() {  # EXPERIMENTS STAGE1_OF
  python train.py -m "${common[@]}" threads=1 "+experiment=$1" "seed=$seeds" 'run_id=s${seed}' \
    'stages=[stage2,test]' "$(stage1_of "$2")"
}
{ stage2_rows full,ablate_sam,ablate_diffusion stage1_only && masks erode; } &
{ stage2_rows ablate_hfah,ablate_residual stage1_only && stage2_rows paper ablate_cfc && masks dilate; } &
wait -n && wait -n  # both, failing if either fails
# 4. Tables and plots: report.md / .tex / .csv and TNO_ablation.png, TNO_robustness.png.
python report.py "local.dirs=[$out]" "output_dir=$out/report"
