"""W&B sweep files, their local expansion into Hydra overrides, the SLURM launch path, the submitit launcher.

No W&B server and no SLURM cluster: the schema and grid come from W&B's own ``sweeps`` package, ``wandb``,
``srun`` and ``sbatch`` are small fakes on PATH where a shell script calls them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sgdfuse.orchestration import slurm
from sgdfuse.orchestration.sweeps import (
    CONFIG_DIR,
    SweepError,
    agent_command,
    check_sweep,
    grid,
    hydra_overrides,
    load_sweep,
    main,
)

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = REPO / "sweeps"
EXPERIMENTS = ["paper", "full", "ablate_sam", "ablate_cfc", "mask_erode", "mask_dilate", "ablate_diffusion",
               "ablate_hfah", "ablate_residual", "single_stage"]
ALL_SWEEPS = [*EXPERIMENTS, "mask_robustness"]
TRAIN_DEFAULTS = OmegaConf.load(CONFIG_DIR / "train.yaml")
STAGE2_DEFAULTS = OmegaConf.load(CONFIG_DIR / "model" / "stage2" / "default.yaml")


def _sweep_file(name: str) -> Path:
    path = SWEEP_DIR / f"{name}.yaml"
    assert path.is_file(), f"missing sweep file {path}"
    return path


class _Checked(dict):
    """Sweep name → its grid points, each expanded and composed once (~0.05 s per point) on first use."""

    def __missing__(self, name: str) -> list:
        self[name] = check_sweep(_sweep_file(name))
        return self[name]


@pytest.fixture(scope="module")
def checked() -> _Checked:
    return _Checked()


@pytest.mark.parametrize("name", ALL_SWEEPS)
def test_sweep_file_is_a_valid_wandb_sweep(name):
    sweep = load_sweep(_sweep_file(name))  # raises on any schema violation
    assert sweep["method"] == "grid"
    assert sweep["metric"] == {"name": "test/synthetic/Qabf", "goal": "maximize"}
    assert sweep["command"][0] == "${env}" and "${args_no_hyphens}" in sweep["command"]
    launch = sweep["command"].index("scripts/launch.sh")
    assert sweep["command"][launch - 1:launch + 2] == ["bash", "scripts/launch.sh", "${program}"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_training_sweeps_select_their_experiment_on_ddp_with_wandb_and_seeds(name, checked):
    sweep = load_sweep(_sweep_file(name))
    assert sweep["program"] == "train.py"
    assert sweep["parameters"]["seed"]["values"] == [0, 1, 2]
    kernels = [3, 5, 7, 9] if name.startswith("mask_") else None
    if kernels:
        assert sweep["parameters"]["masks.perturb.kernel_size"]["values"] == kernels
    points = checked[name]
    assert len(points) == 3 * (len(kernels) if kernels else 1)
    assert {p.params["seed"] for p in points} == {0, 1, 2}
    for point in points:
        assert point.overrides[:5] == [f"+experiment={name}", "logger=wandb", "trainer=ddp", "~preset",
                                       "~debug"]
        cfg = point.config
        assert cfg.experiment_name == name
        assert cfg.seed == point.params["seed"]
        assert cfg.hydra.runtime.choices.logger == "wandb" and cfg.hydra.runtime.choices.trainer == "ddp"
        assert "wandb" in cfg.logger and cfg.trainer.strategy == "ddp"
        if kernels:
            assert cfg.masks.perturb.kernel_size == point.params["masks.perturb.kernel_size"]
            assert cfg.masks.perturb.mode == name.removeprefix("mask_")
            # test-time ablations: evaluations of the `full` run of the same seed, no training
            assert list(cfg.stages) == ["test"] and cfg.source_experiment == "full"


@pytest.mark.parametrize("name", ALL_SWEEPS)
def test_no_sweep_uses_the_cpu_preset_or_debug_and_all_are_paper_sized(name, checked):
    trains = load_sweep(_sweep_file(name))["program"] == "train.py"
    for point in checked[name]:
        assert not any(o.split("=")[0].lstrip("+~") in ("preset", "debug") and not o.startswith("~")
                       for o in point.overrides), point.overrides
        cfg = point.config
        choices = cfg.hydra.runtime.choices
        assert choices.get("preset") is None and choices.get("debug") is None
        if not trains:
            continue  # evaluate.py: the model's size is the checkpoint's
        assert cfg.model.stage1.net.channels == 32
        assert cfg.data.batch_size == 24 and cfg.data.crop_size == 160
        assert list(cfg.model.stage2.unet.block_out_channels) == list(STAGE2_DEFAULTS.unet.block_out_channels)
        for stage, steps in TRAIN_DEFAULTS.steps.items():
            assert cfg.steps[stage] == steps, f"steps.{stage}"


def test_ablate_cfc_seed_0_runs_the_exact_agent_command():
    sweep = load_sweep(_sweep_file("ablate_cfc"))
    assert grid(sweep) == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    command, program_index = agent_command(sweep, {"seed": 0})
    assert command == ["/usr/bin/env", "bash", "scripts/launch.sh", "train.py", "+experiment=ablate_cfc",
                       "logger=wandb", "trainer=ddp", "~preset", "~debug", "seed=0"]
    assert program_index == 3
    assert hydra_overrides(sweep, {"seed": 0}) == command[4:]


def test_ablate_cfc_composes_without_cfc(checked):
    assert all(p.config.model.stage1.net.use_cfc is False for p in checked["ablate_cfc"])
    assert all(p.config.model.stage1.net.use_cfc is True for p in checked["full"])


def test_mask_robustness_scores_the_full_run_of_each_seed_under_eroded_and_dilated_masks(checked):
    sweep = load_sweep(_sweep_file("mask_robustness"))
    assert sweep["program"] == "train.py"
    params = sweep["parameters"]
    assert params["masks.perturb.mode"]["values"] == ["erode", "dilate"]
    assert params["masks.perturb.kernel_size"]["values"] == [3, 5, 7, 9]
    assert params["seed"]["values"] == [0, 1, 2]
    points = checked["mask_robustness"]
    assert len(points) == 24
    grid_points = {(p.config.masks.perturb.mode, p.config.masks.perturb.kernel_size, p.config.seed)
                   for p in points}
    assert grid_points == {(m, k, s) for m in ("erode", "dilate") for k in (3, 5, 7, 9) for s in (0, 1, 2)}
    for point in points:
        cfg = point.config
        assert point.overrides[:5] == ["+experiment=mask_robustness", "logger=wandb", "trainer=ddp",
                                       "~preset", "~debug"]
        assert list(cfg.stages) == ["test"] and cfg.source_experiment == "full"
        # runs land beside the mask_erode / mask_dilate sweeps' runs, with the same config
        assert cfg.experiment_name == f"mask_{cfg.masks.perturb.mode}"


def test_mask_sweeps_and_the_robustness_sweep_give_identical_runs(checked):
    def key(point):
        cfg = OmegaConf.to_container(point.config, resolve=False)
        cfg.pop("hydra")
        cfg["experiment_name"] = f"mask_{point.config.masks.perturb.mode}"
        return json.dumps(cfg, sort_keys=True, default=str)

    separate = {key(p) for name in ("mask_erode", "mask_dilate") for p in checked[name]}
    assert {key(p) for p in checked["mask_robustness"]} == separate


@pytest.mark.parametrize(("name", "expect"), [
    ("ablate_cfc", ["experiment_name: ablate_cfc", "seed: 0", "  batch_size: 24", "      use_cfc: false"]),
    ("mask_robustness", ["experiment_name: mask_erode", "source_experiment: full", "- test",
                         "    mode: erode", "    kernel_size: 3",
                         "  run_dir: {root}/checkpoints/mask_erode/None"]),
])
def test_the_programs_own_command_line_accepts_the_agent_arguments(name, expect):
    """The real train.py / evaluate.py parse the exact argv the agent passes (``--cfg job`` does not run)."""
    sweep = load_sweep(_sweep_file(name))
    command, program_index = agent_command(sweep, grid(sweep)[0])
    env = {**os.environ, "WANDB_RUN_ID": "run7", "PROJECT_ROOT": str(REPO)}
    out = subprocess.run([sys.executable, *command[program_index:], "--cfg", "job", "--resolve"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for line in expect:
        assert line.format(root=REPO) in lines, line


def _write_sweep(tmp_path: Path, parameters: dict) -> Path:
    sweep = yaml.safe_load(_sweep_file("ablate_cfc").read_text())
    sweep["parameters"] = parameters
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_a_parameter_that_is_not_a_config_key_is_rejected_by_name(tmp_path, capsys):
    path = _write_sweep(tmp_path, {"seed": {"values": [0, 1]}, "model.stage1.net.chanels": {"values": [32]}})
    with pytest.raises(SweepError) as err:
        check_sweep(path)
    message = str(err.value)
    assert str(path) in message and "model.stage1.net.chanels" in message
    assert "`seed`" not in message  # only the bad parameter is blamed
    assert main([str(path)]) == 1
    assert "model.stage1.net.chanels" in capsys.readouterr().err


def test_schema_violations_and_non_grid_methods_are_rejected(tmp_path):
    path = _write_sweep(tmp_path, {"seed": {"values": [0], "distribution": "not_a_distribution"}})
    with pytest.raises(SweepError, match="not a valid W&B sweep config"):
        load_sweep(path)
    sweep = yaml.safe_load(_sweep_file("ablate_cfc").read_text())
    sweep["command"] = ["${env}", "python", "${program}"]
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SweepError, match="args_no_hyphens"):
        load_sweep(path)
    with pytest.raises(SweepError, match="only grid"):
        grid({**sweep, "method": "random"})


def test_cli_prints_every_command_and_exits_zero(capsys):
    assert main([str(_sweep_file("ablate_cfc"))]) == 0
    out = capsys.readouterr().out
    assert "3 run(s), all compose" in out
    assert out.count("scripts/launch.sh train.py +experiment=ablate_cfc") == 3


# --- SLURM: requeue file -------------------------------------------------------------------------------

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_PROCID", "RANK", "LOCAL_RANK", "SUBMITIT_EXECUTOR",
              "SLURM_RESTART_COUNT")


@pytest.fixture
def clean_env(monkeypatch):
    for var in (*SLURM_VARS, *slurm.WANDB_VARS, "SGDFUSE_RUN_ID", "WANDB_API_KEY", "WANDB_SERVICE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _source(path: Path) -> dict:
    """What the sbatch script gets from the file: bash sources it, Python reads back env and argv."""
    script = (f'source "{path}"; {sys.executable} -c "import json, os, sys; '
              f'print(json.dumps({{\\"env\\": dict(os.environ), \\"argv\\": sys.argv[1:]}}))" '
              f'"${{{slurm.ARGV_VAR}[@]}}"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={})
    return json.loads(out.stdout)


def test_requeue_file_holds_the_run_identity_and_exact_argv(tmp_path, clean_env):
    clean_env.setenv("SLURM_JOB_ID", "4242")
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SGDFUSE_RUN_ID", "abc123")
    clean_env.setenv("WANDB_RUN_ID", "abc123")
    clean_env.setenv("WANDB_SWEEP_ID", "sw42")
    clean_env.setenv("WANDB_SWEEP_PARAM_PATH", "wandb/sweep-sw42/config-abc123.yaml")
    clean_env.setenv("WANDB_API_KEY", "secret-key")
    clean_env.setenv("WANDB_SERVICE", "2-123-tcp-localhost-4444")
    argv = ["train.py", "+experiment=ablate_cfc", "~preset", "seed=0", "data.root=/data/my MSRS", "x='q'"]
    path = slurm.record_requeue_command(argv, root=tmp_path)
    assert path == tmp_path / ".slurm" / "4242.env"
    assert [p.name for p in path.parent.iterdir()] == ["4242.env"]  # no temp file left behind
    got = _source(path)
    assert got["argv"] == argv
    assert {k: got["env"].get(k) for k in ("SGDFUSE_RUN_ID", "WANDB_RUN_ID", "WANDB_SWEEP_ID",
                                           "WANDB_SWEEP_PARAM_PATH")} == {
        "SGDFUSE_RUN_ID": "abc123", "WANDB_RUN_ID": "abc123", "WANDB_SWEEP_ID": "sw42",
        "WANDB_SWEEP_PARAM_PATH": "wandb/sweep-sw42/config-abc123.yaml"}
    text = path.read_text()
    assert "secret-key" not in text and "WANDB_SERVICE" not in text


def test_requeue_file_is_replaced_atomically(tmp_path, clean_env):
    clean_env.setenv("SLURM_JOB_ID", "7")
    clean_env.setenv("SGDFUSE_RUN_ID", "old")
    path = slurm.record_requeue_command(["train.py", "seed=0"], root=tmp_path)
    clean_env.setenv("SGDFUSE_RUN_ID", "new")
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        # at the moment of the swap the target still holds the complete old file, the new one is whole
        calls.append((Path(src), Path(dst), Path(dst).read_text(), Path(src).read_text()))
        real_replace(src, dst)

    clean_env.setattr(slurm.os, "replace", spy)
    assert slurm.record_requeue_command(["train.py", "seed=0"], root=tmp_path) == path
    [(src, dst, before, written)] = calls
    assert dst == path and src.parent == path.parent and src != path
    assert "SGDFUSE_RUN_ID=old" in before and "SGDFUSE_RUN_ID=new" in written
    assert path.read_text() == written


@pytest.mark.parametrize("env", [
    {},  # not under SLURM
    {"SLURM_JOB_ID": "1", "SLURM_PROCID": "1"},  # another srun task
    {"SLURM_JOB_ID": "1", "LOCAL_RANK": "1"},  # a process Lightning started
    {"SLURM_JOB_ID": "1", "SUBMITIT_EXECUTOR": "slurm"},  # submitit requeues its own job
])
def test_requeue_file_is_only_written_by_global_rank_zero_of_a_slurm_job(tmp_path, clean_env, env):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert slurm.record_requeue_command(["train.py"], root=tmp_path) is None
    assert not (tmp_path / ".slurm").exists()


def test_requeue_file_is_not_written_for_a_hydra_multirun(tmp_path, clean_env):
    clean_env.setenv("SLURM_JOB_ID", "1")
    assert slurm.record_requeue_command(["train.py", "-m", "seed=0,1"], root=tmp_path) is None


# --- SLURM: sbatch script and launcher, with fake wandb / srun ------------------------------------------

FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$CALLS"
while [[ $1 == --* ]]; do shift; done  # srun's own options
exec "$@"
"""
# train.py stand-in: resolves the run id as the pipeline does, records the requeue command, reports itself
FAKE_TRAIN = """import json, os, sys
os.environ.setdefault("SGDFUSE_RUN_ID", os.environ.get("WANDB_RUN_ID", "fresh"))
from sgdfuse.orchestration.slurm import record_requeue_command
record_requeue_command(sys.argv)
with open(os.environ["CALLS"], "a") as f:
    f.write("train " + json.dumps({"argv": sys.argv, "run_id": os.environ["SGDFUSE_RUN_ID"],
                                   "sweep": os.environ.get("WANDB_SWEEP_ID")}) + "\\n")
"""


