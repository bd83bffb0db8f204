"""Exact resume: a run SIGKILLed mid-stage and restarted with its run id ends bit-identical to an
uninterrupted run, and finished stages are not trained again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sgdfuse.orchestration.pipeline import resume_checkpoint
from tests.conftest import REPO, TINY_STAGE2, clean_env

STEPS = 14
BASE = [
    "preset=cpu", "debug=fast", "logger=csv", "trainer.deterministic=true", "seed=7",
    "model.stage1.net.channels=8", "model.stage1.net.num_stages=1", "model.stage1.net.num_heads=2",
    "data.train.num_pairs=10", "data.train.height=48", "data.train.width=48", "data.batch_size=2",
    "data.crop_size=32", "data.val.num_pairs=1", "data.val.height=32", "data.val.width=32",
    "data.test.num_pairs=1", "data.test.height=32", "data.test.width=32", "data.num_workers=0",
    f"steps.stage1={STEPS}", f"steps.stage2_a={STEPS}", "steps.stage2_b=4",
    "callbacks.model_checkpoint.every_n_train_steps=3", *TINY_STAGE2,
    "model.stage2.unet.dropout=0.1",  # dropout draws from the global RNG: resume must restore it
]


def _cmd(root: Path, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *BASE, *extra, f"run_id={run_id}",
            f"paths.checkpoint_dir={root}", f"paths.cache_dir={root}/cache", f"hydra.run.dir={root}/hydra"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_after_first_checkpoint(cmd: list[str], stage_dir: Path) -> None:
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(stage_dir.glob("step*.ckpt")):
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; raise STEPS"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _assert_same_weights(a: Path, b: Path) -> None:
    straight, again = _state(a), _state(b)
    assert straight.keys() == again.keys()
    for key in straight:
        assert torch.equal(straight[key], again[key]), key


def test_sigkill_in_stage1_then_resume_equals_uninterrupted(tmp_path):
    extra = ("+experiment=stage1_only", "stages=[stage1]")
    _run(_cmd(tmp_path, "straight", *extra))
    killed = _cmd(tmp_path, "killed", *extra)
    stage_dir = tmp_path / "stage1_only" / "killed" / "stage1"
    _kill_after_first_checkpoint(killed, stage_dir)
    assert not (stage_dir / "DONE").exists()
    resumed_from = torch.load(resume_checkpoint(stage_dir), weights_only=True)["global_step"]
    assert 0 < resumed_from < STEPS
    _run(killed)
    _assert_same_weights(tmp_path / "stage1_only" / "straight" / "stage1" / "last.ckpt",
                         stage_dir / "last.ckpt")


def test_sigkill_in_stage2_resumes_it_exactly_and_keeps_stage1(tmp_path):
    """Stage II draws noise and timesteps: equality needs the RNG states restored too."""
    extra = ("+experiment=full", "stages=[stage1,stage2]")
    _run(_cmd(tmp_path, "straight", *extra))
    killed = _cmd(tmp_path, "killed", *extra)
    run_dir = tmp_path / "full" / "killed"
    _kill_after_first_checkpoint(killed, run_dir / "stage2_a")
    assert (run_dir / "stage1" / "DONE").exists() and not (run_dir / "stage2_a" / "DONE").exists()
    stage1_mtime = (run_dir / "stage1" / "last.ckpt").stat().st_mtime_ns
    _run(killed)
    assert (run_dir / "stage1" / "last.ckpt").stat().st_mtime_ns == stage1_mtime  # not trained again
    for stage in ("stage1", "stage2_a", "stage2_b"):
        _assert_same_weights(tmp_path / "full" / "straight" / stage / "last.ckpt",
                             run_dir / stage / "last.ckpt")


def test_corrupt_last_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    stage_dir = tmp_path / "stage1"
    stage_dir.mkdir()
    good = stage_dir / "step0000003.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, good)
    (stage_dir / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(stage_dir) == str(good)
    assert "previous good checkpoint" in caplog.text


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    from lightning_modules import CheckpointError

    (tmp_path / "last.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="delete the stage folder"):
        resume_checkpoint(tmp_path)
