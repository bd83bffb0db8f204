"""bf16 autocast on CPU, and the PerformanceTuning callback (channels-last, compile list, cuDNN flag)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.performance import DEFAULT_COMPILE, PerformanceTuning, submodule
from lightning_modules.stage1 import Stage1FusionModule
from lightning_modules.stage2 import Stage2DiffusionModule
from tests.conftest import NO_LOG, TINY_STAGE1_NET, TINY_STAGE2_ARGS, compose_train, make_batch

TINY_STAGE1 = TINY_STAGE1_NET
TINY_STAGE2 = {**TINY_STAGE2_ARGS, "stage1_net": TINY_STAGE1}
#: bf16 keeps 8 significant bits (relative rounding 2^-9 per op); through a tiny UNet and the losses the
#: observed gap is ~1e-3 relative; 3 % leaves room while catching a wrong dtype path (a loss off by 2x).
BF16_RTOL = 0.03


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("phase", ["a", "joint"])
def test_bf16_autocast_stage2_loss_is_finite_and_close_to_fp32(phase: str) -> None:
    module = Stage2DiffusionModule(phase=phase, **TINY_STAGE2)
    batch = make_batch(b=2, h=32, w=32)
    timesteps = torch.tensor([30, 700])
    noise = torch.randn(2, 3, 32, 32)
    fp32 = module.compute_losses(batch, timesteps, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = module.compute_losses(batch, timesteps, noise)
    for key, value in fp32.items():
        assert torch.isfinite(bf16[key]), key
        assert float(bf16[key]) == pytest.approx(float(value), rel=BF16_RTOL), key
    bf16["loss"].backward()
    grads = [p.grad for p in module.refiner.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bf16_mixed_trainer_step_on_cpu() -> None:
    module = Stage2DiffusionModule(phase="a", **TINY_STAGE2)
    before = [p.detach().clone() for p in module.refiner.denoiser.parameters()]
    trainer = L.Trainer(max_steps=2, precision="bf16-mixed", **NO_LOG)
    trainer.fit(module, DataLoader([make_batch(b=2, h=32, w=32, seed=i) for i in range(2)], batch_size=None))
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    after = list(module.refiner.denoiser.parameters())
    assert all(p.dtype == torch.float32 for p in after)  # mixed: master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_cpu_precision_defaults_to_fp32_and_gpu_configs_use_bf16() -> None:
    assert compose_train([]).trainer.precision == "32-true"
    assert compose_train(["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"
    for trainer in ("gpu", "ddp"):
        cfg = compose_train([f"trainer={trainer}"])
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
        assert cfg.data.num_workers > 0 and cfg.data.pin_memory and cfg.data.persistent_workers
    assert compose_train(["preset=cpu"]).data.num_workers == 0


def test_callback_makes_convolutions_channels_last_and_compiles_the_listed_modules(monkeypatch) -> None:
    compiled: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append(self))
    module = Stage1FusionModule(net=TINY_STAGE1)
    callback = PerformanceTuning(channels_last=True, compile=True, cudnn_benchmark=True)
    cudnn_before = torch.backends.cudnn.benchmark
    trainer = L.Trainer(max_steps=1, callbacks=[callback], **NO_LOG)
    trainer.fit(module, DataLoader([make_batch(b=2, h=24, w=24)], batch_size=None))
    weight = module.net.decoder[0].weight  # 8×8×3×3
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert compiled == [module.net] and callback.compiled == ["net"]  # stage1/refiner absent: skipped
    assert torch.backends.cudnn.benchmark == cudnn_before  # CPU run: untouched
    assert set(module.state_dict()) == set(Stage1FusionModule(net=TINY_STAGE1).state_dict())


def test_compile_paths_resolve_in_stage2() -> None:
    module = Stage2DiffusionModule(phase="a", **TINY_STAGE2)
    found = {path: submodule(module, path) for path in DEFAULT_COMPILE}
    assert found["net"] is None and found["stage1"] is module.stage1
    assert found["refiner.denoiser"] is module.refiner.denoiser
    with pytest.raises(TypeError, match="not a module"):
        submodule(module, "hparams")
    assert PerformanceTuning(compile=["refiner.denoiser"]).compile == ("refiner.denoiser",)
    assert PerformanceTuning(compile=False).compile == ()


def test_performance_callback_is_in_the_default_callbacks() -> None:
    cfg = compose_train(["callbacks.performance.compile=[net,refiner.denoiser]"])
    assert cfg.callbacks.performance._target_ == "lightning_modules.performance.PerformanceTuning"
    assert list(cfg.callbacks.performance.compile) == ["net", "refiner.denoiser"]


@pytest.mark.parametrize("workers", [0, 1])
def test_gpu_loader_settings_reach_the_dataloader(tmp_path, workers: int) -> None:
    from sgdfuse.orchestration.pipeline import build_datamodule

    cfg = compose_train(["trainer=gpu", f"data.num_workers={workers}", "data.train.num_pairs=4",
                         "data.batch_size=2", f"paths.cache_dir={tmp_path}"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.pin_memory is True and loader.num_workers == workers
    assert loader.persistent_workers is (workers > 0)  # torch refuses persistent workers without workers
