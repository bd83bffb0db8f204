"""data=ivif_real: a seeded train/val split of one folder, named test sets, and its bad inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.errors import InstantiationException

from sgdfuse.data.base import DataError
from sgdfuse.data.folder import FolderPairs
from sgdfuse.orchestration.pipeline import build_datamodule
from tests.conftest import compose_train


def _folder(root: Path, n: int, size: tuple[int, int] = (40, 48), small: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(len(str(root)))
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"p{i:03d}"
        h, w = (20, 24) if name in small else size
        cv2.imwrite(str(root / "ir" / f"{name}.png"), rng.integers(0, 255, (h, w), np.uint8))
        cv2.imwrite(str(root / "vi" / f"{name}.jpg"), rng.integers(0, 255, (h, w, 3), np.uint8))
    return root


def _cfg(train: Path, test_root: Path, tmp_path: Path, *extra: str):
    return compose_train(["data=ivif_real", f"data.root={train}", f"data.test_root={test_root}", "masks=none",
                          f"paths.cache_dir={tmp_path}/cache", *extra])


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    train = _folder(tmp_path / "train", 20)
    tests = tmp_path / "real"
    _folder(tests / "TNO", 3)
    _folder(tests / "RoadScene", 2)
    return train, tests


def test_split_is_seeded_disjoint_and_covers_the_folder(folders):
    train, _ = folders
    a_train, a_val = (FolderPairs.seeded_split(train, s, val_fraction=0.2, seed=1) for s in ("train", "val"))
    assert len(a_val) == 4 and len(a_train) == 16
    assert not set(a_train.names()) & set(a_val.names())
    assert sorted(a_train.names() + a_val.names()) == FolderPairs(train).names()
    assert FolderPairs.seeded_split(train, "val", val_fraction=0.2, seed=1).names() == a_val.names()
    assert FolderPairs.seeded_split(train, "val", val_fraction=0.2, seed=2).names() != a_val.names()
    with pytest.raises(DataError, match="val_fraction"):
        FolderPairs.seeded_split(train, "val", val_fraction=1.5)


def test_named_test_sets_are_reported_in_order(folders, tmp_path):
    dm = build_datamodule(_cfg(*folders, tmp_path))
    assert dm.test_set_names == ["TNO", "RoadScene"]
    dm.prepare_data()
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert [len(loader) for loader in loaders] == [3, 2]


def test_a_missing_test_set_fails_before_training_naming_it(folders, tmp_path):
    train, tests = folders
    with pytest.raises(InstantiationException, match=r"(?s)TNO.*does not exist"):
        build_datamodule(_cfg(train, tmp_path / "nowhere", tmp_path))
    # a set removed from the dict is simply not scored
    dm = build_datamodule(_cfg(train, tests, tmp_path, "~data.test.TNO"))
    assert dm.test_set_names == ["RoadScene"]
    # ... and so is a set set to null (how a preset leaves one out: preset=cpu_study drops RoadScene)
    dm = build_datamodule(_cfg(train, tests, tmp_path, "data.test.TNO=null"))
    assert dm.test_set_names == ["RoadScene"]
    study = compose_train(["preset=cpu_study", f"data.root={train}", f"data.test_root={tests}", "masks=none",
                           f"paths.cache_dir={tmp_path}/cache"])
    assert build_datamodule(study).test_set_names == ["TNO"]
    with pytest.raises(InstantiationException, match=r"every test set is null \(\['RoadScene', 'TNO'\]\)"):
        build_datamodule(_cfg(train, tests, tmp_path, "data.test.TNO=null", "data.test.RoadScene=null"))


def test_fewer_training_pairs_than_one_batch_is_a_clear_error(tmp_path):
    train = _folder(tmp_path / "few", 5)
    tests = tmp_path / "real"
    _folder(tests / "TNO", 1)
    _folder(tests / "RoadScene", 1)
    dm = build_datamodule(_cfg(train, tests, tmp_path, "data.batch_size=8"))
    with pytest.raises(DataError, match=r"train split has 4 pair\(s\), fewer than one batch.*batch_size=8"):
        dm.setup("fit")


def test_pairs_smaller_than_the_crop_are_padded_with_a_warning(tmp_path, caplog):
    train = _folder(tmp_path / "mixed", 12, small=("p001", "p002", "p003", "p004", "p005", "p006", "p007"))
    tests = tmp_path / "real"
    _folder(tests / "TNO", 1)
    _folder(tests / "RoadScene", 1)
    dm = build_datamodule(_cfg(train, tests, tmp_path, "data.crop_size=32", "data.batch_size=2",
                               "data.train.val_fraction=0.1"))
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    warned = [r.getMessage() for r in caplog.records if "smaller than data.crop_size=32" in r.getMessage()]
    assert len(warned) == 1 and "reflect-padded" in warned[0] and "(20×24)" in warned[0]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # no crash mid-epoch: every crop has the crop size
    assert tuple(batch["ir"].shape) == (2, 1, 32, 32)
