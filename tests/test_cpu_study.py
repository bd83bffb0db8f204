"""scripts/cpu_study.sh (issue 12, item 5): the whole ablation study as Hydra multiruns, at smoke size."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, clean_env

TRAINED = ["full", "paper", "ablate_cfc", "ablate_sam", "ablate_diffusion", "ablate_hfah", "ablate_residual",
           "single_stage", "stage1_only"]


def _pairs(root: Path, n: int, size: int = 72) -> Path:
    rng = np.random.default_rng(n)
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        blob = (255 * np.exp(-((yy - 20 - 3 * i) ** 2 + (xx - 36) ** 2) / 60.0)).astype(np.uint8)
        noise = rng.integers(0, 40, (size, size), np.uint8)
        cv2.imwrite(str(root / "ir" / f"p{i}.png"), np.maximum(blob, noise))
        cv2.imwrite(str(root / "vi" / f"p{i}.png"), rng.integers(0, 255, (size, size, 3), np.uint8))
    return root


@pytest.mark.slow
def test_the_study_script_trains_every_row_shares_stage1_and_reports(tmp_path):
    train = _pairs(tmp_path / "train", 10)
    _pairs(tmp_path / "test" / "TNO", 2)
    out = tmp_path / "study"
    env = clean_env(SEEDS="0,1", OUT=str(out))
    proc = subprocess.run(["bash", str(REPO / "scripts/cpu_study.sh"), str(train), str(tmp_path / "test"),
                           "debug=fast", f"paths.cache_dir={tmp_path}/cache",
                           f"hydra.sweep.dir={tmp_path}/multirun"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in TRAINED:
        for seed in (0, 1):
            assert (out / name / f"s{seed}" / "test" / "metrics.json").is_file(), (name, seed)
    # rows that differ only in Stage II trained no Stage I of their own
    assert not (out / "full" / "s0" / "stage1").exists()
    assert (out / "stage1_only" / "s0" / "stage1" / "last.ckpt").is_file()
    for mode in ("erode", "dilate"):
        for k in (3, 5, 7, 9):
            assert (out / f"mask_{mode}" / f"s1-k{k}" / "source_run.json").is_file()
    report = out / "report"
    rows = list(csv.DictReader((report / "report.csv").open()))
    assert {r["experiment"] for r in rows if r["table"] == "ablation"} == set(TRAINED)
    assert {r["experiment"] for r in rows if r["table"] == "robustness"} == {
        "full", *(f"mask_{mode} k={k}" for mode in ("erode", "dilate") for k in (3, 5, 7, 9))}
    assert {r["n"] for r in rows} == {"2"}, "every row averages both seeds"
    assert not (report / "left_out.csv").read_text().strip().splitlines()[1:]
    assert (report / "TNO_robustness.png").stat().st_size > 0
