"""The runs a report is made of, read from local run folders or from W&B (``wandb.Api()``).

Both sources give :class:`RunRecord` s: experiment, seed, test metrics per test set and convention, the
settings that must agree within a group (``identity``), and ``problem`` when the run cannot be used
(unfinished, no or unreadable metrics). Nothing here decides what is averaged: see :mod:`.report`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgdfuse.orchestration.run_folders import (
    DEFAULT_CONVENTION,
    FLAT_SET,
    MARKER,
    METRICS,
    RUN_CONFIG,
    SOURCE_RECORD,
    RunFolderError,
    read_run_config,
    read_test_metrics,
    stage_steps,
    training_stages,
)

log = logging.getLogger(__name__)

#: Sections of a run's config that define what it trained and tested (as recorded in run_config.yaml).
IDENTITY_SECTIONS = ("data", "masks", "model", "stages", "stage2_phases")


class ReportError(ValueError):
    """Nothing to report from a source; the message names the folder / W&B path and what to do."""


@dataclass
class RunRecord:
    """One run as the report sees it."""

    name: str  # shown in messages: the run folder or the W&B run path
    experiment: str
    seed: Any = None
    identity: dict[str, Any] = field(default_factory=dict)
    convention: str = DEFAULT_CONVENTION
    sets: dict[str, dict[str, float]] = field(default_factory=dict)
    problem: str | None = None
    created: str = ""  # sort key: of two runs of one seed, the earlier is kept

    @property
    def perturb(self) -> tuple[str, int] | None:
        """``(mode, k)`` when the run's test masks are eroded / dilated, else None."""
        perturb = (self.identity.get("masks") or {}).get("perturb") or {}
        mode = perturb.get("mode")
        return (str(mode), int(perturb.get("kernel_size") or 0)) if mode else None


# --- local run folders ---------------------------------------------------------------------------------

