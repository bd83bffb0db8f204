import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_modules import CheckpointError, load_fusion_model, read_checkpoint
from lightning_modules.stage1 import Stage1FusionModule
from tests.conftest import make_batch

TINY_NET = {"channels": 8, "num_stages": 1, "num_heads": 2}


def _batches(n: int, **kw) -> list[dict]:
    return [make_batch(seed=i, **kw) for i in range(n)]


def _collate(items: list[dict]) -> dict:
    return items[0]


def test_hparams_are_plain_containers():
    module = Stage1FusionModule(net=TINY_NET, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    assert type(module.hparams.net) is dict and type(module.hparams.optimizer) is dict
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1


def test_scheduler_from_config():
    module = Stage1FusionModule(net=TINY_NET, scheduler={
        "_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 10, "interval": "step"})
    conf = module.configure_optimizers()
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert conf["lr_scheduler"]["interval"] == "step"


def test_fuse_keeps_size_and_vis_chroma():
    module = Stage1FusionModule(net=TINY_NET).eval()
    batch = make_batch(b=1, h=33, w=47)
    out = module.fuse(batch)
    assert out["final"].shape == (1, 3, 33, 47)
    assert out["final"].min() >= 0 and out["final"].max() <= 1


def test_a_few_steps_lower_the_loss_on_one_batch():
    torch.manual_seed(0)
    module = Stage1FusionModule(net=TINY_NET, optimizer={"_target_": "torch.optim.Adam", "lr": 3e-3})
    batch = make_batch(b=2, h=32, w=32)
    for key in ("ir", "vis"):  # smooth images: a structured target like real pairs, not pixel noise
        coarse = batch[key][..., ::8, ::8]
        batch[key] = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear")
    opt = module.configure_optimizers()["optimizer"]
    first = module.compute_losses(batch)["loss"].item()
    for _ in range(40):
        opt.zero_grad()
        module.compute_losses(batch)["loss"].backward()
        opt.step()
    last = module.compute_losses(batch)["loss"].item()
    assert last < 0.5 * first, (first, last)


def test_checkpoint_loads_with_weights_only_and_reproduces_outputs(tmp_path):
    module = Stage1FusionModule(net=TINY_NET)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(_batches(2), batch_size=1, collate_fn=_collate))
    path = tmp_path / "s1.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # raises if a DictConfig / partial was pickled
    assert ckpt["sgdfuse_class"] == "lightning_modules.stage1.Stage1FusionModule"
    loaded = load_fusion_model(path)
    batch = make_batch(b=1, h=20, w=24, seed=9)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.fuse(batch)["final"], loaded.fuse(batch)["final"])


def test_unusable_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        read_checkpoint(bad)
