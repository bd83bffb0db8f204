"""Reading run folders ``checkpoints/<experiment>/<run_id>/`` without importing Lightning.

A run folder holds ``run_config.yaml`` (the run's identity), one folder per training stage with a ``DONE``
marker once finished, and ``test/metrics.json``. Used by the report (``report.py``) and by test-only
experiments that look up the run whose checkpoints they evaluate (:mod:`.source_run`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Same marker and stage-folder names as :mod:`sgdfuse.orchestration.pipeline` (a test keeps them equal).
MARKER = "DONE"
RUN_CONFIG = "run_config.yaml"
METRICS = Path("test") / "metrics.json"
SOURCE_RECORD = "source_run.json"
#: Convention of a metrics.json that does not say: train.py's test scores with FusionMetrics' default.
DEFAULT_CONVENTION = "cddfuse"
#: Name of the single test set of a flat metrics.json ``{"EN": ...}``.
FLAT_SET = "test"


class RunFolderError(ValueError):
    """A run folder whose files cannot be read; the message names the file and what to do."""


def training_stages(stages: Iterable[str], phases: Iterable[str]) -> list[str]:
    """Stage folders a run trains, in order: ``[stage1, stage2, test]`` + ``[a, b]`` → stage1, stage2_a, …"""
    names: list[str] = []
    for stage in stages:
        if stage == "stage1":
            names.append("stage1")
        elif stage == "stage2":
            names.extend(f"stage2_{p}" for p in phases)
    return names


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/run_config.yaml`` as a dict (raises :class:`RunFolderError` when absent or unreadable)."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise RunFolderError(f"{path} is missing: not a run folder of train.py") from err
    except (OSError, yaml.YAMLError) as err:
        raise RunFolderError(f"{path} cannot be read: {err}") from err
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} is not a mapping of the run's settings")
    return data


def stage_steps(run_dir: Path, recorded: Mapping[str, Any]) -> tuple[dict[str, int], list[str]]:
    """Steps trained per finished stage (from the ``DONE`` markers) and the stages without a marker."""
    done: dict[str, int] = {}
    missing: list[str] = []
    for stage in training_stages(recorded.get("stages") or [], recorded.get("stage2_phases") or []):
        marker = Path(run_dir) / stage / MARKER
        if not marker.is_file():
            missing.append(stage)
            continue
        try:
            done[stage] = int(json.loads(marker.read_text()).get("global_step", -1))
        except (OSError, ValueError, AttributeError):
            done[stage] = -1  # a marker from an older version: finished, step unknown
    return done, missing


@dataclass(frozen=True)
class TestMetrics:
    """One run's test results: the metric convention and, per test set, metric name → mean."""

    convention: str
    sets: dict[str, dict[str, float]]
    convention_recorded: bool = True


def parse_test_metrics(data: Any, where: str) -> TestMetrics:
    """Both formats of ``test/metrics.json``.

    Planned: ``{"convention": "cddfuse", "sets": {"TNO": {"n_images": 42, "final": {"EN": ...},
    "stage1": {...}}}}`` (the ``final`` image is scored). Today's: a flat ``{"EN": ...}``, read as the
    single set ``test``; it has no convention, so train.py's default (``cddfuse``) is assumed.
    """
    if not isinstance(data, dict):
        raise RunFolderError(f"{where}: expected a JSON object of metrics, got {type(data).__name__}")
    recorded = "convention" in data
    convention = str(data.get("convention") or DEFAULT_CONVENTION)
    if "sets" in data:
        sets = data["sets"]
        if not isinstance(sets, dict):
            raise RunFolderError(f"{where}: `sets` must map test-set names to their results")
        out = {}
        for name, result in sets.items():
            values = result.get("final", result) if isinstance(result, dict) else None
            if not isinstance(values, dict):
                raise RunFolderError(f"{where}: sets.{name} has no `final` metrics")
            out[str(name)] = _numbers(values)
        return TestMetrics(convention, out, recorded)
    return TestMetrics(convention, {FLAT_SET: _numbers(data)}, recorded)


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_test_metrics(run_dir: Path) -> TestMetrics:
    """``run_dir/test/metrics.json``; :class:`RunFolderError` naming the file when missing or corrupt."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise RunFolderError(f"no {METRICS}: the test stage has not run") from err
    try:
        data = json.loads(text)
    except ValueError as err:
        raise RunFolderError(f"{path} is not valid JSON ({err}; truncated?)") from err
    return parse_test_metrics(data, str(path))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → ``{"a.b.c": leaf}`` (lists are leaves)."""
    if not isinstance(data, Mapping):
        return {prefix.rstrip("."): data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_ignored(key: str, ignore: Iterable[str]) -> bool:
    """``key`` is one of ``ignore`` or lies below one (``masks.source.cache_dir`` below ``masks.source``)."""
    return any(key == i or key.startswith(f"{i}.") for i in ignore)


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = (),
                   recorded_may_lack: bool = False) -> list[str]:
    """Sorted dotted keys whose values differ between two nested mappings, except ``ignore``d ones.

    ``recorded_may_lack``: ``a`` is a recorded config; a key only ``b`` has was added by newer code and is
    not compared (the rule of resuming a run and of loading a checkpoint), so older runs still match.
    """
    ignore = tuple(ignore)
    fa, fb = flatten(a), flatten(_restricted(b, a) if recorded_may_lack else b)
    keys = fa.keys() if recorded_may_lack else fa.keys() | fb.keys()
    return sorted(k for k in keys if fa.get(k) != fb.get(k) and not is_ignored(k, ignore))


def _restricted(current: Any, recorded: Any) -> Any:
    """``current`` cut to the mapping keys ``recorded`` has, recursively (a recorded empty mapping keeps
    none): what newer code added is not compared."""
    if isinstance(recorded, Mapping) and isinstance(current, Mapping):
        return {k: _restricted(current.get(k), v) for k, v in recorded.items()}
    return current
