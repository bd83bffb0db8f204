"""train.py end to end on the synthetic data: checkpoints, markers, resume, test results, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lightning_modules import load_fusion_model
from sgdfuse.orchestration.pipeline import ConfigError, run
from tests.conftest import TINY_STAGE2, compose_train, run_script

GENERIC = ["preset=cpu", "debug=fast", "logger=csv", "model.stage1.net.channels=8",
           "model.stage1.net.num_stages=1", "data.num_workers=0"]
TINY = [*GENERIC, "data.test.num_pairs=2", "data.test.height=48", "data.test.width=56",
        "data.val.num_pairs=1", "data.val.height=48", "data.val.width=56"]


def _overrides(root: Path, *extra: str, base: list[str] = TINY) -> list[str]:
    return [*base, f"paths.checkpoint_dir={root}/checkpoints", f"paths.cache_dir={root}/cache", *extra]


def _train(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_script("train.py", *_overrides(root, *extra), f"hydra.run.dir={root}/hydra")


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    proc = _train(root, "+experiment=stage1_only", "run_id=r1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "checkpoints" / "stage1_only" / "r1"


def test_writes_checkpoint_marker_config_and_test_results(stage1_run):
    assert (stage1_run / "stage1" / "last.ckpt").is_file()
    assert json.loads((stage1_run / "stage1" / "DONE").read_text())["global_step"] == 3
    assert (stage1_run / "run_config.yaml").is_file()
    summary = json.loads((stage1_run / "test" / "metrics.json").read_text())
    assert list(summary["sets"]) == ["synthetic"] and summary["convention"] == "cddfuse"
    result = summary["sets"]["synthetic"]
    assert result["n_images"] == 2 and set(result) == {"n_images", "final"}  # Stage I alone: one output
    assert {"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"} <= set(result["final"])
    assert all(np.isfinite(v) for v in result["final"].values())
    assert len(list((stage1_run / "test" / "synthetic" / "fused").glob("*.png"))) == 2
    assert (stage1_run / "test" / "synthetic" / "metrics.md").is_file()


def test_checkpoint_loads_back_and_reproduces_the_test_images(stage1_run):
    ckpt = torch.load(stage1_run / "stage1" / "last.ckpt", weights_only=True)  # plain containers only
    assert ckpt["global_step"] == 3
    model = load_fusion_model(stage1_run / "stage1" / "last.ckpt")
    cfg = compose_train(_overrides(stage1_run.parent.parent.parent, "+experiment=stage1_only"))
    from sgdfuse.orchestration.pipeline import build_datamodule

    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    with torch.no_grad():
        fused = model.fuse(batch)["final"][0].permute(1, 2, 0).numpy()
    png = stage1_run / "test" / "synthetic" / "fused" / f"{batch['name'][0]}.png"
    written = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert np.abs(np.round(fused * 255).astype(int) - written.astype(int)).max() <= 1


def test_restart_with_the_same_run_id_skips_finished_stages(stage1_run):
    ckpt = stage1_run / "stage1" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    proc = _train(stage1_run.parent.parent.parent, "+experiment=stage1_only", "run_id=r1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished earlier" in proc.stderr + proc.stdout
    assert ckpt.stat().st_mtime_ns == before


def test_same_run_id_with_another_config_is_refused(stage1_run):
    cfg = compose_train(_overrides(stage1_run.parent.parent.parent, "+experiment=stage1_only", "run_id=r1",
                                   "model.stage1.net.use_cfc=false"))
    with pytest.raises(ConfigError, match="model.stage1.net.use_cfc"):
        run(cfg)


def test_missing_data_folder_fails_before_training(tmp_path):
    cfg = compose_train(_overrides(tmp_path, "+experiment=stage1_only", "data=folder",
                                   f"data.root={tmp_path}/nowhere", "masks=none", "run_id=bad", base=GENERIC))
    with pytest.raises(Exception, match="nowhere"):
        run(cfg)
    assert not (tmp_path / "checkpoints" / "stage1_only" / "bad" / "stage1").exists()


def test_ir_file_without_vis_twin_names_it(tmp_path):
    for sub in ("ir", "vi"):
        (tmp_path / "ds" / sub).mkdir(parents=True)
    img = np.zeros((16, 16), np.uint8)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "ds" / "ir" / name), img)
    cv2.imwrite(str(tmp_path / "ds" / "vi" / "a.png"), img)
    cfg = compose_train(_overrides(tmp_path, "+experiment=stage1_only", "data=folder",
                                   f"data.root={tmp_path}/ds", "masks=none", "run_id=bad", base=GENERIC))
    with pytest.raises(Exception, match=r"without a twin in vi/: b\.png"):
        run(cfg)
    assert not (tmp_path / "checkpoints" / "stage1_only" / "bad" / "stage1").exists()


def test_invalid_stage_names_are_rejected_before_work(tmp_path):
    cfg = compose_train(_overrides(tmp_path, "stages=[stage1,stage3]"))
    with pytest.raises(ConfigError, match="stage3"):
        run(cfg)

STAGE_DIRS = {
    "full": ["stage1", "stage2_a", "stage2_b"],
    "ablate_sam": ["stage1", "stage2_a", "stage2_b"],
    "ablate_diffusion": ["stage1", "stage2_direct"],
    "ablate_hfah": ["stage1", "stage2_a", "stage2_b"],
    "single_stage": ["stage2_a", "stage2_b"],
    "train_mask_dilate": ["stage1", "stage2_a", "stage2_b"],  # mask_dilate trains nothing: test_report.py
}


@pytest.mark.parametrize("experiment", sorted(STAGE_DIRS))
def test_every_two_stage_experiment_trains_and_tests_end_to_end(tmp_path, experiment):
    proc = _train(tmp_path, f"+experiment={experiment}", "run_id=e2e", *TINY_STAGE2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "checkpoints" / experiment / "e2e"
    trained = sorted(p.name for p in run_dir.iterdir() if (p / "DONE").is_file())
    assert trained == STAGE_DIRS[experiment]
    result = json.loads((run_dir / "test" / "metrics.json").read_text())["sets"]["synthetic"]
    outputs = {"final"} if experiment == "single_stage" else {"stage1", "final"}
    assert set(result) == {"n_images", *outputs}
    for output in outputs:
        values = result[output]
        assert {"EN", "Qabf", "SSIM", "VIF"} <= set(values) and all(np.isfinite(v) for v in values.values())
        folder = "fused" if output == "final" else output
        assert len(list((run_dir / "test" / "synthetic" / folder).glob("*.png"))) == 2
    final = torch.load(run_dir / STAGE_DIRS[experiment][-1] / "last.ckpt", weights_only=True)
    assert final["sgdfuse_class"] == "lightning_modules.stage2.Stage2DiffusionModule"


def test_only_global_rank_zero_records_the_run_config(tmp_path, monkeypatch):
    """Under srun every task runs train.py before the process group exists: only task 0 writes."""
    from sgdfuse.orchestration.distributed import is_global_rank_zero
    from sgdfuse.orchestration.pipeline import check_run_config

    assert is_global_rank_zero({}) and is_global_rank_zero({"SLURM_PROCID": "0", "LOCAL_RANK": "0"})
    assert not is_global_rank_zero({"SLURM_PROCID": "1"}) and not is_global_rank_zero({"NODE_RANK": "1"})
    cfg = compose_train(_overrides(tmp_path, "run_id=r"))
    monkeypatch.setenv("SLURM_PROCID", "1")
    check_run_config(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "run_config.yaml").exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    check_run_config(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "run_config.yaml").is_file()
