"""A stage says at once what it is about to run, then a time estimate with the steps.* counts."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest
from torch.utils.data import DataLoader

from lightning_modules.estimate import TimeEstimate, format_duration, training_stages
from lightning_modules.stage1 import Stage1FusionModule
from tests.conftest import compose_train, make_batch, run_script
from tests.test_train import _overrides

NO_LOG = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False}
STEPS = {"stage1": 5, "stage2_a": 200000, "stage2_b": 20000, "stage2_joint": 1, "stage2_direct": 1}


def _fit(tmp_path, callback: TimeEstimate, max_steps: int = 5) -> None:
    module = Stage1FusionModule(net={"channels": 8, "num_stages": 1, "num_heads": 2})
    trainer = L.Trainer(max_steps=max_steps, callbacks=[callback], default_root_dir=str(tmp_path / "stage1"),
                        **NO_LOG)
    trainer.fit(module, DataLoader([make_batch(b=2, h=24, w=24, seed=i) for i in range(3)], batch_size=None))


def test_announces_then_estimates_with_later_stage_counts(tmp_path, caplog):
    callback = TimeEstimate(measure_steps=2, warn_after_s=1e9, steps=STEPS, stages=["stage1", "stage2"],
                            stage2_phases=["a", "b"])
    with caplog.at_level(logging.INFO, logger="lightning_modules.estimate"):
        _fit(tmp_path, callback)
    records = [r for r in caplog.records if r.name == "lightning_modules.estimate"]
    first, second = (r.getMessage() for r in records)
    assert first.startswith("stage1: 5 of 5 steps to go on cpu") and "timing 2 step(s)" in first
    expected = (r"stage1: [\d.]+ s per step \(mean of 2\) -> about [\d.]+ s for its 5 steps to go "
                r"\(steps\.stage1=5\); then steps\.stage2_a=200000, steps\.stage2_b=20000")
    assert re.search(expected, second), second
    assert records[1].levelno == logging.INFO  # under warn_after_s: no preset hint
    assert "preset=cpu" not in second
    assert 0 < callback.estimate_s < 60


def test_a_long_cpu_run_warns_and_names_the_quick_preset(tmp_path, caplog):
    callback = TimeEstimate(measure_steps=1, warn_after_s=0.0, steps=STEPS, stages=["stage1"])
    with caplog.at_level(logging.INFO, logger="lightning_modules.estimate"):
        _fit(tmp_path, callback, max_steps=3)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "use `preset=cpu`" in warning[0].getMessage()


def test_helpers_and_config():
    assert training_stages(["stage1", "stage2", "test"], ["a", "b"]) == ["stage1", "stage2_a", "stage2_b"]
    assert [format_duration(s) for s in (3.04, 600, 5 * 3600, 3 * 86400)] == ["3.0 s", "10 min", "5.0 h",
                                                                                "3.0 days"]
    cfg = compose_train(["+experiment=ablate_cfc"]).callbacks.time_estimate
    assert cfg.steps.stage2_a == 200000 and list(cfg.stage2_phases) == ["a", "b"]
    with pytest.raises(ValueError, match="measure_steps"):
        TimeEstimate(measure_steps=0)


@pytest.mark.slow
def test_train_py_prints_the_estimate(tmp_path):
    proc = run_script("train.py", *_overrides(tmp_path, "+experiment=stage1_only", "stages=[stage1]",
                                              "callbacks.time_estimate.warn_after_s=0"),
                      f"hydra.run.dir={tmp_path}/hydra")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "stage1: 3 of 3 steps to go on cpu" in out and "CPU: " in out
    assert re.search(r"per step \(mean of 2\) -> about .* use `preset=cpu`", out), out[-3000:]
