"""The run driver behind ``train.py``: stage I → stage II phases → test, resumable by run id.

Every stage trains under ``<paths.run_dir>/<stage>/`` (``run_dir`` = ``checkpoints/<experiment>/<run_id>``)
with Lightning's ``last.ckpt``; a ``DONE`` marker is written once the stage finished. Restarted with the same
run id, finished stages are skipped and the unfinished one resumes from its newest verified checkpoint.

Reliability rules (README, "Reliability"): the config is type-checked before anything is written; a
diverged stage (non-finite loss or weights, :class:`~lightning_modules.callbacks.DivergenceGuard`) never
gets ``DONE``; every checkpoint used to resume or to build a later stage is verified (zip CRC-32, finite
weights) and checked against the config; a finished stage given more steps continues, fewer is an error;
earlier test results are moved aside, never overwritten.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules import CheckpointError, FusionModule, load_fusion_model, read_checkpoint
from lightning_modules.callbacks import DivergenceError
from sgdfuse.atomic import atomic_write_json, atomic_write_text
from sgdfuse.models.stage2.phases import check_phase_sequence
from sgdfuse.orchestration.config_schema import FILLED_BY_PIPELINE, ConfigError, TrainConfig, check_config
from sgdfuse.orchestration.distributed import is_global_rank_zero
from sgdfuse.orchestration.run_folders import differing_keys, training_stages
from sgdfuse.orchestration.slurm import record_requeue_command
from sgdfuse.orchestration.source_run import find_source_run
from sgdfuse.orchestration.wandb_utils import wandb_offline

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "test")
MARKER = "DONE"
RUN_ID_ENV = "SGDFUSE_RUN_ID"
#: Hyperparameters the pipeline sets per stage, not compared between a checkpoint and the config.
SET_PER_STAGE = ("phase", "stage1_ckpt", "stage1_net", "masks")  # masks: from the mask source


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
    """Fail before any work on values of the wrong type and on keys the pipeline does not understand."""
    check_config(cfg, TrainConfig, filled_later=FILLED_BY_PIPELINE)
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; allowed: {list(STAGES)}.")
    if "stage2" in cfg.stages:
        try:
            check_phase_sequence(list(cfg.stage2_phases))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    for stage in _training_stages(cfg):
        if stage not in cfg.steps:
            raise ConfigError(f"steps.{stage} is missing: set the number of optimisation steps of {stage}.")
    _validate_stage1_ckpt(cfg)


def _validate_stage1_ckpt(cfg: DictConfig) -> None:
    """An explicit ``model.stage2.stage1_ckpt`` is used as given: it must exist, be intact and not compete
    with a stage1 of this run."""
    explicit = OmegaConf.select(cfg, "model.stage2.stage1_ckpt") if "stage2" in cfg.stages else None
    if not explicit:
        return
    if "stage1" in cfg.stages:
        raise ConfigError(f"model.stage2.stage1_ckpt={explicit} is given, but stages {list(cfg.stages)} "
                          "also train stage1, whose last.ckpt Stage II would use: drop stage1 from stages to "
                          "build on the given file (stages=[stage2,test]), or drop model.stage2.stage1_ckpt.")
    read_checkpoint(explicit)  # missing or corrupt: CheckpointError naming the file, before any write


def _training_stages(cfg: DictConfig) -> list[str]:
    return training_stages(cfg.stages, cfg.stage2_phases)


#: Config sections that must not change when a run id is resumed (steps may grow: training longer is fine;
#: the `test` stage may be added or dropped).
RUN_IDENTITY_KEYS = ("experiment_name", "seed", "stages", "stage2_phases", "data", "masks", "model")


def check_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """Record the run's identity in ``run_dir/run_config.yaml``; refuse to resume under another config.

    A recorded config under which no stage has started (no checkpoint, no ``DONE``: e.g. the first attempt
    failed data validation) is replaced, with a warning: there is nothing it could protect.
    """
    current = {k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in RUN_IDENTITY_KEYS}
    path = run_dir / "run_config.yaml"
    if path.is_file():
        recorded = OmegaConf.to_container(OmegaConf.load(path))
        # a key the recorded config lacks was added by newer code: not compared (as for checkpoints,
        # :func:`_hparam_diffs`), so runs recorded by older code still resume
        diff = differing_keys(_training_identity(recorded), _training_identity(current),
                              recorded_may_lack=True)
        if not diff:
            return
        if _any_stage_started(run_dir):
            raise ConfigError(
                f"run_id={cfg.run_id}: {run_dir} was trained with another config (differs at: "
                f"{', '.join(diff[:8])}). Use a new run_id, or restore the recorded overrides "
                f"({path}).")
        log.warning("run_id=%s: no stage has started under the config recorded in %s (differs at: %s); "
                    "replacing it with this one", cfg.run_id, path, ", ".join(diff[:8]))
    if is_global_rank_zero():  # the Trainer does not exist yet
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(current)))


def _training_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """Adding or dropping the ``test`` stage changes no training: a finished run may be tested later."""
    stages = identity.get("stages")
    return {**identity, "stages": [s for s in stages if s != "test"] if isinstance(stages, list) else stages}


def _any_stage_started(run_dir: Path) -> bool:
    return any(_stage_started(d) for d in run_dir.iterdir() if d.is_dir()) if run_dir.is_dir() else False


def _stage_started(stage_dir: Path) -> bool:
    """A checkpoint or a ``DONE`` marker: something trained under this folder's config."""
    return any(stage_dir.glob("*.ckpt")) or (stage_dir / MARKER).is_file()


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    # _convert_=all: the DataModule's hparams go into checkpoints and must be plain containers
    return instantiate(cfg.data, mask_source=instantiate(cfg.masks.source),
                       perturb=OmegaConf.to_container(cfg.masks.perturb, resolve=True), _convert_="all")


