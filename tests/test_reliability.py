"""Reliability of the run pipeline (issue 10): a diverged or corrupted stage never counts as finished, the
steps of a finished stage are honoured, checkpoints must match the config that loads them, earlier test
results are never overwritten silently, and a failed first attempt does not lock its run id."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from sgdfuse.orchestration.pipeline import ConfigError, check_run_config, resume_checkpoint, run
from tests.conftest import compose_train

BASE = ["preset=cpu", "debug=fast", "logger=csv", "model.stage1.net.channels=8",
        "model.stage1.net.num_stages=1", "model.stage1.net.num_heads=2", "data.num_workers=0",
        "data.train.num_pairs=8", "data.train.height=48", "data.train.width=48", "data.batch_size=2",
        "data.crop_size=32", "data.val.num_pairs=1", "data.val.height=32", "data.val.width=32",
        "data.test.num_pairs=1", "data.test.height=48", "data.test.width=48",
        "trainer.enable_progress_bar=false", "+experiment=stage1_only"]


def _cfg(root: Path, *extra: str, base: list[str] = BASE):
    return compose_train([*base, f"paths.checkpoint_dir={root}", f"paths.cache_dir={root}/cache", *extra])


def _run_dir(root: Path, run_id: str) -> Path:
    return root / "stage1_only" / run_id


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def _all_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _flip_tensor_bytes(path: Path) -> None:
    """Bit rot inside tensor data: the zip stays well formed, only a member's CRC-32 is now wrong."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        tensors = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 0]
        member = max(tensors, key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name_len + extra_len + member.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _save(path: Path, step: int, value: float = 1.0) -> None:
    torch.save({"state_dict": {"w": torch.full((64,), value)}, "global_step": step}, path)


class PoisonWeightsAt(L.Callback):
    """Test helper: turns one weight into NaN at the end of global step ``step`` (before any checkpoint
    of that step: Lightning runs ModelCheckpoint after the other callbacks)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


# --- 1. divergence ------------------------------------------------------------------------------------------
def test_a_diverging_stage_stops_with_an_error_and_is_not_marked_finished(tmp_path):
    """The issue's case: lr=1e6 gives a NaN loss after one step."""
    cfg = _cfg(tmp_path, "run_id=div", "model.stage1.optimizer.lr=1e6", "steps.stage1=6", "stages=[stage1]",
               "callbacks.model_checkpoint.every_n_train_steps=1")
    with pytest.raises(Exception, match=r"non-finite training loss \(nan\) at global step \d+") as info:
        run(cfg)
    stage_dir = _run_dir(tmp_path, "div") / "stage1"
    assert "Last finite checkpoint" in str(info.value) and "DONE not written" in str(info.value)
    assert not (stage_dir / "DONE").exists()
    checkpoints = list(stage_dir.glob("*.ckpt"))
    assert checkpoints and all(_all_finite(p) for p in checkpoints)
    diverged_at = int(re.search(r"at global step (\d+)", str(info.value)).group(1))
    assert 0 < diverged_at < 6  # the issue: NaN from the first steps on
    # a rerun resumes from the state just before the diverging update (a checkpoint every step)
    assert _step(Path(resume_checkpoint(stage_dir))) == diverged_at


def test_non_finite_weights_are_never_checkpointed_and_a_rerun_resumes_from_the_last_finite_one(tmp_path,
                                                                                                caplog):
    cfg = _cfg(tmp_path, "run_id=poison", "steps.stage1=6", "stages=[stage1]")
    with open_dict(cfg):
        cfg.callbacks.poison = {"_target_": f"{__name__}.PoisonWeightsAt", "step": 4}
    with pytest.raises(Exception, match=r"non-finite weights at global step 4 .*refusing to write") as info:
        run(cfg)
    stage_dir = _run_dir(tmp_path, "poison") / "stage1"
    assert f"Last finite checkpoint: {stage_dir}" in str(info.value)
    assert not (stage_dir / "DONE").exists() and not (stage_dir / "step0000004.ckpt").exists()
    assert all(_all_finite(p) for p in stage_dir.glob("*.ckpt"))  # the rotation kept the finite ones
    assert max(_step(p) for p in stage_dir.glob("*.ckpt")) == 2
    with caplog.at_level(logging.INFO):
        run(_cfg(tmp_path, "run_id=poison", "steps.stage1=6", "stages=[stage1]"))  # cause removed
    assert "resuming from" in caplog.text and "(step 2)" in caplog.text
    assert json.loads((stage_dir / "DONE").read_text())["global_step"] == 6
    assert _all_finite(stage_dir / "last.ckpt")


def test_divergence_guard_is_on_by_default():
    cfg = compose_train([])
    assert cfg.callbacks.divergence_guard._target_ == "lightning_modules.callbacks.DivergenceGuard"


def test_resume_skips_checkpoints_with_non_finite_weights(tmp_path, caplog):
    _save(tmp_path / "last.ckpt", 5, float("nan"))  # written before the guard existed
    _save(tmp_path / "step0000004.ckpt", 4)
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path) == str(tmp_path / "step0000004.ckpt")
    assert "non-finite weights" in caplog.text


