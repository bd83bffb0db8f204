"""evaluate.py / orchestration.evaluation: files written, rows, methods, and errors that name the bad pair."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse.data.base import DataError
from sgdfuse.data.folder import FolderPairs
from sgdfuse.masks.base import MaskSource
from sgdfuse.metrics import DEFAULT_METRICS, FusionMetrics
from sgdfuse.orchestration.evaluation import baseline_fuser, evaluate, evaluate_from_config
from tests.conftest import REPO, compose_train, make_batch

NAMES = ["a01", "a02", "b03"]
SET = "folder"  # data=folder names its test set "folder"; results go to <out>/<set>/


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # contending threads on this shared 2-core machine are far slower than one
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """Three 8-bit pairs of 64×80 (IR grey, VIS colour JPEG-free PNG), smooth structure plus noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
    yy, xx = np.mgrid[0:64, 0:80]
    for i, name in enumerate(NAMES):
        ir = (120 + 80 * np.sin(xx / (6 + i)) + rng.normal(0, 8, xx.shape)).clip(0, 255).astype(np.uint8)
        vis = np.stack([(yy * 3 + 10 * c + rng.normal(0, 6, yy.shape)) % 256 for c in range(3)], -1)
        cv2.imwrite(str(root / "ir" / f"{name}.png"), ir)
        cv2.imwrite(str(root / "vi" / f"{name}.png"), vis.astype(np.uint8))
    return root


