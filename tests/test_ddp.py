"""Two CPU processes (gloo) through train.py: one run folder, SAM cache filled once, and test metrics equal
to a single-process evaluation of the same checkpoint (no test image counted twice)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lightning_modules import load_fusion_model
from sgdfuse.metrics import FusionMetrics
from sgdfuse.orchestration.pipeline import build_datamodule
from tests.conftest import TINY_STAGE2, compose_train, run_script

TEST_PAIRS = 3  # odd: the two ranks get 2 and 1 images; a padding sampler would score one twice
OVERRIDES = [
    "+experiment=full", "preset=cpu", "debug=fast", "logger=csv", "data.num_workers=0",
    "model.stage1.net.channels=8", "model.stage1.net.num_stages=1", *TINY_STAGE2,
    "data.train.num_pairs=8", "data.train.height=48", "data.train.width=48",
    "data.val.num_pairs=1", "data.val.height=48", "data.val.width=48",
    f"data.test.num_pairs={TEST_PAIRS}", "data.test.height=48", "data.test.width=56",
    "trainer.limit_test_batches=1.0",
    "masks=sam_tiny", "masks.source.generator.points_per_side=4",
]


@pytest.mark.timeout(900)
def test_ddp_pipeline_matches_single_process_evaluation(tmp_path):
    paths = [f"paths.checkpoint_dir={tmp_path}/ck", f"paths.cache_dir={tmp_path}/cache"]
    proc = run_script("train.py", *OVERRIDES, *paths, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path}/hydra",
                      timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = sorted((tmp_path / "hydra").glob("*.log"))  # Hydra's job log per process: train.log, ..._1.log
    assert len(logs) == 2, logs
    log = "".join(p.read_text() for p in logs)

    runs = list((tmp_path / "ck" / "full").iterdir())
    assert len(runs) == 1, runs  # both ranks used the same run id
    run_dir = runs[0]
    for stage in ("stage1", "stage2_a", "stage2_b"):
        assert (run_dir / stage / "DONE").is_file() and (run_dir / stage / "last.ckpt").is_file()

    # SAM ran once per image and modality: every later prepare_data (each stage, each rank) hit the cache
    computed = [int(n) for n in re.findall(r"SAM masks \[\w+\]: \d+ pairs, (\d+) computed", log)]
    assert sum(computed) == 8 + 1 + TEST_PAIRS and len(computed) >= 6
    assert len(list((tmp_path / "cache" / "masks").glob("*/*.npz"))) == 8 + 1 + TEST_PAIRS

    assert len(list((run_dir / "test" / "synthetic" / "fused").glob("*.png"))) == TEST_PAIRS
    ddp_result = json.loads((run_dir / "test" / "metrics.json").read_text())["sets"]["synthetic"]
    assert ddp_result["n_images"] == TEST_PAIRS  # every image once, none padded in
    ddp_metrics = ddp_result["final"]
    rows = (run_dir / "test" / "synthetic" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * TEST_PAIRS  # header + stage1 and final rows of every image, from both ranks

    # the same checkpoint, one process, every test image once
    cfg = compose_train([*OVERRIDES, *paths])
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    model = load_fusion_model(run_dir / "stage2_b" / "last.ckpt")
    metrics = FusionMetrics()
    with torch.no_grad():
        for batch in datamodule.test_dataloader()[0]:
            metrics.update(model.fuse(batch)["final"], batch["ir"], batch["vis"], names=batch["name"])
    single = {k: float(v) for k, v in metrics.compute().items()}
    assert metrics.per_image().__len__() == TEST_PAIRS
    assert single.keys() == ddp_metrics.keys()
    for name, value in single.items():
        assert ddp_metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