# --- 2. integrity on read -----------------------------------------------------------------------------------
def test_bit_rot_inside_a_tensor_is_detected_and_resume_falls_back(tmp_path, caplog):
    _save(tmp_path / "step0000003.ckpt", 3)
    _save(tmp_path / "last.ckpt", 4)
    _flip_tensor_bytes(tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4  # loads
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path) == str(tmp_path / "step0000003.ckpt")
    assert "CRC-32" in caplog.text and "previous good checkpoint" in caplog.text


def test_read_checkpoint_names_a_bad_crc_and_never_says_delete_it_to_retrain(tmp_path):
    from lightning_modules import CheckpointError, read_checkpoint

    path = tmp_path / "model.ckpt"
    _save(path, 1)
    _flip_tensor_bytes(path)
    with pytest.raises(CheckpointError, match="CRC-32") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "cut.ckpt")
    assert "retrain" not in str(info.value).lower()  # evaluate.py shows this message


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path]:
    """A finished and tested 4-step Stage I (checkpoints at steps 2 and 4 plus last.ckpt)."""
    run(_cfg(tmp_path, "run_id=done", "steps.stage1=4"))
    return tmp_path, _run_dir(tmp_path, "done") / "stage1"


def test_a_finished_stage_with_a_corrupt_final_checkpoint_uses_the_good_one_of_the_same_step(finished,
                                                                                             caplog):
    root, stage_dir = finished
    _flip_tensor_bytes(stage_dir / "last.ckpt")
    with caplog.at_level(logging.INFO):
        metrics = run(_cfg(root, "run_id=done", "steps.stage1=4"))
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert f"using {stage_dir / 'step0000004.ckpt'}" in caplog.text and "CRC-32" in caplog.text


def test_a_finished_stage_without_a_good_checkpoint_names_done_and_the_retrain_command(finished):
    root, stage_dir = finished
    for path in stage_dir.glob("step*.ckpt"):
        path.unlink()
    _flip_tensor_bytes(stage_dir / "last.ckpt")
    with pytest.raises(Exception, match="marked finished") as info:
        run(_cfg(root, "run_id=done", "steps.stage1=4"))
    message = str(info.value)
    assert str(stage_dir / "DONE") in message and f"rm -r {stage_dir} && python train.py" in message
    assert "delete it to retrain" not in message.lower()


def test_a_finished_stage_whose_final_checkpoint_is_lost_trains_its_last_steps_again(finished, caplog):
    root, stage_dir = finished
    (stage_dir / "step0000004.ckpt").unlink()
    _flip_tensor_bytes(stage_dir / "last.ckpt")
    with caplog.at_level(logging.WARNING):
        run(_cfg(root, "run_id=done", "steps.stage1=4"))
    assert f"training again from {stage_dir / 'step0000002.ckpt'} (step 2)" in caplog.text
    assert json.loads((stage_dir / "DONE").read_text())["global_step"] == 4
    assert _step(stage_dir / "last.ckpt") == 4


# --- 4. steps of a finished stage ---------------------------------------------------------------------------
def test_more_steps_continue_a_finished_stage_and_fewer_are_refused(finished, caplog):
    root, stage_dir = finished
    with caplog.at_level(logging.INFO):
        run(_cfg(root, "run_id=done", "steps.stage1=6"))
    assert "continuing from its last checkpoint to steps.stage1=6" in caplog.text
    assert json.loads((stage_dir / "DONE").read_text())["global_step"] == 6
    assert _step(stage_dir / "last.ckpt") == 6
    with pytest.raises(ConfigError, match="steps.stage1=5 is fewer than the 6 steps") as info:
        run(_cfg(root, "run_id=done", "steps.stage1=5"))
    assert str(stage_dir / "DONE") in str(info.value) and "rm -r" in str(info.value)


def test_more_steps_for_a_stage_that_later_stages_were_trained_on_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "run_id=r", "stages=[stage1,stage2]", "steps.stage1=5")
    run_dir = Path(cfg.paths.run_dir)
    for stage in ("stage1", "stage2_a"):
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / "DONE").write_text(json.dumps({"global_step": 3}))
    with pytest.raises(ConfigError, match=r"later stages \['stage2_a'\] were trained on it") as info:
        run(cfg)
    assert f"rm -r {run_dir / 'stage1'} {run_dir / 'stage2_a'} &&" in str(info.value)


