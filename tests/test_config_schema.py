"""Typed configs (issue 10, item 3): values are checked against the constructor signatures their
``_target_`` nodes go to and a small top-level schema, before anything is written; the sweep checker and
evaluate.py apply the same checks."""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest
import yaml

from sgdfuse.orchestration.pipeline import ConfigError, validate
from tests.conftest import CONFIG_DIR, compose_train, run_script

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("value", ["no", "off", "'false'", "maybe", "1"])
def test_bool_like_strings_and_numbers_are_not_booleans(value):
    cfg = compose_train([f"model.stage1.net.use_cfc={value}"])
    with pytest.raises(ConfigError, match=r"model\.stage1\.net\.use_cfc=.*expected a bool") as info:
        validate(cfg)
    assert "FusionNet" in str(info.value) and "write true or false" in str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    ("steps.stage1=ten", r"steps\.stage1='ten': expected an int"),
    ("data.batch_size=2.5", r"data\.batch_size=2\.5: expected an int .*truncate"),
    ("seed=1.5", r"seed=1\.5: expected an int"),
    ("stages=stage1", r"stages='stage1': expected list\[str\]"),
    ("model.stage2.head.spatial_attention=no", r"head\.spatial_attention='no': expected a bool"),
    ("model.stage2.head.max_correction=big", r"head\.max_correction='big': expected a number"),
    ("model.stage2.unet.block_out_channels=[8,16.5]", r"block_out_channels\[1\]=16\.5: expected an int"),
    ("model.stage2.inference.t0=1.5", r"inference\.t0=1\.5: expected an int .*DiffusionRefiner\.infer"),
    ("model.stage2.noise_scheduler.beta_schedule=lin", r"beta_schedule='lin': expected one of 'linear'"),
    ("model.stage1.optimizer.lr=fast", r"optimizer\.lr='fast': expected a number"),
    ("model.stage2.loss.w_int=abc", r"loss\.w_int='abc': expected a number"),
    ("trainer.precision=33", r"trainer\.precision=33: expected one of"),
    ("callbacks.model_checkpoint.every_n_train_steps=1.5", r"every_n_train_steps=1\.5: expected an int"),
    ("+model.stage1.net.use_cfx=true", r"FusionNet has no parameter 'use_cfx'"),
    ("model.stage1.loss.gradient_target=sloped", r"stage1\.loss\.gradient_target='sloped': expected one of"),
    ("model.stage2.loss.gradient_target=sloped", r"stage2\.loss\.gradient_target='sloped': expected one of"),
    ("+model.stage1.loss.w_grd=3", r"fusion_loss has no parameter 'w_grd'"),
    ("run_id=nan", r"run_id=nan: expected a string .*quote it"),
])
def test_wrong_types_are_rejected_naming_key_value_and_type(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_train([override]))


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(ConfigError) as info:
        validate(compose_train(["model.stage1.net.use_cfc=no", "data.batch_size=2.5"]))
    assert "use_cfc" in str(info.value) and "batch_size" in str(info.value)


REAL = ["data.root=/data/train", "data.test_root=/data/test"]


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("extra", [[], ["preset=cpu", "debug=fast"], ["logger=many", "trainer=ddp"],
                                   ["masks=sam_tiny"], ["data=tno", "data.root=/data/TNO"],
                                   ["preset=cpu_real", *REAL], ["preset=cpu_study", *REAL]])
def test_every_shipped_config_passes_the_checks(name, extra):
    validate(compose_train([f"+experiment={name}", *extra]))


def test_kwargs_of_names_real_constructor_parameters():
    from lightning_modules.stage1 import Stage1FusionModule
    from lightning_modules.stage2 import Stage2DiffusionModule

    for cls in (Stage1FusionModule, Stage2DiffusionModule):
        assert set(cls.KWARGS_OF) <= set(inspect.signature(cls).parameters), cls


def test_the_sweep_checker_rejects_a_grid_point_of_the_wrong_type(tmp_path):
    from sgdfuse.orchestration.sweeps import SweepError, check_sweep

    sweep = {"program": "train.py", "method": "grid", "metric": {"name": "test/Qabf", "goal": "maximize"},
             "parameters": {"model.stage1.net.use_cfc": {"values": ["no", "yes"]}},
             "command": ["${env}", "python", "${program}", "+experiment=full", "${args_no_hyphens}"]}
    path = tmp_path / "ablate.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SweepError, match=r"(?s)ablate\.yaml.*use_cfc='no': expected a bool"):
        check_sweep(path)
    sweep["parameters"]["model.stage1.net.use_cfc"]["values"] = [True, False]
    path.write_text(yaml.safe_dump(sweep))
    assert len(check_sweep(path)) == 2


def test_the_evaluate_schema_rejects_wrong_types():
    from sgdfuse.orchestration.config_schema import EvaluateConfig, check_config

    check_config(compose_train(["data.root=/data/TNO"], config_name="evaluate"), EvaluateConfig)
    bad = compose_train(["data.root=/data/TNO", "grid_pairs=2.5", "wandb.enabled=off", "max_pairs=ten"],
                        config_name="evaluate")
    with pytest.raises(ConfigError) as info:
        check_config(bad, EvaluateConfig)
    for text in ("grid_pairs=2.5: expected an int", "wandb.enabled='off': expected a bool",
                 "max_pairs='ten': expected an int or null"):
        assert text in str(info.value)


@pytest.mark.slow
def test_evaluate_py_rejects_a_wrong_type_before_writing_anything(tmp_path):
    for sub in ("ir", "vi"):
        (tmp_path / "ds" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "ds" / sub / "a.png"), np.full((48, 48), 100, np.uint8))
    out = tmp_path / "out"
    proc = run_script("evaluate.py", f"data.root={tmp_path}/ds", "method=avg", "grid_pairs=2.5",
                      f"output_dir={out}", f"hydra.run.dir={tmp_path}/hydra", timeout=300)
    assert proc.returncode != 0
    assert "grid_pairs=2.5: expected an int" in proc.stderr
    assert not out.exists()
