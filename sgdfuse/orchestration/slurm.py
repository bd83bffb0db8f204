"""Keep a requeued SLURM job on the same run.

Preemption and time limits are handled by Lightning alone (``#SBATCH --signal=SIGUSR1@120``: it saves an
HPC checkpoint and calls ``scontrol requeue``). A requeued job restarts its batch script from the top, where
a new ``wandb agent`` would start a *different* sweep run. So the running program records, on global rank
0, the command and the run's identity in ``<repo>/.slurm/<SLURM_JOB_ID>.env``; ``slurm/sweep_agent.sbatch``
sources that file when ``SLURM_RESTART_COUNT > 0`` and re-executes the same command: same W&B run id, same
``checkpoints/<experiment>/<run_id>/``, and the pipeline resumes the unfinished stage.

The file is bash: ``export NAME=VALUE`` lines and the array ``SGDFUSE_REQUEUE_ARGV=(program.py args...)``.
Nothing is written under submitit (``SUBMITIT_EXECUTOR`` set: submitit requeues its own pickled job) nor for
a Hydra multirun command line (``-m``).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

from sgdfuse.atomic import atomic_write_text
from sgdfuse.orchestration.distributed import is_global_rank_zero

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEUE_DIR = ".slurm"
#: Environment recorded besides every ``SGDFUSE_*`` variable: what makes W&B attach to the same sweep run.
#: Deliberately an allow-list: never the API key, and not WANDB_SERVICE (the dead agent's service socket).
WANDB_VARS = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_DIR", "WANDB_PROJECT",
              "WANDB_ENTITY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_RUN_GROUP")
ARGV_VAR = "SGDFUSE_REQUEUE_ARGV"


def requeue_file(job_id: str, root: Path | None = None) -> Path:
    """``<root>/.slurm/<job_id>.env``; root defaults to ``$PROJECT_ROOT``, else this repository."""
    root = Path(root or os.environ.get("PROJECT_ROOT") or REPO_ROOT)
    return root / REQUEUE_DIR / f"{job_id}.env"


def recorded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables written to the requeue file: ``SGDFUSE_*`` and :data:`WANDB_VARS` that are set."""
    names = sorted(n for n in env if n.startswith("SGDFUSE_") and n != ARGV_VAR)
    names += [n for n in WANDB_VARS if n in env]
    return {n: env[n] for n in names}


def record_requeue_command(argv: list[str], root: Path | None = None) -> Path | None:
    """Write the requeue file of this SLURM job (global rank 0 only); returns its path, None elsewhere.

    Call with ``sys.argv`` once the run id is exported (``SGDFUSE_RUN_ID``): the file must name the run.
    Written atomically (temp file in the same folder, then ``os.replace``), so a job killed mid-write
    leaves the previous file or none, never half of one.
    """
    env = os.environ
    job_id = env.get("SLURM_JOB_ID")
    if not job_id or env.get("SUBMITIT_EXECUTOR") or not is_global_rank_zero(env):
        return None
    if "-m" in argv or "--multirun" in argv:
        return None  # a Hydra multirun is many runs: there is no single one to resume
    if not argv:
        raise ValueError("record_requeue_command: argv is empty; pass sys.argv (program first).")
    path = requeue_file(job_id, root)
    lines = [f"# Written by sgdfuse.orchestration.slurm.record_requeue_command for SLURM job {job_id} at "
             f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}.",
             "# Sourced by slurm/sweep_agent.sbatch after a requeue to resume this run (not a new one)."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in recorded_env(env).items()]
    lines.append(f"{ARGV_VAR}=({' '.join(shlex.quote(a) for a in argv)})")
    return atomic_write_text(path, "\n".join(lines) + "\n")
