"""The run driver behind ``train.py``: stage I → stage II phases → test, resumable by run id.

Every stage trains under ``<paths.run_dir>/<stage>/`` (``run_dir`` = ``checkpoints/<experiment>/<run_id>``)
with Lightning's ``last.ckpt``; a ``DONE`` marker is written once the stage finished. Restarted with the same
run id, finished stages are skipped and the unfinished one resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules import CheckpointError, FusionModule, load_fusion_model, read_checkpoint
from sgdfuse.atomic import atomic_write_json, atomic_write_text
from sgdfuse.orchestration.distributed import is_global_rank_zero
from sgdfuse.orchestration.slurm import record_requeue_command
from sgdfuse.orchestration.source_run import find_source_run
from sgdfuse.orchestration.wandb_utils import wandb_offline

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "test")
PHASES = ("a", "b", "joint", "direct")
MARKER = "DONE"
RUN_ID_ENV = "SGDFUSE_RUN_ID"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to do."""


def resolve_run_id(cfg: DictConfig) -> str:
    """Explicit ``run_id`` > ``$SGDFUSE_RUN_ID`` > ``$WANDB_RUN_ID`` (sweeps) > a new id.

    The result is exported to ``$SGDFUSE_RUN_ID`` so that DDP worker processes, which Lightning starts by
    re-running the script with the parent's environment, use the same folder.
    """
    global _exported_run_id
    inherited = os.environ.get(RUN_ID_ENV)
    if inherited == _exported_run_id:  # set by an earlier run of this process (Hydra -m), not a parent
        inherited = None
    run_id = cfg.get("run_id") or inherited or os.environ.get("WANDB_RUN_ID")
    if not run_id:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    _exported_run_id = os.environ[RUN_ID_ENV] = str(run_id)
    with open_dict(cfg):
        cfg.run_id = str(run_id)
    return str(run_id)


_exported_run_id: str | None = None


def validate(cfg: DictConfig) -> None:
    """Fail before any work on keys the pipeline does not understand."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; allowed: {list(STAGES)}.")
    if "stage2" in cfg.stages:
        bad = [p for p in cfg.stage2_phases if p not in PHASES]
        if bad or not cfg.stage2_phases:
            raise ConfigError(f"stage2_phases: {list(cfg.stage2_phases)} is invalid; use a non-empty list of "
                              f"{list(PHASES)}, e.g. [a, b].")
    for stage in _training_stages(cfg):
        if stage not in cfg.steps:
            raise ConfigError(f"steps.{stage} is missing: set the number of optimisation steps of {stage}.")


def _training_stages(cfg: DictConfig) -> list[str]:
    names = []
    for stage in cfg.stages:
        if stage == "stage1":
            names.append("stage1")
        elif stage == "stage2":
            names.extend(f"stage2_{p}" for p in cfg.stage2_phases)
    return names


#: Config sections that must not change when a run id is resumed (steps may grow: training longer is fine).
RUN_IDENTITY_KEYS = ("experiment_name", "seed", "stages", "stage2_phases", "data", "masks", "model")


def check_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """Record the run's identity in ``run_dir/run_config.yaml``; refuse to resume under another config."""
    current = {k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in RUN_IDENTITY_KEYS}
    path = run_dir / "run_config.yaml"
    if path.is_file():
        recorded = OmegaConf.to_container(OmegaConf.load(path))
        diff = sorted(_diff_keys(recorded, current))
        if diff:
            raise ConfigError(
                f"run_id={cfg.run_id}: {run_dir} was trained with another config (differs at: "
                f"{', '.join(diff[:8])}). Use a new run_id, or restore the recorded overrides "
                f"({path}).")
        return
    if is_global_rank_zero():  # the Trainer does not exist yet
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(current)))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    # _convert_=all: the DataModule's hparams go into checkpoints and must be plain containers
    return instantiate(cfg.data, mask_source=instantiate(cfg.masks.source),
                       perturb=OmegaConf.to_container(cfg.masks.perturb, resolve=True), _convert_="all")


def build_trainer(cfg: DictConfig, stage_dir: Path, stage: str, max_steps: int,
                  **overrides: Any) -> L.Trainer:
    callbacks = []
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is None:
            continue
        extra = {"dirpath": str(stage_dir)} if cb_cfg._target_.endswith("ModelCheckpoint") else {}
        callbacks.append(instantiate(cb_cfg, **extra))
    loggers = [build_logger(lg, stage) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return instantiate(cfg.trainer, max_steps=max_steps, callbacks=callbacks, logger=loggers or False,
                       default_root_dir=str(stage_dir), **overrides)


def build_logger(logger_cfg: DictConfig, stage: str) -> Logger:
    """CSV/TensorBoard: one version folder per stage. W&B: one run for all stages, keys prefixed by stage."""
    if logger_cfg._target_.endswith("WandbLogger"):
        offline = logger_cfg.get("offline")
        return instantiate(logger_cfg, prefix=stage, offline=wandb_offline() if offline is None else offline)
    return instantiate(logger_cfg, version=stage)


def _is_done(stage_dir: Path) -> bool:
    return (stage_dir / MARKER).is_file()


def _mark_done(trainer: L.Trainer, stage_dir: Path) -> None:
    if trainer.is_global_zero:
        atomic_write_json(stage_dir / MARKER, {"global_step": trainer.global_step, "finished": time.time()})
    trainer.strategy.barrier()


def fit_stage(cfg: DictConfig, stage: str, module: FusionModule, datamodule: L.LightningDataModule) -> Path:
    """Train one stage/phase to ``steps[stage]``, resuming from its ``last.ckpt`` when one exists."""
    stage_dir = Path(cfg.paths.run_dir) / stage
    last = stage_dir / "last.ckpt"
    resume = resume_checkpoint(stage_dir)
    if resume:
        log.info("%s: resuming from %s", stage, resume)
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, stage_dir, stage, max_steps=int(cfg.steps[stage]))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    _save_final(trainer, last)
    _mark_done(trainer, stage_dir)
    return last


