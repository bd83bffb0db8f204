"""Test-only experiments (mask_erode / mask_dilate) find the `full` run of their seed, or say why not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sgdfuse.orchestration import pipeline
from sgdfuse.orchestration.pipeline import check_run_config, run
from sgdfuse.orchestration.run_folders import MARKER, training_stages
from sgdfuse.orchestration.source_run import SourceRunError, find_source_run
from tests.conftest import compose_train

SMALL = ["preset=cpu", "logger=csv"]


def _cfg(root: Path, *overrides: str):
    paths = [f"paths.checkpoint_dir={root}", f"paths.cache_dir={root}/cache"]
    return compose_train([*SMALL, *paths, *overrides])


def fake_run(root: Path, run_id: str, *overrides: str, experiment: str = "full",
             finished: bool = True) -> Path:
    """A run folder as train.py leaves it (run_config.yaml from the real config; DONE markers; last.ckpt)."""
    cfg = _cfg(root, f"+experiment={experiment}", f"run_id={run_id}", *overrides)
    run_dir = Path(cfg.paths.run_dir)
    check_run_config(cfg, run_dir)
    stages = training_stages(cfg.stages, cfg.stage2_phases)
    for stage in stages:
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / "last.ckpt").write_bytes(b"")
        if finished or stage != stages[-1]:
            (run_dir / stage / MARKER).write_text(json.dumps({"global_step": 300}))
    return run_dir


def test_finds_the_finished_full_run_of_the_same_seed_and_settings(tmp_path):
    fake_run(tmp_path, "seed1", "seed=1")
    fake_run(tmp_path, "other", "seed=0", "data.crop_size=32")  # trained on other crops
    fake_run(tmp_path, "running", "seed=0", finished=False)
    wanted = fake_run(tmp_path, "good", "seed=0")
    cfg = _cfg(tmp_path, "+experiment=mask_erode", "seed=0", "masks.perturb.kernel_size=9",
               "data.test.num_pairs=4")  # the test split and the masks' perturbation may differ
    source = find_source_run(cfg)
    assert source.run_dir == wanted and source.checkpoint == wanted / "stage2_b" / "last.ckpt"
    assert source.steps == {"stage1": 300, "stage2_a": 300, "stage2_b": 300}
    path = source.record(tmp_path / "mask_run")
    assert json.loads(path.read_text())["run_id"] == "good"


def test_a_run_recorded_before_a_setting_existed_is_still_the_source(tmp_path):
    wanted = fake_run(tmp_path, "old", "seed=0")
    recorded = OmegaConf.load(wanted / "run_config.yaml")
    del recorded.model.stage2.loss["intensity_target"]  # as written by code before that option
    OmegaConf.save(recorded, wanted / "run_config.yaml")
    cfg = _cfg(tmp_path, "+experiment=mask_erode", "seed=0")
    assert find_source_run(cfg).run_dir == wanted
    changed = _cfg(tmp_path, "+experiment=mask_erode", "seed=0", "model.stage2.loss.w_grad=3")
    with pytest.raises(SourceRunError, match="model.stage2.loss.w_grad"):  # a recorded key still counts
        find_source_run(changed)


def test_no_matching_run_names_the_folder_each_reason_and_the_training_command(tmp_path):
    fake_run(tmp_path, "seed1", "seed=1")
    fake_run(tmp_path, "other", "seed=0", "data.crop_size=32")
    fake_run(tmp_path, "running", "seed=0", finished=False)
    cfg = _cfg(tmp_path, "+experiment=mask_dilate", "seed=0")
    with pytest.raises(SourceRunError) as err:
        find_source_run(cfg)
    message = str(err.value)
    assert (f"no finished `full` run with seed=0 and this run's data, model and masks in {tmp_path}/full"
            in message)
    assert "seed1: seed 1" in message and "other: other settings (data.crop_size)" in message
    assert "running: unfinished (stage2_b has no DONE marker)" in message
    assert "python train.py +experiment=full seed=0" in message and "source_run=PATH" in message


def test_no_folder_at_all_and_several_matches(tmp_path):
    cfg = _cfg(tmp_path, "+experiment=mask_erode", "seed=2")
    with pytest.raises(SourceRunError, match=r"in .*/full \(no runs there\)\. Train it first"):
        find_source_run(cfg)
    fake_run(tmp_path, "a", "seed=2")
    fake_run(tmp_path, "b", "seed=2")
    with pytest.raises(SourceRunError, match=r"2 finished `full` runs .* seed=2 .*: a, b\. Choose one with "
                                             r"source_run="):
        find_source_run(cfg)
    explicit = find_source_run(_cfg(tmp_path, "+experiment=mask_erode", "seed=2",
                                    f"source_run={tmp_path}/full/b"))
    assert explicit.run_dir == tmp_path / "full" / "b"


def test_explicit_source_run_must_be_finished_and_source_keys_only_for_test_only_runs(tmp_path):
    running = fake_run(tmp_path, "running", finished=False)
    with pytest.raises(SourceRunError, match="cannot be evaluated: unfinished"):
        find_source_run(_cfg(tmp_path, "+experiment=mask_erode", f"source_run={running}"))
    with pytest.raises(SourceRunError, match=r"use them with stages: \[test\]"):
        find_source_run(_cfg(tmp_path, "+experiment=full", "source_experiment=full"))
    assert find_source_run(_cfg(tmp_path, "+experiment=full")) is None


def test_a_test_only_run_without_its_source_fails_before_creating_its_folder(tmp_path):
    cfg = _cfg(tmp_path, "+experiment=mask_erode", "run_id=m", "seed=0")
    with pytest.raises(SourceRunError, match="Train it first"):
        run(cfg)
    assert not (tmp_path / "mask_erode").exists()


def test_stage_folder_names_agree_with_the_pipeline():
    assert MARKER == pipeline.MARKER
    for experiment in ("full", "ablate_diffusion", "single_stage", "stage1_only", "mask_erode"):
        cfg = compose_train([f"+experiment={experiment}"])
        assert training_stages(cfg.stages, cfg.stage2_phases) == pipeline._training_stages(cfg)
    joint = OmegaConf.create({"stages": ["stage2"], "stage2_phases": ["joint"]})
    assert training_stages(joint.stages, joint.stage2_phases) == pipeline._training_stages(joint)
    assert pipeline._training_stages(joint) == ["stage2_joint"]


def test_differing_keys_with_a_recorded_config_skips_only_what_newer_code_added():
    from sgdfuse.orchestration.run_folders import differing_keys

    recorded = {"a": {"b": 1, "c": {}}, "d": [1, 2], "e": {"x": 1}}
    current = {"a": {"b": 1, "c": {"new": 3}, "added": 5}, "d": [1, 2], "e": 7, "f": 1}
    assert differing_keys(recorded, current, recorded_may_lack=True) == ["e.x"]  # a recorded leaf changed
    assert differing_keys(recorded, current) == ["a.added", "a.c", "a.c.new", "e", "e.x", "f"]
