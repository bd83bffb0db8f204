"""Test-only experiments: score the final checkpoint of another run instead of training a model.

``mask_erode`` / ``mask_dilate`` perturb the test masks only, so they need no model of their own: with
``stages: [test]`` and ``source_experiment: full`` they evaluate the final checkpoint of the ``full`` run
trained with the same seed, data, model and mask source (looked up in ``paths.checkpoint_dir/full/``) and
cost one evaluation. ``source_run=<run folder>`` names the run instead. The run evaluated is recorded in
``<run_dir>/source_run.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sgdfuse.atomic import atomic_write_json
from sgdfuse.orchestration.run_folders import (
    SOURCE_RECORD,
    RunFolderError,
    differing_keys,
    read_run_config,
    stage_steps,
    training_stages,
)

log = logging.getLogger(__name__)

#: Sections compared between a test-only run and the run it evaluates ...
COMPARED = ("data", "masks", "model")
#: ... except what only the test uses (or what does not change results): those may differ.
TEST_TIME_KEYS = (
    "data.val", "data.test", "data.test_sets", "data.val_batch_size", "data.num_workers", "data.pin_memory",
    "masks.perturb", "masks.source.cache_dir", "masks.source.device", "masks.source.download",
    "masks.source.generator.points_per_batch",
)
#: Overrides of the current command that are not passed on to the command that trains the source run.
_NOT_PASSED_ON = ("experiment", "seed", "run_id", "source_experiment", "source_run",
                  "masks.perturb", "stages")


class SourceRunError(ValueError):
    """No usable run to evaluate; the message names the folder searched and the command that trains one."""


@dataclass(frozen=True)
class SourceRun:
    """A finished run whose final checkpoint a test-only run scores."""

    run_dir: Path
    checkpoint: Path
    experiment: str
    seed: Any
    steps: dict[str, int]

    def record(self, run_dir: Path) -> Path:
        """``<run_dir>/source_run.json``: which run was evaluated (read back by the report)."""
        return atomic_write_json(Path(run_dir) / SOURCE_RECORD, {
            "run_dir": str(self.run_dir.resolve()), "checkpoint": str(self.checkpoint.resolve()),
            "experiment": self.experiment, "run_id": self.run_dir.name, "seed": self.seed,
            "steps": self.steps})


def find_source_run(cfg: DictConfig) -> SourceRun | None:
    """The run a test-only config evaluates; None when ``source_experiment`` and ``source_run`` are unset.

    Raises :class:`SourceRunError` when the config also trains, when no finished run matches (naming the
    folder searched, why each run there does not fit, and the command that trains one) or when several do.
    """
    experiment, explicit = cfg.get("source_experiment"), cfg.get("source_run")
    if not experiment and not explicit:
        return None
    if training_stages(cfg.stages, cfg.get("stage2_phases") or []):
        raise SourceRunError(
            f"source_experiment / source_run evaluate another run's checkpoint and train nothing: use them "
            f"with stages: [test] (got stages: {list(cfg.stages)}), or unset them to train this run.")
    current = OmegaConf.to_container(cfg, resolve=True)
    if explicit:
        return _explicit(Path(str(explicit)), current)
    folder = Path(cfg.paths.checkpoint_dir) / str(experiment)
    found, rejected = [], []
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        source, why = _examine(run_dir, current)
        if source is None:
            rejected.append(f"{run_dir.name}: {why}")
        else:
            found.append(source)
    seed = cfg.seed
    if len(found) == 1:
        log.info("test-only run: evaluating %s (%s)", found[0].checkpoint, experiment)
        return found[0]
    if found:
        raise SourceRunError(
            f"{len(found)} finished `{experiment}` runs in {folder} have seed={seed} and this run's data, "
            f"model and masks: {', '.join(s.run_dir.name for s in found)}. Choose one with "
            f"source_run={folder}/<run id>.")
    seen = f" ({'; '.join(rejected)})" if rejected else " (no runs there)"
    raise SourceRunError(
        f"no finished `{experiment}` run with seed={seed} and this run's data, model and masks in "
        f"{folder}{seen}. Train it first: `{train_command(cfg, str(experiment))}`, or name a run folder "
        f"with source_run=PATH.")


def _examine(run_dir: Path, current: dict[str, Any], check_settings: bool = True
             ) -> tuple[SourceRun | None, str]:
    """``run_dir`` as a :class:`SourceRun`, or None and why it cannot be the source."""
    try:
        recorded = read_run_config(run_dir)
    except RunFolderError as err:
        return None, str(err)
    if check_settings and recorded.get("seed") != current.get("seed"):
        return None, f"seed {recorded.get('seed')}"
    if check_settings and (diff := differing_keys(_compared(recorded), _compared(current), TEST_TIME_KEYS,
                                                  recorded_may_lack=True)):
        return None, f"other settings ({', '.join(diff[:6])}{', …' if len(diff) > 6 else ''})"
    steps, missing = stage_steps(run_dir, recorded)
    if missing:
        return None, f"unfinished ({missing[0]} has no DONE marker)"
    if not steps:
        return None, "trains no stage (a test-only run itself)"
    checkpoint = run_dir / list(steps)[-1] / "last.ckpt"
    if not checkpoint.is_file():
        return None, f"{checkpoint} is missing"
    source = SourceRun(run_dir, checkpoint, str(recorded.get("experiment_name")), recorded.get("seed"), steps)
    return source, ""


def _explicit(run_dir: Path, current: dict[str, Any]) -> SourceRun:
    source, why = _examine(run_dir, current, check_settings=False)
    if source is None:
        raise SourceRunError(f"source_run={run_dir} cannot be evaluated: {why}.")
    _, mismatch = _examine(run_dir, current)
    if mismatch:
        log.warning("source_run=%s differs from this run's config: %s", run_dir, mismatch)
    return source


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in COMPARED}


def train_command(cfg: DictConfig, experiment: str) -> str:
    """``python train.py +experiment=<experiment> seed=S`` plus the current command's other overrides."""
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        for override in HydraConfig.get().overrides.task:
            key = override.split("=")[0].lstrip("~+")
            if not any(key == k or key.startswith(f"{k}.") for k in _NOT_PASSED_ON):
                overrides.append(override)
    except ValueError:  # not started by Hydra (tests, notebooks): no command line to copy
        pass
    return " ".join(["python train.py", f"+experiment={experiment}", f"seed={cfg.seed}", *overrides])