def resume_checkpoint(stage_dir: Path) -> str | None:
    """The readable checkpoint of ``stage_dir`` with the highest step (``last.ckpt`` on ties), or None.

    A process killed between writing ``step*.ckpt`` and ``last.ckpt`` leaves the step file newer; an
    unreadable file is skipped and said in the log. Never a silent fresh start: checkpoints exist but none
    is readable -> CheckpointError.
    """
    # hpc_ckpt_*: Lightning's SIGUSR1 checkpoint before a SLURM requeue (usually the newest)
    names = (stage_dir / "last.ckpt", *sorted(stage_dir.glob("hpc_ckpt_*.ckpt")),
             *sorted(stage_dir.glob("step*.ckpt")))
    candidates = [p for p in names if p.is_file()]
    if not candidates:
        return None
    best, best_step, unreadable = None, -1, []
    for path in candidates:
        try:
            step = int(read_checkpoint(path).get("global_step", 0))
        except CheckpointError as err:
            log.warning("%s", err)
            unreadable.append(path.name)
            continue
        if step > best_step:
            best, best_step = path, step
    if best is None:
        raise CheckpointError(f"no readable checkpoint in {stage_dir} ({', '.join(unreadable)}); delete the "
                              "stage folder to train this stage from scratch.")
    if unreadable:
        log.warning("%s unreadable: resuming from the previous good checkpoint %s (step %d)",
                    ", ".join(unreadable), best, best_step)
    return str(best)


def _save_final(trainer: L.Trainer, last: Path) -> None:
    """``last.ckpt`` = the end state (the periodic one may be older), replaced atomically."""
    tmp = last.with_name(f".{last.name}.tmp")
    trainer.save_checkpoint(tmp)  # collective call: every rank enters, rank 0 writes
    if trainer.is_global_zero:
        os.replace(tmp, last)
    trainer.strategy.barrier()


def build_stage1(cfg: DictConfig) -> FusionModule:
    return instantiate(cfg.model.stage1)


def build_stage2(cfg: DictConfig, phase: str, stage1_ckpt: Path | None,
                 previous_phase: Path | None = None) -> FusionModule:
    """Stage II in ``phase``; later phases start from the previous phase's weights."""
    module = instantiate(cfg.model.stage2, stage1_ckpt=str(stage1_ckpt) if stage1_ckpt else None, phase=phase)
    if previous_phase is not None:
        module.load_previous_phase(str(previous_phase))
    return module


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stages of ``cfg.stages`` in order; returns the test metrics (empty without a test stage)."""
    validate(cfg)
    resolve_run_id(cfg)
    record_requeue_command(sys.argv)  # SLURM: a requeued job re-runs this command (same run id)
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.run_dir)
    log.info("run %s/%s in %s", cfg.experiment_name, cfg.run_id, run_dir)
    source = find_source_run(cfg)  # test-only experiments: before the run folder exists, it may be missing
    check_run_config(cfg, run_dir)
    if source is not None and is_global_rank_zero():
        source.record(run_dir)
    datamodule = build_datamodule(cfg)
    exit_code = 1
    try:
        results = _run_stages(cfg, datamodule, source.checkpoint if source else None)
        exit_code = 0
        return results
    finally:
        _finish_wandb(exit_code)


def _run_stages(cfg: DictConfig, datamodule: L.LightningDataModule,
                last_ckpt: Path | None = None) -> dict[str, float]:
    """``last_ckpt``: the model a test-only run (``stages: [test]``) scores."""
    stage1_ckpt: Path | None = None
    for stage in cfg.stages:
        if stage == "stage1":
            stage1_ckpt = last_ckpt = _run_or_skip(cfg, "stage1", functools.partial(build_stage1, cfg),
                                                   datamodule)
        elif stage == "stage2":
            previous: Path | None = None
            for phase in cfg.stage2_phases:
                make = functools.partial(build_stage2, cfg, phase, stage1_ckpt, previous)
                previous = last_ckpt = _run_or_skip(cfg, f"stage2_{phase}", make, datamodule)
        elif stage == "test":
            if last_ckpt is None:
                raise ConfigError("stages: `test` needs a trained stage before it (e.g. [stage1, test]), or "
                                  "source_experiment / source_run naming the run to evaluate.")
            return test(cfg, last_ckpt, datamodule)
    return {}


def _finish_wandb(exit_code: int) -> None:
    """One W&B run spans all stages, so it is closed here, not by a stage's logger."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def _run_or_skip(cfg: DictConfig, stage: str, make: Callable[[], FusionModule],
                 datamodule: L.LightningDataModule) -> Path:
    stage_dir = Path(cfg.paths.run_dir) / stage
    if _is_done(stage_dir):
        log.info("%s: finished earlier (%s exists), skipping", stage, stage_dir / MARKER)
        return stage_dir / "last.ckpt"
    return fit_stage(cfg, stage, make(), datamodule)


def test(cfg: DictConfig, ckpt: Path, datamodule: L.LightningDataModule) -> dict[str, float]:
    """Score the last checkpoint on the test split (never used to pick a checkpoint)."""
    model = load_fusion_model(ckpt)
    out_dir = Path(cfg.paths.run_dir) / "test"
    model.test_output_dir = str(out_dir)
    trainer = build_trainer(cfg, out_dir, "test", max_steps=-1)
    results = trainer.test(model, datamodule=datamodule)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}