def test_rerunning_the_test_stage_keeps_the_earlier_results(finished, caplog):
    root, stage_dir = finished
    first = json.loads((stage_dir.parent / "test" / "metrics.json").read_text())
    with caplog.at_level(logging.WARNING):
        run(_cfg(root, "run_id=done", "steps.stage1=4"))
    kept = [p for p in stage_dir.parent.iterdir() if p.name.startswith("test.")]
    assert len(kept) == 1 and json.loads((kept[0] / "metrics.json").read_text()) == first
    assert (stage_dir.parent / "test" / "metrics.json").is_file()
    assert f"moved to {kept[0]}" in caplog.text


# --- 5. checkpoints against the config ----------------------------------------------------------------------
def test_a_stage_trained_with_another_architecture_is_refused(finished):
    root, stage_dir = finished
    other = _run_dir(root, "other")
    shutil.copytree(stage_dir, other / "stage1")  # channels=8, placed in a run whose config says 16
    with pytest.raises(ConfigError, match="net.channels is 8 in the checkpoint, 16 in the config") as info:
        run(_cfg(root, "run_id=other", "steps.stage1=4", "model.stage1.net.channels=16"))
    assert str(other / "stage1" / "DONE") in str(info.value) and "rm -r" in str(info.value)


def test_an_unfinished_stage_trained_with_other_settings_is_not_resumed(finished):
    root, stage_dir = finished
    other = _run_dir(root, "other") / "stage1"
    other.mkdir(parents=True)
    shutil.copy(stage_dir / "step0000002.ckpt", other)
    with pytest.raises(ConfigError, match="model.stage1.net.lambda_c is 0.5 in the checkpoint, 0.3 in the"):
        run(_cfg(root, "run_id=other", "steps.stage1=4", "model.stage1.net.lambda_c=0.3"))


def test_an_explicit_stage1_ckpt_is_used_as_given(finished):
    from sgdfuse.orchestration.pipeline import build_stage2, validate

    root, stage_dir = finished
    given = stage_dir / "last.ckpt"
    cfg = _cfg(root, "stages=[stage2,test]", f"model.stage2.stage1_ckpt={given}",
               "model.stage2.unet.block_out_channels=[8,16]", "model.stage2.unet.norm_num_groups=4",
               "model.stage2.unet.attention_head_dim=4")
    validate(cfg)
    module = build_stage2(cfg, "a", None, True)
    assert module.hparams.stage1_ckpt == str(given)
    assert module.hparams.stage1_net["channels"] == 8
    both = _cfg(root, "stages=[stage1,stage2,test]", f"model.stage2.stage1_ckpt={given}")
    with pytest.raises(ConfigError, match="also train stage1"):
        validate(both)


def test_a_missing_explicit_stage1_ckpt_fails_before_the_run_folder_exists(tmp_path):
    from lightning_modules import CheckpointError

    cfg = _cfg(tmp_path, "run_id=x", "stages=[stage2,test]", f"model.stage2.stage1_ckpt={tmp_path}/no.ckpt")
    with pytest.raises(CheckpointError, match="no.ckpt"):
        run(cfg)
    assert not _run_dir(tmp_path, "x").exists()


# --- 3 + 6. nothing written before the config and the data are known good -----------------------------------
def test_a_wrong_type_fails_before_the_run_folder_is_created(tmp_path):
    cfg = _cfg(tmp_path, "run_id=typo", "steps.stage1=ten")
    with pytest.raises(ConfigError, match=r"steps.stage1='ten': expected an int"):
        run(cfg)
    assert not _run_dir(tmp_path, "typo").exists()


def test_a_run_id_whose_first_attempt_failed_data_validation_is_not_locked(tmp_path):
    no_data = [o for o in BASE if not o.startswith(("data.train", "data.val", "data.test"))]
    bad = _cfg(tmp_path, "run_id=retry", "data=folder", f"data.root={tmp_path}/nowhere", "masks=none",
               base=no_data)
    with pytest.raises(Exception, match="nowhere"):
        run(bad)
    good = _cfg(tmp_path, "run_id=retry", "steps.stage1=1", "stages=[stage1]")
    check_run_config(good, Path(good.paths.run_dir))  # no "trained with another config"


def test_a_recorded_config_without_any_started_stage_is_replaced_with_a_warning(tmp_path, caplog):
    first, second = _cfg(tmp_path, "run_id=r"), _cfg(tmp_path, "run_id=r", "model.stage1.net.use_cfc=false")
    run_dir = Path(first.paths.run_dir)
    check_run_config(first, run_dir)
    (run_dir / "stage1").mkdir()  # a stage that failed before its first checkpoint (e.g. in prepare_data)
    with caplog.at_level(logging.WARNING):
        check_run_config(second, run_dir)
    assert "no stage has started" in caplog.text
    _save(run_dir / "stage1" / "step0000002.ckpt", 2)
    with pytest.raises(ConfigError, match="trained with another config"):
        check_run_config(first, run_dir)


