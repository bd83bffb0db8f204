"""GPU checks (skipped, saying why, without CUDA): the paper-sized Stage-II step in bf16 and its memory, and
``train.py trainer=gpu debug=fast`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import TINY_STAGE2, compose_train, make_batch, run_script
from tests.helpers.run_if import RunIf
from tests.test_train import _overrides

#: Peak memory allowed for one paper-sized Stage-II training step (batch 24 × 160², bf16 autocast):
#: the paper's batch must fit a 40 GB A100.
PAPER_STEP_MAX_GIB = 40.0


def _paper_stage2(phase: str) -> torch.nn.Module:
    """Stage II exactly as configs/ compose it for a paper run (Stage I from its config, untrained)."""
    cfg = compose_train([])
    stage1_net = dict(cfg.model.stage1.net)
    return instantiate(cfg.model.stage2, phase=phase, stage1_ckpt=None, stage1_net=stage1_net, masks=True)


@RunIf(min_gpus=1, bf16=True)
@pytest.mark.parametrize("phase", ["a", "joint"])
def test_paper_sized_stage2_step_in_bf16_fits_and_is_finite(phase: str) -> None:
    cfg = compose_train([])
    batch_size, crop = cfg.data.batch_size, cfg.data.crop_size
    assert (batch_size, crop) == (24, 160)
    module = _paper_stage2(phase).cuda().to(memory_format=torch.channels_last)
    batch = {k: v.cuda() if torch.is_tensor(v) else v
             for k, v in make_batch(b=batch_size, h=crop, w=crop).items()}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = module.compute_losses(batch)
    losses["loss"].backward()
    torch.cuda.synchronize()
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    print(f"phase {phase}: peak {peak_gib:.2f} GiB, losses", {k: float(v) for k, v in losses.items()})
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in module.refiner.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert peak_gib < PAPER_STEP_MAX_GIB, f"phase {phase}: {peak_gib:.1f} GiB at batch {batch_size}×{crop}²"


@RunIf(min_gpus=1, bf16=True)
def test_bf16_and_fp32_losses_agree_on_gpu() -> None:
    module = _paper_stage2("joint").cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in make_batch(b=2, h=64, w=64).items()}
    t, noise = torch.tensor([30, 700], device="cuda"), torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        fp32 = module.compute_losses(batch, t, noise)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = module.compute_losses(batch, t, noise)
    for key in fp32:
        assert float(bf16[key]) == pytest.approx(float(fp32[key]), rel=0.03), key


@RunIf(min_gpus=1)
def test_train_py_with_trainer_gpu_debug_fast(tmp_path) -> None:
    # trainer=gpu after preset=cpu: the command line's trainer wins over the preset's
    proc = run_script("train.py", *_overrides(tmp_path, "trainer=gpu", "run_id=gpu", *TINY_STAGE2),
                      f"hydra.run.dir={tmp_path}/hydra")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "precision bf16-mixed" in out and "to go on 1 × " in out  # the TimeEstimate line: on the GPU
    metrics = _final_metrics(tmp_path / "checkpoints" / "default" / "gpu" / "test" / "metrics.json")
    assert {"EN", "Qabf", "SSIM"} <= set(metrics) and all(v == v for v in metrics.values())  # no NaN


def _final_metrics(path) -> dict[str, float]:
    """Final-image means of the first test set: the planned {"sets": {...}} format or the flat one."""
    data = json.loads(path.read_text())
    return next(iter(data["sets"].values()))["final"] if "sets" in data else data
