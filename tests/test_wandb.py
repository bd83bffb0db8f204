"""W&B is the default logger: without an API key it logs offline (said once) and nothing fails."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import clean_env, run_script


def _offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("WANDB_") and k != "NETRC"}
    return {**env, "HOME": str(home)}  # no ~/.netrc with a W&B key


def _offline_run(wandb_dir: Path) -> tuple[bytes, Path]:
    """(the run's record log, its media folder). Offline runs keep history only in the binary
    ``run-*.wandb`` log (protobuf records, keys stored as plain UTF-8), until ``wandb sync``."""
    runs = sorted(wandb_dir.glob("offline-run-*"))
    assert len(runs) == 1, list(wandb_dir.iterdir()) if wandb_dir.exists() else wandb_dir
    return next(runs[0].glob("run-*.wandb")).read_bytes(), runs[0] / "files" / "media" / "images"


@pytest.mark.timeout(300)
def test_train_logs_offline_to_one_run_across_stages(tmp_path):
    proc = run_script(
        "train.py", "+experiment=stage1_only", "preset=cpu", "debug=fast",
        "logger=wandb", "run_id=w1", "model.stage1.net.channels=8", "model.stage1.net.num_stages=1",
        "data.test.num_pairs=1", "data.test.height=48", "data.test.width=48", "data.val.num_pairs=1",
        "data.val.height=48", "data.val.width=48", "callbacks.fusion_images.every_n_steps=1",
        f"paths.checkpoint_dir={tmp_path}/ck", f"hydra.run.dir={tmp_path}/hydra",
        env=_offline_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("logging OFFLINE") == 1
    records, media = _offline_run(tmp_path / "ck" / "stage1_only" / "w1" / "wandb")
    for key in (b"stage1-train/loss", b"stage1-data/mask_ir_coverage", b"test/synthetic/Qabf",
                b"test/synthetic/SSIM"):
        assert key in records, key
    assert b"test-test/" not in records  # the test stage's keys are not prefixed twice
    # the image panels (IR | VIS | masks | Stage I | final), one per logged step
    assert len(list((media / "stage1-samples").glob("panel_*.png"))) >= 3


@pytest.mark.timeout(300)
def test_evaluate_logs_test_metrics_and_grid(tmp_path):
    for sub in ("ir", "vi"):
        (tmp_path / "ds" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(tmp_path / "ds" / "ir" / f"{i}.png"), rng.integers(0, 255, (48, 56), np.uint8))
        cv2.imwrite(str(tmp_path / "ds" / "vi" / f"{i}.png"), rng.integers(0, 255, (48, 56, 3), np.uint8))
    out = tmp_path / "out"
    proc = run_script("evaluate.py", f"data.root={tmp_path}/ds", "method=avg", "wandb.enabled=true",
                      f"output_dir={out}", f"hydra.run.dir={tmp_path}/hydra", env=_offline_env(tmp_path),
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records, media = _offline_run(out / "wandb")
    for key in (b"test/folder/EN", b"test/folder/Qabf", b"test/folder/SSIM"):
        assert key in records, key
    assert list((media / "test" / "folder").glob("grid_*.png"))
