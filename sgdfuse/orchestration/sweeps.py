"""Check W&B sweep files before launching them: schema, grid, exact commands, Hydra composition.

``python -m sgdfuse.orchestration.sweeps sweeps/ablate_cfc.yaml [more.yaml ...]`` prints, for every grid
point, the command a ``wandb agent`` would run and the Hydra overrides it passes, composes each with
``configs/``, type-checks it as ``train.py``/``evaluate.py`` would (``config_schema``: e.g. ``"no"`` for a
bool), and exits non-zero with a message naming the sweep file and the offending parameter when one does
not compose (e.g. a key that is not in the config) or has the wrong type. Nothing talks to a W&B server:

- the schema check is W&B's own (``sweeps.schema_violations_from_proposed_config``);
- the grid is enumerated by W&B's own grid search (``sweeps.next_run``), in the order the server uses;
- argument formats come from ``wandb.sdk.launch.sweeps.utils.create_sweep_command_args`` and the command
  macros are substituted as ``wandb.wandb_agent.Agent._command_run`` does.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from sgdfuse.orchestration.config_schema import FILLED_BY_PIPELINE, SCHEMAS, config_problems

with warnings.catch_warnings():
    # `sweeps` 0.3.0 still declares pydantic-v1 config names; harmless, but noisy at import
    warnings.simplefilter("ignore", UserWarning)
    import sweeps as wandb_sweeps

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
#: What the agent puts for ``${env}`` and ``${interpreter}`` (wandb_agent.Agent._command_run, non-Windows).
AGENT_ENV = "/usr/bin/env"
AGENT_INTERPRETER = "python"


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file and the parameter or key at fault."""


@dataclass(frozen=True)
class GridPoint:
    """One run of a sweep: its parameter values, the agent's command and the Hydra overrides in it."""

    params: dict[str, Any]
    command: list[str]
    overrides: list[str]
    config: DictConfig


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML and validate it against W&B's sweep schema (raises :class:`SweepError`)."""
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read the sweep file: {err}") from err
    if not isinstance(sweep, dict):
        raise SweepError(f"{path}: a sweep file is a YAML mapping (program, method, parameters, command).")
    violations = wandb_sweeps.schema_violations_from_proposed_config(sweep)
    if violations:
        raise SweepError(f"{path}: not a valid W&B sweep config:\n  " + "\n  ".join(violations))
    command = sweep.get("command")
    if not command or "${program}" not in command or not any(str(c).startswith("${args") for c in command):
        raise SweepError(f"{path}: `command` must contain ${{program}} followed by an args macro such as "
                         f"${{args_no_hyphens}} (W&B's form for Hydra programs).")
    if not sweep.get("program"):
        raise SweepError(f"{path}: `program` is missing (train.py or evaluate.py).")
    return sweep


def grid(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """All parameter combinations of a grid sweep, in the order W&B's grid search proposes them."""
    if sweep.get("method") != "grid":
        raise SweepError(f"method {sweep.get('method')!r}: only grid sweeps can be expanded locally.")
    runs: list[wandb_sweeps.SweepRun] = []
    while (run := wandb_sweeps.next_run(sweep, runs)) is not None:
        run.state = wandb_sweeps.RunState.finished  # the grid search skips points that have a run
        runs.append(run)
    return [{name: spec["value"] for name, spec in run.config.items()} for run in runs]


def agent_command(sweep: dict[str, Any], params: dict[str, Any]) -> tuple[list[str], int]:
    """The command ``wandb agent`` runs for ``params`` and the index of the program in it.

    Same steps as ``Agent._command_run``: ``${envvar:NAME}`` macros first, then every ``${macro}`` chunk
    replaced by its list of arguments.
    """
    command = create_sweep_command([str(c) for c in sweep["command"]])
    args = {name: {"value": value} for name, value in params.items()}
    macros: dict[str, list[str]] = create_sweep_command_args({"args": args})
    macros |= {"env": [AGENT_ENV], "interpreter": [AGENT_INTERPRETER], "program": [sweep["program"]],
               "args_json_file": ["wandb/sweep-SWEEP_ID/config-RUN_ID.json"]}
    out: list[str] = []
    program_index = -1
    for chunk in command:
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk == "${program}":
                program_index = len(out)
            out += [str(a) for a in macros.get(chunk[2:-1]) or []]
        else:
            out.append(chunk)
    return out, program_index


def hydra_overrides(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The Hydra overrides of one grid point: everything after the program in the agent's command."""
    command, program_index = agent_command(sweep, params)
    return command[program_index + 1:]


def config_name(program: str, config_dir: Path = CONFIG_DIR) -> str:
    """``train.py`` → ``train``: the program's Hydra config (``@hydra.main(config_name=...)``)."""
    name = Path(program).stem
    if not (config_dir / f"{name}.yaml").is_file():
        raise SweepError(f"program {program}: no config {config_dir / name}.yaml to compose it with.")
    return name


def _compose(name: str, overrides: list[str]) -> DictConfig:
    return compose(config_name=name, overrides=overrides, return_hydra_config=True)


def _composes(name: str, overrides: list[str]) -> str | None:
    """None when ``overrides`` compose, else Hydra's message."""
    try:
        _compose(name, overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        return str(err).strip()
    return None


def _blame(path: Path, name: str, sweep: dict[str, Any], params: dict[str, Any]) -> str:
    """Which command entries / parameters break composition, each with Hydra's reason."""
    fixed = hydra_overrides(sweep, {})
    if (err := _composes(name, fixed)) is not None:
        return f"{path}: the fixed overrides of `command` {fixed} do not compose with {name}.yaml: {err}"
    problems = [f"parameter `{param}` (value {value!r}) is not a key of the {name} config or cannot take "
                f"that value: {err}"
                for param, value in params.items()
                if (err := _composes(name, hydra_overrides(sweep, {param: value}))) is not None]
    return f"{path}: " + "\n".join(problems or ["the grid point does not compose."])


def check_sweep(path: str | Path, config_dir: Path = CONFIG_DIR) -> list[GridPoint]:
    """Validate, expand and compose every grid point of a sweep file; raises :class:`SweepError`."""
    path = Path(path)
    sweep = load_sweep(path)
    try:
        name = config_name(sweep["program"], config_dir)
        points = grid(sweep)
    except SweepError as err:
        raise SweepError(f"{path}: {err}") from err
    out = []
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        for params in points:
            command, program_index = agent_command(sweep, params)
            overrides = command[program_index + 1:]
            try:
                cfg = _compose(name, overrides)
            except (HydraException, OmegaConfBaseException, ValueError) as err:
                raise SweepError(_blame(path, name, sweep, params)) from err
            problems = list(config_problems(cfg, SCHEMAS.get(name), FILLED_BY_PIPELINE))
            if problems:  # the checks train.py / evaluate.py apply before they write anything
                raise SweepError(f"{path}: grid point {params} composes but is rejected by the config "
                                 "schema:\n  " + "\n  ".join(problems))
            out.append(GridPoint(params=params, command=command, overrides=overrides, config=cfg))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgdfuse.orchestration.sweeps",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="sweep YAML files (e.g. sweeps/*.yaml)")
    args = parser.parse_args(argv)
    failed = 0
    for file in args.files:
        try:
            points = check_sweep(file)
        except SweepError as err:
            print(f"ERROR {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{file}: {len(points)} run(s), all compose")
        for point in points:
            print("  " + shlex.join(point.command))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