def build_trainer(cfg: DictConfig, stage_dir: Path, stage: str, max_steps: int,
                  extra_callbacks: list[L.Callback] | None = None, **overrides: Any) -> L.Trainer:
    callbacks = list(extra_callbacks or [])
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
        # the test stage's keys are already test/<set>/<metric> (what sweeps optimise): no second prefix
        return instantiate(logger_cfg, prefix="" if stage == "test" else stage,
                           offline=wandb_offline() if offline is None else offline)
    return instantiate(logger_cfg, version=stage)


def _is_done(stage_dir: Path) -> bool:
    return (stage_dir / MARKER).is_file()


def _done_step(stage_dir: Path) -> int:
    marker = stage_dir / MARKER
    try:
        return int(json.loads(marker.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{marker} is unreadable ({err}); delete it: the stage then resumes from its "
                              "newest checkpoint (or trains again if it has none).") from err


def _unmark_done(stage_dir: Path) -> None:
    """The stage trains again (more steps, or its final checkpoint was lost): it is no longer finished."""
    if is_global_rank_zero():  # the Trainer does not exist yet
        (stage_dir / MARKER).unlink(missing_ok=True)


def _mark_done(trainer: L.Trainer, stage_dir: Path) -> None:
    if trainer.is_global_zero:
        atomic_write_json(stage_dir / MARKER, {"global_step": trainer.global_step, "finished": time.time()})
    trainer.strategy.barrier()


def fit_stage(cfg: DictConfig, stage: str, module: FusionModule, datamodule: L.LightningDataModule) -> Path:
    """Train one stage/phase to ``steps[stage]``, resuming from its newest verified checkpoint if any."""
    stage_dir = Path(cfg.paths.run_dir) / stage
    last = stage_dir / "last.ckpt"
    target = int(cfg.steps[stage])
    found = verified_checkpoint(stage_dir)
    resume = None
    if found is not None:
        path, step = found
        if step > target:
            raise ConfigError(f"steps.{stage}={target} is fewer than the {step} steps already trained in "
                              f"{path}. Set steps.{stage}>={step}, or {_retrain_hint(cfg, stage)}")
        _check_matches_config(cfg, stage, path, "")
        resume = str(path)
        log.info("%s: resuming from %s (step %d) to step %d", stage, resume, step, target)
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, stage_dir, stage, max_steps=target)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        _save_final(trainer, last)
    except DivergenceError as err:
        raise DivergenceError(
            f"{stage} diverged: {err} {stage} is not marked finished ({stage_dir / MARKER} not written). Fix "
            "the cause and rerun the same command: it resumes from that checkpoint (trainer settings such "
            "as trainer.gradient_clip_val=1.0 or trainer.precision=32-true may change on resume; model "
            "settings such as the learning rate need a new run_id).") from err
    _mark_done(trainer, stage_dir)
    return last


