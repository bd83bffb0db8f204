"""Released checkpoints (weights only, loadable with weights_only=True) and fuse.py on a user's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_modules import CheckpointError, load_fusion_model
from lightning_modules.stage1 import Stage1FusionModule
from lightning_modules.stage2 import Stage2DiffusionModule
from sgdfuse.orchestration.release import export_release
from tests.conftest import NO_LOG, TINY_STAGE2_ARGS, make_batch, run_script

TINY_UNET = TINY_STAGE2_ARGS["unet"]
HEAD = {"_target_": "sgdfuse.models.stage2.residual_head.ResidualHead",
        "inner": "sgdfuse.models.stage2.hfah.HFAH", "level_channels": 8, "hidden_channels": [8, 8],
        "ratio": 4}


def _train(module: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(max_steps=2, **NO_LOG)
    trainer.fit(module, DataLoader([make_batch(b=2, h=32, w=32, seed=i) for i in range(2)], batch_size=None))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    stage1 = _train(Stage1FusionModule(net={"channels": 8, "num_stages": 1, "num_heads": 2}),
                    folder / "stage1.ckpt")
    module = Stage2DiffusionModule(head=HEAD, masks=True, phase="b", stage1_ckpt=str(stage1), unet=TINY_UNET,
                                   feature_timesteps=[5, 50])
    return _train(module, folder / "stage2_b.ckpt")


def test_release_keeps_only_inference_state_and_fuses_identically(stage2_ckpt, tmp_path):
    release = export_release(stage2_ckpt, tmp_path / "model.ckpt")
    content = torch.load(release, weights_only=True)
    assert set(content) == {"state_dict", "hyper_parameters", "sgdfuse_class", "pytorch-lightning_version",
                            "sgdfuse_version", "sgdfuse_release"}
    assert content["hyper_parameters"]["stage1_ckpt"] is None  # Stage I is inside, no run-folder path
    assert release.stat().st_size < stage2_ckpt.stat().st_size  # no optimiser, loop or callback state
    shutil.rmtree(stage2_ckpt.parent / "stage1.ckpt", ignore_errors=True)
    original, released = load_fusion_model(stage2_ckpt), load_fusion_model(release)
    batch = make_batch(b=1, h=36, w=44, seed=7)
    with torch.no_grad():
        assert torch.equal(original.fuse(batch)["final"], released.fuse(batch)["final"])


def test_a_release_from_other_code_names_the_file_and_the_mismatch(stage2_ckpt, tmp_path):
    release = export_release(stage2_ckpt, tmp_path / "model.ckpt")
    content = torch.load(release, weights_only=True)
    content["sgdfuse_version"] = "0.0.1"
    content["state_dict"] = {k.replace("refiner.head", "refiner.old_head"): v
                             for k, v in content["state_dict"].items()}
    torch.save(content, tmp_path / "old.ckpt")
    pattern = r"old\.ckpt does not fit .*Stage2DiffusionModule .*Missing key.*sgdfuse 0\.0\.1"
    with pytest.raises(CheckpointError, match=pattern):
        load_fusion_model(tmp_path / "old.ckpt")


def _pairs(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(n):
        ir = (100 + 80 * np.sin(xx / 5 + i) + rng.normal(0, 5, xx.shape)).clip(0, 255).astype(np.uint8)
        vis = np.stack([(60 + 3 * yy + 40 * c) % 256 for c in range(3)], -1).astype(np.uint8)  # BGR, coloured
        cv2.imwrite(str(root / "ir" / f"p{i}.png"), ir)
        cv2.imwrite(str(root / "vi" / f"p{i}.jpg"), vis)
    return root


def test_fuse_py_writes_one_colour_png_per_pair(stage2_ckpt, tmp_path):
    release = export_release(stage2_ckpt, tmp_path / "model.ckpt")
    pairs, out = _pairs(tmp_path / "mine"), tmp_path / "fused"
    proc = run_script("fuse.py", f"input={pairs}", f"output={out}", f"checkpoint={release}",
                      f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 fused images" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png"]
    fused = cv2.cvtColor(cv2.imread(str(out / "p0.png")), cv2.COLOR_BGR2YCrCb).astype(int)
    vis = cv2.cvtColor(cv2.imread(str(pairs / "vi" / "p0.jpg")), cv2.COLOR_BGR2YCrCb).astype(int)
    assert fused.shape == vis.shape and np.median(np.abs(fused[..., 1:] - vis[..., 1:])) <= 2  # VIS colour


def test_fuse_py_names_a_missing_checkpoint(tmp_path):
    pairs = _pairs(tmp_path / "mine", n=1)
    proc = run_script("fuse.py", f"input={pairs}", f"output={tmp_path}/out",
                      f"checkpoint={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode != 0 and "nope.ckpt" in proc.stderr


def test_the_committed_release_loads_with_weights_only_and_starts_from_its_stage1():
    path = Path(__file__).resolve().parents[1] / "release" / "sgdfuse-cpu-real" / "model.ckpt"
    content = torch.load(path, weights_only=True)
    assert content["sgdfuse_class"] == "lightning_modules.stage2.Stage2DiffusionModule"
    model = load_fusion_model(path)
    assert model.hparams.masks and model.hparams.head["_target_"].endswith("ResidualHead")
    batch = make_batch(b=1, h=40, w=56, seed=3)
    with torch.no_grad():
        out = model.fuse(batch)
    assert out["final"].shape == out["stage1"].shape == (1, 3, 40, 56)
    # the residual head's correction is bounded by max_correction / 2 in [0, 1] luminance
    assert (out["final"] - out["stage1"]).abs().max() <= model.hparams.head["max_correction"] / 2 + 1e-3
