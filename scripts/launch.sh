#!/usr/bin/env bash
# Run a sgdfuse program with one process per SLURM task (DDP) inside a SLURM job, or directly elsewhere.
#
#   scripts/launch.sh [PROGRAM.py] [HYDRA_OVERRIDES...]
#
# PROGRAM defaults to train.py (any first argument ending in .py selects it, e.g. evaluate.py); it is looked
# up in the current directory, then in the repository. The W&B sweeps call it as
# `scripts/launch.sh ${program} ${args_no_hyphens}`, so one sweep file serves a workstation and SLURM.
#
# srun or not (SGDFUSE_SRUN: 1 = always, 0 = never, auto = default):
#   auto → srun when inside a SLURM allocation (SLURM_JOB_ID) with more than one task and not already inside
#   a job step (SLURM_STEP_ID unset: no nested srun). slurm/sweep_agent.sbatch sets SGDFUSE_SRUN=1 so that
#   a one-GPU job also runs as a job step: `#SBATCH --signal` (without B:) reaches job steps only, and
#   Lightning needs that SIGUSR1 to save its HPC checkpoint and requeue.
# Under srun every task runs the program; Lightning's SLURMEnvironment maps tasks to DDP ranks.
# Extra srun options: SGDFUSE_SRUN_ARGS (word-split); interpreter: PYTHON (default python).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
program=train.py
if [[ $# -gt 0 && $1 == *.py ]]; then
  program=$1
  shift
fi
if [[ ! -f $program && -f $repo/$program ]]; then
  program=$repo/$program
fi
if [[ ! -f $program ]]; then
  echo "launch.sh: program '$program' not found in $PWD or $repo" >&2
  exit 2
fi

python=${PYTHON:-python}
use_srun=${SGDFUSE_SRUN:-auto}
if [[ $use_srun == auto ]]; then
  use_srun=0
  if [[ -n ${SLURM_JOB_ID:-} && -z ${SLURM_STEP_ID:-} && ${SLURM_NTASKS:-1} -gt 1 ]]; then
    use_srun=1
  fi
fi

if [[ $use_srun == 1 ]]; then
  # shellcheck disable=SC2086  # SGDFUSE_SRUN_ARGS is a list of options
  exec srun --kill-on-bad-exit=1 ${SGDFUSE_SRUN_ARGS:-} "$python" "$program" "$@"
fi
exec "$python" "$program" "$@"