def resume_checkpoint(stage_dir: Path) -> str | None:
    """The verified checkpoint of ``stage_dir`` with the highest step (``last.ckpt`` on ties), or None."""
    found = verified_checkpoint(stage_dir)
    return None if found is None else str(found[0])


def _checkpoints_by_step(stage_dir: Path) -> tuple[list[tuple[int, Path]], list[str]]:
    """Readable checkpoints as (global_step, path), newest first (``last.ckpt`` first on ties), and the
    names of unreadable ones. Only the step is read here (memory-mapped), nothing is verified."""
    # hpc_ckpt_*: Lightning's SIGUSR1 checkpoint before a SLURM requeue (usually the newest)
    names = (stage_dir / "last.ckpt", *sorted(stage_dir.glob("hpc_ckpt_*.ckpt")),
             *sorted(stage_dir.glob("step*.ckpt")))
    stepped, unreadable = [], []
    for order, path in enumerate(p for p in names if p.is_file()):
        try:
            stepped.append((int(read_checkpoint(path, verify=False).get("global_step", 0)), -order, path))
        except CheckpointError as err:
            log.warning("%s", err)
            unreadable.append(path.name)
    return [(step, path) for step, _, path in sorted(stepped, reverse=True)], unreadable


def verified_checkpoint(stage_dir: Path) -> tuple[Path, int] | None:
    """The newest checkpoint of ``stage_dir`` that passes verification (zip CRC-32 of every member, finite
    weights) and its step; None when the folder has no checkpoint.

    A process killed between writing ``step*.ckpt`` and ``last.ckpt`` leaves the step file newer; a file
    that fails is skipped and said in the log. Never a silent fresh start: checkpoints exist but none
    passes -> CheckpointError.
    """
    found, bad = _newest_verified(stage_dir)
    if found is None and bad:
        raise CheckpointError(f"no readable checkpoint in {stage_dir} ({', '.join(bad)}); delete the "
                              "stage folder to train this stage from scratch.")
    return found


def _newest_verified(stage_dir: Path) -> tuple[tuple[Path, int] | None, list[str]]:
    stepped, bad = _checkpoints_by_step(stage_dir)
    for step, path in stepped:
        try:
            read_checkpoint(path)  # reads every byte once: only the candidates up to the first good one
        except CheckpointError as err:
            log.warning("%s", err)
            bad.append(path.name)
            continue
        if bad:
            log.warning("%s unusable: using the previous good checkpoint %s (step %d)", ", ".join(bad),
                        path, step)
        return (path, step), bad
    return None, bad


def _check_matches_config(cfg: DictConfig, stage: str, path: Path, context: str) -> None:
    """The checkpoint's saved hyperparameters must equal this config's ``model.stage1``/``model.stage2``
    (every key the config gives; Stage II also its Stage-I architecture)."""
    hparams = read_checkpoint(path, verify=False).get("hyper_parameters") or {}
    section = "model.stage1" if stage == "stage1" else "model.stage2"
    expected = {k: v for k, v in OmegaConf.to_container(OmegaConf.select(cfg, section), resolve=True).items()
                if not (k.startswith("_") and k.endswith("_")) and k not in SET_PER_STAGE}
    diffs = _hparam_diffs(expected, hparams, f"{section}.")
    if stage != "stage1" and "stage1" in cfg.stages and hparams.get("stage1_net") is not None:
        diffs += _hparam_diffs(OmegaConf.to_container(cfg.model.stage1.net, resolve=True),
                               hparams["stage1_net"], "model.stage1.net.")
    if diffs:
        raise ConfigError(f"{stage}: checkpoint {path} was trained with other settings than this config: "
                          f"{'; '.join(diffs[:8])}. {context}Restore the config it was trained with, or "
                          f"{_retrain_hint(cfg, stage)}")