def _cfg(root: Path, out: Path, *overrides: str):
    return compose_train([f"data.root={root}", f"output_dir={out}", *overrides], config_name="evaluate")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_avg_baseline_writes_all_outputs_with_the_right_rows(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "avg"
    results = evaluate_from_config(_cfg(tiny_root, out, "method=avg", "grid_pairs=2"), out)
    means = results[SET]["final"]
    assert set(results[SET]) == {"n_images", "final"} and results[SET]["n_images"] == 3
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["sets"][SET]["final"] == means and summary["convention"] == "cddfuse"
    assert sorted(p.name for p in (out / SET / "fused").iterdir()) == [f"{n}.png" for n in NAMES]
    rows = _rows(out / SET / "metrics.csv")
    assert [r["name"] for r in rows] == NAMES and list(rows[0]) == ["name", "output", *DEFAULT_METRICS]
    for key in DEFAULT_METRICS:  # the Markdown/returned mean is the mean of the CSV rows
        assert means[key] == pytest.approx(np.mean([float(r[key]) for r in rows]), rel=1e-5, abs=1e-6)
    table = (out / SET / "metrics.md").read_text()
    assert "Mean over 3 images" in table and f"{means['EN']:.4f}" in table
    assert "| output | EN | SD |" in table and "| final |" in table
    grid = cv2.imread(str(out / SET / "grid.png"))
    # 2 rows of 256 px + a 4 px gap; columns IR | VIS | final (no masks, no Stage I for a baseline).
    assert grid.shape[0] == 2 * 256 + 4 and grid.shape[1] == 3 * round(80 * 256 / 64) + 2 * 2 * 4
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files


def test_rows_equal_the_metric_on_the_pairs(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "max"
    evaluate_from_config(_cfg(tiny_root, out, "method=max", "metrics=[EN,MI,SSIM,Qabf]"), out)
    pairs = FolderPairs(tiny_root)
    for row, index in zip(_rows(out / SET / "metrics.csv"), range(len(pairs)), strict=True):
        pair = pairs[index]
        ir = torch.from_numpy(pair.ir.copy())[None, None]
        vis = torch.from_numpy(pair.vis.copy()).permute(2, 0, 1)[None]
        fused = baseline_fuser("max")({"ir": ir, "vis": vis})["final"]
        metric = FusionMetrics(["EN", "MI", "SSIM", "Qabf"])
        metric.update(fused, ir, vis)
        for key, value in metric.compute().items():
            assert float(row[key]) == pytest.approx(float(value), abs=2e-6), (row["name"], key)


def test_folder_method_rescores_written_pngs_identically(tiny_root: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "run", tmp_path / "rescored"
    evaluate_from_config(_cfg(tiny_root, first, "method=avg"), first)
    fused = first / SET / "fused"
    evaluate_from_config(_cfg(tiny_root, second, "method=folder", f"fused_dir={fused}"), second)
    assert _rows(first / SET / "metrics.csv") == _rows(second / SET / "metrics.csv")  # PNGs = scored pixels
    assert not (second / SET / "fused").exists()  # existing fused images are not copied


def test_missing_fused_file_names_the_pair(tiny_root: Path, tmp_path: Path) -> None:
    fused = tmp_path / "fused"
    fused.mkdir()
    for name in NAMES[:2]:
        cv2.imwrite(str(fused / f"{name}.png"), np.zeros((64, 80), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"'b03'.*no fused image"):
        evaluate_from_config(_cfg(tiny_root, out, "method=folder", f"fused_dir={fused}"), out)
    assert not (out / SET / "metrics.csv").exists()  # no table from a partial dataset


def test_fused_image_of_another_size_names_the_pair(tiny_root: Path, tmp_path: Path) -> None:
    fused = tmp_path / "fused"
    fused.mkdir()
    for name in NAMES:
        cv2.imwrite(str(fused / f"{name}.png"), np.zeros((64, 80 if name != "a02" else 78), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"a02.*sizes differ"):
        evaluate_from_config(_cfg(tiny_root, out, "method=folder", f"fused_dir={fused}"), out)


def test_nan_output_stops_the_run_naming_the_pair(tiny_root: Path, tmp_path: Path) -> None:
    def broken(batch):
        final = baseline_fuser("avg")(batch)["final"]
        if batch["name"][0] == "a02":
            final[..., 3, 3] = float("nan")
        return {"final": final}

    with pytest.raises(ValueError, match=r"a02.*NaN"):
        evaluate(FolderPairs(tiny_root), broken, tmp_path / "out")
    assert not (tmp_path / "out" / "test" / "metrics.csv").exists()


def test_checkpoint_method_uses_the_models_fuse(tiny_root: Path, tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from lightning_modules.stage1 import Stage1FusionModule

    module = Stage1FusionModule(net={"channels": 8, "num_stages": 1, "num_heads": 2})
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader([make_batch(b=1, h=16, w=16)], batch_size=None))
    ckpt = tmp_path / "s1.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "ckpt_eval"
    evaluate_from_config(_cfg(tiny_root, out, "method=checkpoint", f"checkpoint={ckpt}", "grid_pairs=1"), out)
    assert not (out / SET / "stage1").exists()  # a Stage-I model's "stage1" is its final image
    module.eval()
    pair = FolderPairs(tiny_root)[0]
    batch = {"ir": torch.from_numpy(pair.ir.copy())[None, None],
             "vis": torch.from_numpy(pair.vis.copy()).permute(2, 0, 1)[None]}
    with torch.no_grad():
        want = module.fuse(batch)["final"][0].permute(1, 2, 0).numpy()
    got = cv2.imread(str(out / SET / "fused" / f"{NAMES[0]}.png"))[..., ::-1]
    np.testing.assert_array_equal(got, np.round(want.clip(0, 1) * 255).astype(np.uint8))
    grid = cv2.imread(str(out / SET / "grid.png"))  # IR | VIS | final
    assert grid.shape[1] == 3 * 320 + 2 * 2 * 4


class _CentreMasks(MaskSource):
    def load(self, pair):
        h, w = pair.ir.shape
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2] = 1
        return mask, 1 - mask


def test_two_stage_outputs_and_masks_get_their_own_files_and_columns(tiny_root: Path, tmp_path: Path) -> None:
    seen = []

    def two_stage(batch):
        seen.append(float(batch["mask_ir"].sum()))  # the fuser receives the masks
        final = baseline_fuser("max")(batch)["final"]
        return {"stage1": baseline_fuser("avg")(batch)["final"], "final": final}

    out = tmp_path / "two"
    results = evaluate(FolderPairs(tiny_root), two_stage, out, masks=_CentreMasks(), grid_pairs=1, name=SET)
    assert list(results[SET]) == ["n_images", "stage1", "final"]  # both outputs scored, Stage I first
    rows = _rows(out / SET / "metrics.csv")
    assert [r["output"] for r in rows] == ["stage1"] * 3 + ["final"] * 3
    assert seen == [16.0 * 20.0] * 3
    assert sorted(p.name for p in (out / SET / "stage1").iterdir()) == [f"{n}.png" for n in NAMES]
    grid = cv2.imread(str(out / SET / "grid.png"))  # IR | VIS | mask IR | mask VIS | Stage I | final
    assert grid.shape[:2] == (256, 6 * 320 + 5 * 2 * 4)


def test_bad_method_arguments(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fused_dir"):
        evaluate_from_config(_cfg(tiny_root, tmp_path, "method=folder"), tmp_path)
    with pytest.raises(ValueError, match="unknown evaluation method"):
        evaluate_from_config(_cfg(tiny_root, tmp_path, "method=median"), tmp_path)


def test_evaluate_py_entry_point(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"data.root={tiny_root}", "method=max",
                           f"output_dir={out}", "metrics=[EN,SSIM]"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "EN=" in proc.stdout and (out / SET / "grid.png").is_file()
    assert [r["name"] for r in _rows(out / SET / "metrics.csv")] == NAMES


def test_tno_subset(real_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tno"
    cfg = compose_train(["data=tno", f"data.root={real_data / 'TNO'}", f"output_dir={out}", "max_pairs=3"],
                        config_name="evaluate")
    means = evaluate_from_config(cfg, out)["TNO"]["final"]
    rows = _rows(out / "TNO" / "metrics.csv")
    assert [r["name"] for r in rows] == ["01", "02", "03"]
    assert len(list((out / "TNO" / "fused").iterdir())) == 3 and (out / "TNO" / "grid.png").is_file()
    assert 0.5 < means["SSIM"] < 2.0 and means["EN"] > 5.0


def test_a_null_test_set_is_left_out(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "avg"
    results = evaluate(pairs={"kept": FolderPairs(tiny_root), "dropped": None}, fuser=baseline_fuser("avg"),
                       output_dir=out, metrics=["EN"])
    assert list(results) == ["kept"] and not (out / "dropped").exists()