def test_the_test_stage_can_be_added_to_or_dropped_from_a_run(tmp_path):
    run_dir = tmp_path / "run"
    check_run_config(_cfg(tmp_path, "run_id=r", "stages=[stage1]"), run_dir)
    (run_dir / "stage1").mkdir()
    _save(run_dir / "stage1" / "last.ckpt", 3)  # a started stage: the recorded config now binds
    check_run_config(_cfg(tmp_path, "run_id=r", "stages=[stage1,test]"), run_dir)
    with pytest.raises(ConfigError, match="differs at: stages"):
        check_run_config(_cfg(tmp_path, "run_id=r", "stages=[stage1,stage2,test]"), run_dir)


# --- 6. smaller items -------------------------------------------------------------------------------------
def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


def test_a_cold_mask_cache_on_a_read_only_folder_names_it_and_the_overrides(tmp_path, monkeypatch):
    from sgdfuse.masks.cache import MaskCache

    cache = MaskCache(tmp_path / "cache")
    masks = np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)
    warm = cache.put("src", "pair-a", *masks)
    monkeypatch.setattr("sgdfuse.atomic.tempfile.mkstemp", _read_only)  # a read-only file system
    for write in (lambda: cache.put("src", "pair-b", *masks), lambda: cache.write_manifest("new", {})):
        with pytest.raises(OSError, match=r"paths\.cache_dir=/writable.*masks\.source\.cache_dir=") as info:
            write()
        assert str(tmp_path / "cache") in str(info.value) and "Read-only file system" in str(info.value)
    assert cache.get("src", "pair-a", (8, 8)) is not None and warm.is_file()  # a warm cache still reads
    (tmp_path / "sam.pth").write_bytes(b"weights")
    assert len(cache.file_sha256(tmp_path / "sam.pth")) == 64  # its hash memo is only a speed-up


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_cold_mask_cache_in_a_folder_without_write_permission(tmp_path):
    from sgdfuse.masks.cache import MaskCache

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o555)
    with pytest.raises(OSError, match=r"paths\.cache_dir="):
        MaskCache(tmp_path / "cache").put("src", "k", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))


def _fused_batch(name: str, size: int = 16) -> dict:
    return {"name": [name], "vis": torch.zeros(1, 3, size, size)}


def test_a_16_bit_fused_png_holding_8_bit_values_is_warned_about(tmp_path, caplog):
    from sgdfuse.orchestration.evaluation import folder_fuser

    cv2.imwrite(str(tmp_path / "a.png"), np.full((16, 16), 200, np.uint16))  # 8-bit values, 16-bit file
    cv2.imwrite(str(tmp_path / "b.png"), np.full((16, 16), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "c.png"), np.full((16, 16), 40000, np.uint16))  # real 16-bit data
    fuse = folder_fuser(tmp_path)
    with caplog.at_level(logging.WARNING):
        for name in ("b.png", "c.png"):
            fuse(_fused_batch(name))
        assert "16-bit" not in caplog.text
        final = fuse(_fused_batch("a.png"))["final"]
    assert f"fused image {tmp_path / 'a.png'} is 16-bit but holds only values 0..200" in caplog.text
    assert float(final.max()) == pytest.approx(200 / 65535)  # the rule stays the documented one


def test_two_fused_files_with_one_stem_are_an_error(tmp_path):
    from sgdfuse.data.base import DataError
    from sgdfuse.orchestration.evaluation import folder_fuser

    for name in ("a.png", "a.jpg", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"a\.jpg, a\.png.*keep one file per pair"):
        folder_fuser(tmp_path)


def test_a_run_recorded_before_a_setting_existed_still_resumes(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(tmp_path, "run_id=r", "stages=[stage1]")
    check_run_config(cfg, run_dir)
    (run_dir / "stage1").mkdir()
    _save(run_dir / "stage1" / "last.ckpt", 3)
    recorded = OmegaConf.load(run_dir / "run_config.yaml")
    del recorded.model.stage2.loss["w_ssim"]  # as written by code before the SSIM term
    OmegaConf.save(recorded, run_dir / "run_config.yaml")
    check_run_config(cfg, run_dir)  # the new key is not compared ...
    with pytest.raises(ConfigError, match=r"differs at: model\.stage2\.loss\.w_int"):
        check_run_config(_cfg(tmp_path, "run_id=r", "stages=[stage1]", "model.stage2.loss.w_int=2.0"),
                         run_dir)