@pytest.fixture
def fake_cluster(tmp_path):
    """A copy of the launch scripts in a tmp 'repo', fake srun and wandb on PATH, a SLURM job environment."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "launch.sh", repo / "scripts" / "launch.sh")
    (repo / "train.py").write_text(FAKE_TRAIN)
    sweep = load_sweep(_sweep_file("ablate_cfc"))
    command, _ = agent_command(sweep, {"seed": 0})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `wandb agent --count 1 ID` stand-in: one run with a new W&B run id, the command the real agent builds
    fake_wandb = ("#!/bin/bash\necho \"wandb $*\" >> \"$CALLS\"\n"
                  "export WANDB_RUN_ID=run7 WANDB_SWEEP_ID=${@: -1}\n"
                  + "exec " + " ".join(f"'{c}'" for c in command) + "\n")
    for name, text in (("srun", FAKE_SRUN), ("wandb", fake_wandb)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "CALLS": str(calls),
           "PYTHON": sys.executable, "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
           "SLURM_SUBMIT_DIR": str(repo), "PROJECT_ROOT": str(repo)}
    return repo, env, calls, command


def _sbatch(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "slurm" / "sweep_agent.sbatch"), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _trains(calls: Path) -> list[dict]:
    return [json.loads(line[6:]) for line in calls.read_text().splitlines() if line.startswith("train ")]


def test_sbatch_script_parses_and_has_the_slurm_settings():
    script = (REPO / "slurm" / "sweep_agent.sbatch").read_text()
    subprocess.run(["bash", "-n", str(REPO / "slurm" / "sweep_agent.sbatch")], check=True)
    for line in ("#SBATCH --signal=SIGUSR1@120", "#SBATCH --requeue", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gres=gpu:4", "wandb agent --count 1", "SLURM_RESTART_COUNT"):
        assert line in script
    assert "trap" not in script  # Lightning's SIGUSR1 handling is the one requeue mechanism


def test_sbatch_first_start_runs_one_agent_and_a_requeue_resumes_the_same_command(fake_cluster):
    repo, env, calls, command = fake_cluster
    first = _sbatch(env, "me/sgdfuse/sw42")
    assert first.returncode == 0, first.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "wandb agent --count 1 me/sgdfuse/sw42"
    assert lines[1] == "srun --kill-on-bad-exit=1 " + " ".join([sys.executable, *command[3:]])
    [run] = _trains(calls)
    assert run == {"argv": command[3:], "run_id": "run7", "sweep": "me/sgdfuse/sw42"}
    assert (repo / ".slurm" / "4242.env").is_file()

    calls.write_text("")
    again = _sbatch({**env, "SLURM_RESTART_COUNT": "1"}, "me/sgdfuse/sw42")
    assert again.returncode == 0, again.stderr
    assert "resuming the run" in again.stdout
    assert not any(line.startswith("wandb") for line in calls.read_text().splitlines())  # no new agent
    assert _trains(calls) == [run]  # same program, same overrides, same run id and sweep


def test_sbatch_first_start_ignores_a_stale_requeue_file_and_needs_a_sweep_id(fake_cluster):
    repo, env, calls, _ = fake_cluster
    (repo / ".slurm").mkdir()
    (repo / ".slurm" / "4242.env").write_text("SGDFUSE_REQUEUE_ARGV=(train.py stale=1)\n")
    assert _sbatch(env, "me/sgdfuse/sw42").returncode == 0
    assert "stale=1" not in calls.read_text()
    missing = _sbatch({**env, "SLURM_JOB_ID": "5"})
    assert missing.returncode == 2 and "usage" in missing.stderr


@pytest.mark.parametrize(("env", "srun"), [
    ({}, False),  # workstation
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}, False),  # one task: nothing to distribute
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}, True),  # a multi-task allocation
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, False),  # already inside srun
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1", "SGDFUSE_SRUN": "1"}, True),  # forced (sweep_agent.sbatch)
])
def test_launch_script_uses_srun_only_inside_a_multi_task_allocation(fake_cluster, env, srun):
    repo, base, calls, _ = fake_cluster
    base = {k: v for k, v in base.items() if not k.startswith("SLURM_")}
    subprocess.run(["bash", str(repo / "scripts" / "launch.sh"), "seed=3"], env={**base, **env}, cwd=repo,
                   check=True, timeout=60)
    assert calls.read_text().startswith("srun ") is srun
    [run] = _trains(calls)
    assert Path(run["argv"][0]).name == "train.py" and run["argv"][1:] == ["seed=3"]


def test_launch_script_selects_another_program_and_rejects_a_missing_one(fake_cluster, tmp_path):
    repo, env, calls, _ = fake_cluster
    (repo / "evaluate.py").write_text(FAKE_TRAIN)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    subprocess.run(["bash", "scripts/launch.sh", "evaluate.py", "checkpoint=x.ckpt"], env=env, cwd=repo,
                   check=True, timeout=60)
    assert _trains(calls)[0]["argv"] == ["evaluate.py", "checkpoint=x.ckpt"]
    missing = subprocess.run(["bash", str(repo / "scripts" / "launch.sh"), "nope.py"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nope.py" in missing.stderr


# --- Hydra submitit launcher --------------------------------------------------------------------------

def test_submitit_launcher_config_composes_and_submits_one_ddp_job_per_run(tmp_path, monkeypatch):
    from submitit.slurm.slurm import SlurmJob

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")  # submitit only checks that srun exists
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\ncp "${{@: -1}}" {tmp_path}/job.sh\n'
                                    'echo "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(SlurmJob, "results", lambda self: [self.job_id])  # do not wait for the fake jobs

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "+experiment=ablate_cfc", "trainer=ddp",
                                          "hydra.launcher.gpus_per_node=2", "hydra.job.name=train",
                                          f"hydra.sweep.dir={tmp_path}/multirun"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    assert launcher.launch([["seed=0"], ["seed=1"], ["seed=2"]], initial_job_idx=0) == [
        "4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "job.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --time=1440",
                 "export SGDFUSE_RUN_ID=slurm-$SLURM_JOB_ID"):
        assert line in script
    assert "srun " in script


@pytest.mark.parametrize("name", ALL_SWEEPS)
def test_sweep_metric_is_a_key_the_test_stage_logs(name, checked):
    """The test stage logs test/<set>/<metric> with the set named by data.name: the sweep must use it."""
    sweep = load_sweep(_sweep_file(name))
    sets = {p.config.data.name for p in checked[name]}
    assert len(sets) == 1
    assert sweep["metric"]["name"] == f"test/{sets.pop()}/Qabf"