def _hparam_diffs(expected: dict[str, Any], saved: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for key, want in expected.items():
        if key not in saved:  # written by older code without this argument: nothing to compare
            continue
        have = saved[key]
        if isinstance(want, dict) and isinstance(have, dict):
            out += _hparam_diffs(want, have, f"{prefix}{key}.")
        elif _plain(want) != _plain(have):
            out.append(f"{prefix}{key} is {have!r} in the checkpoint, {want!r} in the config")
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _retrain_hint(cfg: DictConfig, stage: str) -> str:
    """The one command that trains ``stage`` again from scratch (with the later stages built on it)."""
    run_dir = Path(cfg.paths.run_dir)
    names = _training_stages(cfg)
    later = names[names.index(stage) + 1:] if stage in names else []
    dirs = [str(run_dir / s) for s in (stage, *later) if s == stage or (run_dir / s).exists()]
    return f"retrain it with: rm -r {shlex.join(dirs)} && {_rerun_command(cfg)}"


def _rerun_command(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # run() called from Python
        return f"python train.py <the same overrides> run_id={cfg.run_id}"
    overrides = list(HydraConfig.get().overrides.task)
    if not any(o.lstrip("+~").split("=", 1)[0] == "run_id" for o in overrides):
        overrides.append(f"run_id={cfg.run_id}")
    return shlex.join(["python", "train.py", *overrides])


def _save_final(trainer: L.Trainer, last: Path) -> None:
    """``last.ckpt`` = the end state (the periodic one may be older), replaced atomically."""
    tmp = last.with_name(f".{last.name}.tmp")
    trainer.save_checkpoint(tmp)  # collective call: every rank enters, rank 0 writes
    if trainer.is_global_zero:
        os.replace(tmp, last)
    trainer.strategy.barrier()


def build_stage1(cfg: DictConfig) -> FusionModule:
    return instantiate(cfg.model.stage1)


def build_stage2(cfg: DictConfig, phase: str, stage1_ckpt: Path | None, masks: bool,
                 previous_phase: Path | None = None) -> FusionModule:
    """Stage II in ``phase``; later phases start from the previous phase's weights. ``masks`` comes from
    the mask source (one switch: ``masks=none`` gives the 3-channel UNet and unweighted losses).

    ``stage1_ckpt``: this run's Stage I; None keeps the config's ``model.stage2.stage1_ckpt`` as given.
    """
    kwargs = {"stage1_ckpt": str(stage1_ckpt)} if stage1_ckpt else {}
    module = instantiate(cfg.model.stage2, phase=phase, masks=masks, **kwargs)
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
    datamodule = build_datamodule(cfg)  # a bad data config fails before the run's config is recorded
    check_run_config(cfg, run_dir)
    if source is not None and is_global_rank_zero():
        source.record(run_dir)
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
                masks = datamodule.mask_channels_enabled
                make = functools.partial(build_stage2, cfg, phase, stage1_ckpt, masks, previous)
                previous = last_ckpt = _run_or_skip(cfg, f"stage2_{phase}", make, datamodule)
        elif stage == "test":
            if last_ckpt is None:
                raise ConfigError("stages: `test` needs a trained stage before it (e.g. [stage1, test]), or "
                                  "source_experiment / source_run naming the run to evaluate.")
            _keep_earlier_test_results(Path(cfg.paths.run_dir) / "test")
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
    """Train ``stage``, or reuse it when finished (see :func:`_reuse_finished`)."""
    stage_dir = Path(cfg.paths.run_dir) / stage
    if _is_done(stage_dir):
        reused = _reuse_finished(cfg, stage)
        if reused is not None:
            return reused
        _unmark_done(stage_dir)  # more steps, or its final checkpoint was lost: it trains on
    return fit_stage(cfg, stage, make(), datamodule)


def _reuse_finished(cfg: DictConfig, stage: str) -> Path | None:
    """The verified checkpoint of a finished stage, or None when it must train on.

    Same steps -> its final checkpoint (a same-step ``step*.ckpt`` if ``last.ckpt`` fails verification);
    more steps -> None (continue from it); fewer -> ConfigError. Later stages built on it forbid changing
    it. Every error names the ``DONE`` marker and the command that retrains the stage.
    """
    run_dir = Path(cfg.paths.run_dir)
    stage_dir = run_dir / stage
    marker, done_step, target = stage_dir / MARKER, _done_step(stage_dir), int(cfg.steps[stage])
    names = _training_stages(cfg)
    later = names[names.index(stage) + 1:]
    built_on = [s for s in later if _stage_started(run_dir / s)]  # trained on this stage's final state
    finished = f"{stage} is marked finished ({marker}, step {done_step})"
    stepped, _ = _checkpoints_by_step(stage_dir)
    if stepped:
        _check_matches_config(cfg, stage, stepped[0][1], f"{finished}. ")
    if target < done_step:
        raise ConfigError(f"steps.{stage}={target} is fewer than the {done_step} steps {stage} was trained "
                          f"for: {finished}. Set steps.{stage}={done_step}, or {_retrain_hint(cfg, stage)}")
    if target > done_step:
        if built_on:
            raise ConfigError(f"steps.{stage}={target}: {finished}, and the later stages {built_on} were "
                              f"trained on it: training it further would leave them stale. Set "
                              f"steps.{stage}={done_step}, or {_retrain_hint(cfg, stage)}")
        log.info("%s: %s; continuing from its last checkpoint to steps.%s=%d", stage, finished, stage, target)
        return None
    if later and all(_is_done(run_dir / s) for s in later):  # nothing of this run reads it again
        log.info("%s: finished earlier (%s exists), skipping", stage, marker)
        return stage_dir / "last.ckpt"
    found, bad = _newest_verified(stage_dir)
    if found is None:
        what = f"no usable checkpoint ({', '.join(bad)}: see the warnings above)" if bad else "no checkpoint"
        raise CheckpointError(f"{stage_dir} holds {what}, but {finished}; {_retrain_hint(cfg, stage)}")
    path, step = found
    if step >= done_step:
        log.info("%s: finished earlier (%s exists), skipping; using %s", stage, marker, path)
        return path
    if built_on:
        raise CheckpointError(f"{stage}: its final checkpoint (step {done_step}) is unusable and the newest "
                              f"good one is {path} (step {step}), but the later stages {built_on} were "
                              f"trained on the final one: {finished}; {_retrain_hint(cfg, stage)}")
    log.warning("%s: the final checkpoint (step %d) is unusable; training again from %s (step %d)", stage,
                done_step, path, step)
    return None


def _keep_earlier_test_results(out_dir: Path) -> None:
    """The test stage never overwrites earlier results: they move to ``test.<time they were written>/``."""
    if is_global_rank_zero() and out_dir.is_dir() and any(out_dir.iterdir()):
        written = max((p.stat().st_mtime for p in out_dir.rglob("*")), default=out_dir.stat().st_mtime)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(written))
        target, n = out_dir.with_name(f"{out_dir.name}.{stamp}"), 1
        while target.exists():
            target, n = out_dir.with_name(f"{out_dir.name}.{stamp}-{n}"), n + 1
        os.replace(out_dir, target)
        log.warning("test: the earlier results in %s were moved to %s; the test stage writes new ones",
                    out_dir, target)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank writes test outputs before the folder was moved


def test(cfg: DictConfig, ckpt: Path, datamodule: L.LightningDataModule) -> dict[str, float]:
    """Score the last checkpoint on every test set (never used to pick a checkpoint).

    Results go to ``<run_dir>/test/`` (see :mod:`sgdfuse.orchestration.results`); returns the flat
    ``test/<set>/<metric>`` means that the loggers also receive.
    """
    from lightning_modules.callbacks import TestResults
    from sgdfuse.orchestration.results import flat_metrics

    model = load_fusion_model(ckpt)
    out_dir = Path(cfg.paths.run_dir) / "test"
    results = TestResults(out_dir, datamodule.test_set_names, metrics=cfg.get("test_metrics"),
                          show_masks=datamodule.mask_channels_enabled)
    trainer = build_trainer(cfg, out_dir, "test", max_steps=-1, extra_callbacks=[results])
    trainer.test(model, datamodule=datamodule)
    return flat_metrics(results.results)