def _looks_like_run(path: Path) -> bool:
    """run_config.yaml, test results or a stage folder with a checkpoint or marker (a run from before
    run_config.yaml existed: reported as such)."""
    if (path / RUN_CONFIG).is_file() or (path / METRICS).is_file():
        return True
    stages = [p for p in path.glob("stage*") if p.name == "stage1" or p.name.startswith("stage2_")]
    return any((p / MARKER).is_file() or (p / "last.ckpt").is_file() for p in stages)


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders at ``path``: itself, its sub-folders (an experiment folder) or theirs (a checkpoint
    root)."""
    path = Path(path)
    if _looks_like_run(path):
        return [path]
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _looks_like_run(child):
            found.append(child)
            continue
        found += [g for g in sorted(child.iterdir()) if g.is_dir() and not g.name.startswith(".")
                  and _looks_like_run(g)]
    return found


def read_local_run(run_dir: Path) -> RunRecord:
    """A run folder as a :class:`RunRecord`; what keeps it out of the report goes to ``problem``."""
    run_dir = Path(run_dir)
    created = str(_mtime(run_dir / RUN_CONFIG))
    try:
        recorded = read_run_config(run_dir)
    except RunFolderError as err:
        return RunRecord(str(run_dir), run_dir.parent.name, problem=str(err), created=created)
    experiment = str(recorded.get("experiment_name") or run_dir.parent.name)
    record = RunRecord(str(run_dir), experiment, recorded.get("seed"), created=created)
    steps, missing = stage_steps(run_dir, recorded)
    record.identity = {**{k: recorded.get(k) for k in IDENTITY_SECTIONS}, "steps": steps}
    if (run_dir / SOURCE_RECORD).is_file():  # a test-only run: what it scored is part of what it is
        try:
            source = json.loads((run_dir / SOURCE_RECORD).read_text())
            record.identity["source"] = {"experiment": source.get("experiment"), "steps": source.get("steps")}
        except (OSError, ValueError) as err:
            record.problem = f"{run_dir / SOURCE_RECORD} is unreadable ({err}): rerun its test"
            return record
    if missing:
        record.problem = (f"unfinished: {missing[0]} has no {MARKER} marker (still training, or stopped: "
                          f"resume it with run_id={run_dir.name} and the same overrides)")
        return record
    try:
        metrics = read_test_metrics(run_dir)
    except RunFolderError as err:
        record.problem = f"{err}: rerun the test with run_id={run_dir.name} and the same overrides"
        return record
    record.convention, record.sets = metrics.convention, {k: v for k, v in metrics.sets.items() if v}
    if not record.sets:
        record.problem = f"{run_dir / 'test' / 'metrics.json'} holds no metric values"
    return record


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def local_runs(dirs: Iterable[str | Path]) -> list[RunRecord]:
    """Every run under ``dirs``; a folder without runs is said (and skipped), none at all is an error."""
    runs: list[RunRecord] = []
    empty: list[str] = []
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            empty.append(f"{folder} (does not exist)")
            continue
        found = find_run_dirs(folder)
        if not found:
            empty.append(f"{folder} (no run folders <experiment>/<run_id>/ in it)")
        runs += [read_local_run(d) for d in found]
    for what in empty:
        log.warning("no runs in %s", what)
    if not runs:
        raise ReportError(
            f"no runs found in {', '.join(empty)}. A run folder is checkpoints/<experiment>/<run_id>/ with "
            f"run_config.yaml, written by e.g. `python train.py -m +experiment=full seed=0,1`; point "
            f"local.dirs at the checkpoint folder, an experiment folder or run folders.")
    return runs


# --- W&B ------------------------------------------------------------------------------------------------

def wandb_runs(api: Any, project: str | None, sweeps: Iterable[str] = (),
               filters: Mapping[str, Any] | None = None) -> list[RunRecord]:
    """Runs of W&B sweeps (``ENTITY/PROJECT/ID`` or ``ID`` within ``project``) or of a whole project.

    ``api`` is a ``wandb.Api()`` (or anything with its ``runs(path, filters=)`` / ``sweep(path)``).
    """
    sweeps = [str(s) for s in sweeps or []]
    if not project and (not sweeps or any(s.count("/") != 2 for s in sweeps)):
        raise ReportError("wandb.project=ENTITY/PROJECT is missing (or give sweeps as ENTITY/PROJECT/ID).")
    where: list[str] = []
    raw: list[Any] = []
    try:
        if sweeps:
            for sweep in sweeps:
                path = sweep if sweep.count("/") == 2 else f"{project}/{sweep}"
                where.append(f"W&B sweep {path}")
                found = list(api.sweep(path).runs)
                if not found:
                    log.warning("W&B sweep %s has no runs", path)
                raw += found
        else:
            where.append(f"W&B project {project}" + (f" (filters {dict(filters)})" if filters else ""))
            raw = list(api.runs(project, filters=dict(filters or {})))
    except ReportError:
        raise
    except Exception as err:  # wandb.errors.CommError and friends: a wrong path, no access, no network
        raise ReportError(f"{where[-1]} cannot be read: {err}") from err
    if not raw:
        raise ReportError(f"no runs in {', '.join(where)}: check the path (entity/project[/sweep id]).")
    return [wandb_record(run) for run in raw]


def wandb_record(run: Any) -> RunRecord:
    """One W&B run: config from ``run.config``, metrics from its summary ``test/<set>/<metric>``."""
    path = getattr(run, "path", None)
    name = "wandb:" + ("/".join(path) if isinstance(path, (list, tuple)) else str(run.id))
    config = unflatten(dict(run.config or {}))
    experiment = str(config.get("experiment_name") or "?")
    record = RunRecord(name, experiment, config.get("seed"), created=str(getattr(run, "created_at", "")))
    trained = training_stages(config.get("stages") or [], config.get("stage2_phases") or [])
    steps = config.get("steps") or {}
    record.identity = {**{k: config.get(k) for k in IDENTITY_SECTIONS},
                       "steps": {s: steps.get(s) for s in trained}}
    if config.get("source_experiment") or config.get("source_run"):
        source = config.get("source_experiment") or config.get("source_run")
        record.identity["source"] = {"experiment": source}
    record.convention = str(config.get("convention") or DEFAULT_CONVENTION)
    state = getattr(run, "state", "finished")
    if state != "finished":
        record.problem = f"unfinished: W&B state `{state}`"
        return record
    summary = getattr(run, "summary_metrics", None)
    if not isinstance(summary, Mapping):
        summary = dict(run.summary.items())
    record.sets = summary_sets(summary)
    if not record.sets:
        record.problem = "no test metrics in its W&B summary (keys test/<set>/<metric> or test/<metric>)"
    return record


def summary_sets(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``test/<set>/<metric>`` (or ``.../final/<metric>``) and ``test/<metric>`` (set ``test``) → sets.

    Lightning's WandbLogger with ``prefix="test"`` writes ``test-test/<metric>``: the prefix is dropped.
    Stage-I scores (``test/<set>/stage1/<metric>``) and non-numbers (images) are skipped.
    """
    sets: dict[str, dict[str, float]] = {}
    for key, value in summary.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        parts = str(key).removeprefix("test-").split("/")
        if parts[0] != "test" or len(parts) < 2:
            continue
        if len(parts) == 2:
            set_name, metric = FLAT_SET, parts[1]
        elif len(parts) == 3:
            set_name, metric = parts[1], parts[2]
        elif len(parts) == 4 and parts[2] == "final":
            set_name, metric = parts[1], parts[3]
        else:
            continue
        sets.setdefault(set_name, {})[metric] = float(value)
    return sets


def unflatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """W&B configs mix nested sections and dotted sweep keys (``masks.perturb.kernel_size``): nest them all.

    A dotted key is what the sweep set on the command line, so it wins over the nested copy.
    """
    out: dict[str, Any] = {}
    dotted = []
    for key, value in copy.deepcopy(dict(config)).items():
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]  # the raw API's {"value": ...} wrapping
        if "." in key:
            dotted.append((key, value))
        else:
            out[key] = value
    for key, value in dotted:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return out
