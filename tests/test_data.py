"""Data layer: image reading, synthetic and folder pairs, augmentations, mask perturbation, DataModule."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import time
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import PIL.ImageFile
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.ivif import IVIFDataModule
from sgdfuse.data.base import DataError, Pair, PairSource
from sgdfuse.data.dataset import collate_pairs
from sgdfuse.data.folder import FolderPairs
from sgdfuse.data.io import read_ir, read_vis, to_uint8, write_png_atomic
from sgdfuse.data.synthetic import SyntheticPairs
from sgdfuse.data.transforms import apply_joint, train_transform
from sgdfuse.masks.base import LabelMasks, MaskSource, NoMasks
from sgdfuse.masks.cache import MaskCache
from sgdfuse.masks.perturb import perturb_mask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------------------------------------------------
# helpers
def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _grad(img: np.ndarray) -> np.ndarray:
    """|Gx| + |Gy| (Sobel), as the fusion losses measure texture."""
    return np.abs(cv2.Sobel(img, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(img, cv2.CV_32F, 0, 1))


def _interior(mask: np.ndarray, k: int = 5) -> np.ndarray:
    """Mask without its boundary (gradients at object edges are not texture)."""
    return cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def _write_pair(root: Path, name: str, ir: np.ndarray, vis: np.ndarray, ir_ext=".png", vis_ext=".png",
                ir_dir="ir", vis_dir="vi") -> None:
    (root / ir_dir).mkdir(parents=True, exist_ok=True)
    (root / vis_dir).mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / ir_dir / f"{name}{ir_ext}"), ir)
    assert cv2.imwrite(str(root / vis_dir / f"{name}{vis_ext}"), vis)


def _make_folder(root: Path, names=("a", "b", "c"), size=(24, 32), **kw) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        ir = rng.integers(0, 256, size, dtype=np.uint8)
        vis = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        _write_pair(root, name, ir, vis, **kw)
    return root


# ---------------------------------------------------------------------------------------------------------
# io
def test_read_8bit_ir_vis_channel_rules(tmp_path):
    grey = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    bgr = np.zeros((12, 20, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    bgr[..., 0] = 10
    grey3 = np.repeat(grey[..., None], 3, axis=2)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "grey3.png"), grey3)
    cv2.imwrite(str(tmp_path / "red.png"), bgr)

    ir = read_ir(tmp_path / "grey.png")
    assert ir.dtype == np.float32 and ir.shape == (12, 20)
    np.testing.assert_array_equal(ir, grey.astype(np.float32) / 255)
    # 3-channel grey IR -> its (exact) grey value
    np.testing.assert_allclose(read_ir(tmp_path / "grey3.png"), grey / 255.0, atol=1e-6)
    # colour IR is refused (a swapped role or a pseudo-colour rendering), naming the file
    with pytest.raises(DataError, match=r"red\.png is colour"):
        read_ir(tmp_path / "red.png")
    vis = read_vis(tmp_path / "red.png")
    assert vis.shape == (12, 20, 3) and vis.dtype == np.float32
    np.testing.assert_allclose(vis[0, 0], [200 / 255, 0, 10 / 255], atol=1e-7)  # RGB order
    vis_grey = read_vis(tmp_path / "grey.png")
    assert vis_grey.shape == (12, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(vis_grey[..., c], grey / np.float32(255))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_read_16bit_ir_uses_fixed_scale_not_minmax(tmp_path, ext):
    raw = np.array([[0, 1000, 30000], [40000, 65535, 7]], dtype=np.uint16)
    dim = np.array([[100, 200, 300], [400, 500, 600]], dtype=np.uint16)  # a cold scene stays dark
    for name, arr in (("a", raw), ("dim", dim)):
        assert cv2.imwrite(str(tmp_path / f"{name}{ext}"), arr)
    np.testing.assert_allclose(read_ir(tmp_path / f"a{ext}"), raw / 65535.0, rtol=1e-6, atol=1e-9)
    dim_read = read_ir(tmp_path / f"dim{ext}")
    np.testing.assert_allclose(dim_read, dim / 65535.0, rtol=1e-6)
    assert dim_read.max() < 0.01


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothere.png"):
        read_ir(tmp_path / "nothere.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="broken.png"):
        read_vis(bad)


def test_write_png_atomic_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.random((9, 11, 3), dtype=np.float32)
    out = write_png_atomic(tmp_path / "sub" / "x.png", rgb)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., ::-1], to_uint8(rgb))
    grey = rng.random((9, 11), dtype=np.float32) * 1.4 - 0.2  # out of range values are clipped
    write_png_atomic(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED), to_uint8(grey))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["g.png", "x.png"]  # no temp files


# ---------------------------------------------------------------------------------------------------------
# synthetic pairs
def test_synthetic_is_deterministic_per_seed_split_index():
    a, b = SyntheticPairs("train", 4, 64, 80, seed=3), SyntheticPairs("train", 4, 64, 80, seed=3)
    for i in range(4):
        pa, pb = a[i], b[i]
        np.testing.assert_array_equal(pa.ir, pb.ir)
        np.testing.assert_array_equal(pa.vis, pb.vis)
        np.testing.assert_array_equal(pa.masks[0], pb.masks[0])
        assert pa.key == pb.key == f"synthetic:3:train:{i}:64x80" == a.key(i)
    other_seed, other_split = SyntheticPairs("train", 4, 64, 80, seed=4), SyntheticPairs("test", 4, 64, 80, 3)
    for i in range(4):
        assert np.abs(a[i].ir - other_seed[i].ir).mean() > 0.01
        assert np.abs(a[i].ir - other_split[i].ir).mean() > 0.01
        assert a.key(i) != other_split.key(i)
    assert np.abs(a[0].ir - a[1].ir).mean() > 0.01
    assert a.names() == [f"train_{i:05d}" for i in range(4)] and len(a) == 4 and a.has_labels
    with pytest.raises(ValueError, match="read-only"):  # cached arrays are shared: callers must copy
        a[0].ir[0, 0] = 1.0
    with pytest.raises(DataError, match="height and width"):
        SyntheticPairs("train", 1, 4, 64)


def test_synthetic_modality_exclusive_objects():
    pairs = SyntheticPairs("val", num_pairs=12, height=128, width=128, seed=0)
    for i in range(len(pairs)):
        p = pairs[i]
        mask_ir, mask_vis = p.masks
        for m in (mask_ir, mask_vis):
            assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
        assert p.ir.shape == (128, 128) and p.vis.shape == (128, 128, 3)
        assert p.ir.dtype == p.vis.dtype == np.float32
        assert p.ir.min() >= 0 and p.ir.max() <= 1 and p.vis.min() >= 0 and p.vis.max() <= 1
        y = _luma(p.vis)
        g_ir, g_vis = _grad(p.ir), _grad(y)
        ir_only = _interior((mask_ir == 1) & (mask_vis == 0))
        vis_only = _interior((mask_vis == 1) & (mask_ir == 0))
        both = _interior((mask_ir == 1) & (mask_vis == 1))
        background = _interior((mask_ir == 0) & (mask_vis == 0))
        assert ir_only.sum() > 30 and vis_only.sum() > 30 and both.sum() > 30

        # thermal-only: bright in IR, dark and flat in VIS
        assert p.ir[ir_only].mean() > p.ir[background].mean() + 0.35
        assert y[ir_only].mean() < 0.22
        assert g_vis[ir_only].mean() < 0.06
        # visible-only: textured in VIS, flat in IR at background temperature
        assert g_vis[vis_only].mean() > 0.5
        assert g_ir[vis_only].mean() < 0.06
        assert p.ir[vis_only].max() < 0.4
        # both: warm in IR and textured in VIS
        assert p.ir[both].mean() > p.ir[background].mean() + 0.12
        assert g_vis[both].mean() > 0.5
        # VIS is colour, not grey
        assert np.abs(p.vis[..., 0] - p.vis[..., 1]).max() > 0.1


def test_synthetic_any_size_and_fast():
    small = SyntheticPairs("train", 2, 37, 61, seed=1)[1]
    assert small.ir.shape == (37, 61) and small.vis.shape == (37, 61, 3)
    assert small.masks[0].any() and small.masks[1].any()
    pairs = SyntheticPairs("train", 20, 128, 128, seed=5)
    times = []
    for i in range(len(pairs)):
        start = time.process_time()
        pairs[i]
        times.append(time.process_time() - start)
    assert np.median(times) < 0.020, f"median {np.median(times) * 1e3:.1f} ms per 128² pair"


# ---------------------------------------------------------------------------------------------------------
# folders
def test_real_tno_and_roadscene(real_data):
    tno = FolderPairs.tno(real_data / "TNO")
    road = FolderPairs.roadscene(real_data / "RoadScene")
    assert len(tno) == 42 and len(road) == 50
    assert tno.names()[:3] == ["01", "02", "03"] and tno.names() == sorted(tno.names())
    sizes = set()
    for source in (tno, road):
        for i in range(len(source)):
            p = source[i]
            assert p.ir.shape == p.vis.shape[:2] and p.vis.shape[2] == 3
            assert p.ir.dtype == p.vis.dtype == np.float32
            sizes.add(p.ir.shape)
    assert len(sizes) > 20  # many different sizes, none rejected

    # TNO: IR and VIS stored as 3-channel grey -> exact grey values; VIS channels equal
    ir_path, vis_path = tno.files(4)
    p = tno[4]
    cv_ir = cv2.imread(str(ir_path), cv2.IMREAD_UNCHANGED)
    assert cv_ir.ndim == 3
    for y, x in [(0, 0), (100, 200), (p.ir.shape[0] - 1, p.ir.shape[1] - 1), (37, 251)]:
        assert round(float(p.ir[y, x]) * 255) == int(cv_ir[y, x, 0])
    np.testing.assert_array_equal(np.round(p.ir * 255), cv_ir[..., 0])
    np.testing.assert_array_equal(p.vis[..., 0], p.vis[..., 1])
    np.testing.assert_allclose(p.vis * 255, cv2.imread(str(vis_path))[..., ::-1], atol=1e-3)

    # RoadScene: 1-channel IR, RGB colour VIS (BGR on disk)
    ir_path, vis_path = road.files(7)
    p = road[7]
    cv_ir, cv_vis = cv2.imread(str(ir_path), cv2.IMREAD_UNCHANGED), cv2.imread(str(vis_path))
    assert cv_ir.ndim == 2
    for y, x in [(0, 0), (50, 60), (p.ir.shape[0] - 1, p.ir.shape[1] - 1)]:
        assert p.ir[y, x] == np.float32(cv_ir[y, x]) / np.float32(255)
        np.testing.assert_allclose(p.vis[y, x] * 255, cv_vis[y, x, ::-1], atol=1e-3)
    assert np.abs(p.vis[..., 0] - p.vis[..., 2]).max() > 0.1  # really colour

    # key: sha1 of both files, stable, different per pair
    assert tno.key(0) == FolderPairs.tno(real_data / "TNO").key(0)
    assert len(tno.key(0)) == 40 and len({tno.key(i) for i in range(len(tno))}) == 42


def test_folder_pairs_by_stem_and_key_follows_content(tmp_path):
    root = _make_folder(tmp_path / "ds", names=("b", "a", "c"))
    # different extension in vi/ for one pair, and a non-image file that is ignored
    (root / "vi" / "c.png").unlink()
    cv2.imwrite(str(root / "vi" / "c.jpg"), np.full((24, 32, 3), 128, np.uint8))
    (root / "ir" / "README.txt").write_text("not an image")
    pairs = FolderPairs(root)
    assert pairs.names() == ["a", "b", "c"] and len(pairs) == 3
    assert pairs.files(2)[1].name == "c.jpg"
    assert pairs[2].vis.shape == (24, 32, 3) and pairs[2].name == "c"
    key = pairs.key(0)
    assert key == FolderPairs(root).key(0) and key != pairs.key(1)
    ir = cv2.imread(str(root / "ir" / "a.png"), cv2.IMREAD_UNCHANGED)
    ir[0, 0] ^= 1
    cv2.imwrite(str(root / "ir" / "a.png"), ir)
    assert FolderPairs(root).key(0) != key
    assert pickle.loads(pickle.dumps(pairs)).names() == pairs.names()


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*data.root"):
        FolderPairs(tmp_path / "missing")
    (tmp_path / "only_ir" / "ir").mkdir(parents=True)
    with pytest.raises(DataError, match=r"VIS folder .*only_ir/vi does not exist"):
        FolderPairs(tmp_path / "only_ir")
    (tmp_path / "only_ir" / "vi").mkdir()
    with pytest.raises(DataError, match=r"only_ir/ir contains no images"):
        FolderPairs(tmp_path / "only_ir")

    root = _make_folder(tmp_path / "unpaired", names=("a", "b"))
    cv2.imwrite(str(root / "ir" / "lonely_ir.png"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(root / "vi" / "lonely_vis.jpg"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"lonely_ir\.png") as err:
        FolderPairs(root)
    assert "lonely_vis.jpg" in str(err.value) and "same name" in str(err.value)

    root = _make_folder(tmp_path / "dup", names=("a",))
    cv2.imwrite(str(root / "ir" / "a.jpg"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="two images named 'a'"):
        FolderPairs(root)

    root = _make_folder(tmp_path / "corrupt", names=("a", "b"))
    (root / "vi" / "b.png").write_bytes(b"garbage")
    pairs = FolderPairs(root)
    pairs[0]
    with pytest.raises(DataError, match=r"vi/b\.png"):
        pairs[1]

    root = _make_folder(tmp_path / "sizes", names=("a",))
    cv2.imwrite(str(root / "vi" / "a.png"), np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(DataError, match="pair 'a'.*same size"):
        FolderPairs(root)[0]


def test_standard_layouts(tmp_path):
    msrs = tmp_path / "MSRS"
    _make_folder(msrs / "train", names=("00001", "00002", "00003"))
    _make_folder(msrs / "test", names=("00010", "00011"))
    assert FolderPairs.msrs(msrs, "train").names() == ["00001", "00002", "00003"]
    assert len(FolderPairs.msrs(msrs, "test")) == 2
    with pytest.raises(DataError, match="splits"):
        FolderPairs.msrs(msrs, "val")
    with pytest.raises(DataError, match=r"MSRS root .*nope does not exist; set data.root"):
        FolderPairs.msrs(tmp_path / "nope", "train")

    llvip = tmp_path / "LLVIP"
    _make_folder(llvip, names=("010001",), ir_dir="infrared/train", vis_dir="visible/train")
    _make_folder(llvip, names=("190001", "190002"), ir_dir="infrared/test", vis_dir="visible/test",
                 ir_ext=".jpg", vis_ext=".jpg")
    assert FolderPairs.llvip(llvip, "train").names() == ["010001"]
    assert FolderPairs.llvip(llvip, "test").names() == ["190001", "190002"]

    m3fd = tmp_path / "M3FD"
    names = [f"{i:05d}" for i in range(10)]
    _make_folder(m3fd, names=names, ir_dir="Ir", vis_dir="Vis", size=(8, 8))
    train, test = FolderPairs.m3fd(m3fd, "train", 0.3), FolderPairs.m3fd(m3fd, "test", 0.3)
    assert train.names() == names[:7] and test.names() == names[7:]
    listing = tmp_path / "m3fd_test.txt"
    listing.write_text("# test pairs\n00002.png\n00005\n")
    assert FolderPairs.m3fd(m3fd, "test", test_list=listing).names() == ["00002", "00005"]
    assert "00005" not in FolderPairs.m3fd(m3fd, "train", test_list=listing).names()
    listing.write_text("00002\n99999\n")
    with pytest.raises(DataError, match="99999"):
        FolderPairs.m3fd(m3fd, "test", test_list=listing)


@pytest.mark.parametrize(
    ("name", "layout"),
    [("folder", {"ir": "vi"}), ("msrs", {"train/ir": "train/vi", "test/ir": "test/vi"}),
     ("llvip", {"infrared/train": "visible/train", "infrared/test": "visible/test"}),
     ("m3fd", {"Ir": "Vis"}), ("tno", {"ir": "vi"}), ("roadscene", {"ir": "vi"})],
)
def test_data_configs_instantiate(tmp_path, name, layout):
    for ir_dir, vis_dir in layout.items():
        _make_folder(tmp_path, names=("p1", "p2", "p3", "p4", "p5"), ir_dir=ir_dir, vis_dir=vis_dir)
    cfg = OmegaConf.load(CONFIGS / "data" / f"{name}.yaml")
    assert OmegaConf.is_missing(cfg, "root")
    cfg.root, cfg.seed, cfg.num_workers = str(tmp_path), 0, 0
    masks = OmegaConf.load(CONFIGS / "masks" / "none.yaml")
    dm = instantiate(cfg, mask_source=instantiate(masks.source),
                     perturb=OmegaConf.to_container(masks.perturb))
    assert isinstance(dm, IVIFDataModule) and not dm.mask_channels_enabled
    dm.prepare_data()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["ir"].shape == (1, 1, 24, 32) and batch["vis"].shape == (1, 3, 24, 32)
    assert batch["mask_ir"].sum() == 0
    assert (dm.sources["train"] is None) == (name in ("tno", "roadscene"))


def test_synthetic_config_and_label_masks_config():
    cfg = OmegaConf.load(CONFIGS / "data" / "synthetic.yaml")
    cfg.seed = 0
    for split in ("train", "val", "test"):
        cfg[split].num_pairs, cfg[split].height, cfg[split].width = 3, 48, 56
    masks = OmegaConf.load(CONFIGS / "masks" / "labels.yaml")
    dm = instantiate(cfg, mask_source=instantiate(masks.source),
                     perturb=OmegaConf.to_container(masks.perturb))
    assert dm.batch_size == 24 and dm.crop_size == 160 and dm.mask_channels_enabled
    assert dm.perturb == {"mode": None, "kernel_size": 5, "apply_to": ["test"]}
    assert isinstance(dm.sources["val"], SyntheticPairs) and dm.sources["val"].split == "val"


# ---------------------------------------------------------------------------------------------------------
# augmentations
def _coordinate_sample(h: int, w: int, rng: np.random.Generator):
    yy, xx = np.mgrid[0:h, 0:w]
    ir = ((yy * w + xx + 1) / (h * w + 1)).astype(np.float32)  # unique per pixel
    vis = np.stack([yy / (h - 1), xx / (w - 1), np.full_like(yy, 0.5, dtype=float)], -1).astype(np.float32)
    pattern_ir = rng.integers(0, 2, (h, w), dtype=np.uint8)
    pattern_vis = rng.integers(0, 2, (h, w), dtype=np.uint8)
    return ir, vis, pattern_ir, pattern_vis


@pytest.mark.parametrize("size", [(50, 70), (20, 28)])  # larger than the crop, and smaller (padded)
def test_augmentations_keep_modalities_and_masks_aligned(size):
    h, w = size
    crop = 32
    ir, vis, m_ir, m_vis = _coordinate_sample(h, w, np.random.default_rng(0))
    flips_seen = set()
    for seed in range(40):
        transform = train_transform(crop, seed=seed)
        out_ir, out_vis, out_mir, out_mvis = apply_joint(transform, ir, vis, m_ir, m_vis)
        assert out_ir.shape == (crop, crop) and out_vis.shape == (crop, crop, 3)
        assert out_mir.shape == out_mvis.shape == (crop, crop) and out_mir.dtype == np.uint8
        index = np.round(out_ir * (h * w + 1)).astype(int) - 1
        ys, xs = np.divmod(index, w)
        np.testing.assert_allclose(out_vis[..., 0], ys / (h - 1), atol=1e-5)
        np.testing.assert_allclose(out_vis[..., 1], xs / (w - 1), atol=1e-5)
        np.testing.assert_array_equal(out_mir, m_ir[ys, xs])
        np.testing.assert_array_equal(out_mvis, m_vis[ys, xs])
        if h >= crop and w >= crop:
            flips_seen.add((bool(ys[1, 0] < ys[0, 0]), bool(xs[0, 1] < xs[0, 0])))
            assert len(np.unique(index)) == crop * crop  # a crop, no resampling
    if h >= crop and w >= crop:
        assert flips_seen == {(False, False), (False, True), (True, False), (True, True)}


def test_train_transform_seeded():
    ir, vis, m_ir, m_vis = _coordinate_sample(64, 64, np.random.default_rng(1))
    a = [apply_joint(train_transform(16, seed=7), ir, vis, m_ir, m_vis)[0] for _ in range(2)]
    b = apply_joint(train_transform(16, seed=8), ir, vis, m_ir, m_vis)[0]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], b)


# ---------------------------------------------------------------------------------------------------------
# mask perturbation
def test_perturb_mask_matches_opencv_and_changes_area():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (30, 34), 14, 1, -1)
    cv2.rectangle(mask, (45, 5), (60, 20), 1, -1)
    mask |= (rng.random((64, 64)) > 0.995).astype(np.uint8)
    for k in (3, 5, 9):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        eroded, dilated = perturb_mask(mask, "erode", k), perturb_mask(mask, "dilate", k)
        np.testing.assert_array_equal(eroded, cv2.erode(mask, kernel))
        np.testing.assert_array_equal(dilated, cv2.dilate(mask, kernel))
        assert eroded.dtype == dilated.dtype == np.uint8 and set(np.unique(eroded)) <= {0, 1}
        assert eroded.sum() < mask.sum() < dilated.sum()
        assert not (eroded & (1 - mask)).any() and not (mask & (1 - dilated)).any()
    assert perturb_mask(mask, "erode", 9).sum() < perturb_mask(mask, "erode", 3).sum()
    same = perturb_mask(mask, None, 5)
    np.testing.assert_array_equal(same, mask)
    assert same is not mask
    with pytest.raises(ValueError, match="mode"):
        perturb_mask(mask, "blur", 5)
    with pytest.raises(ValueError, match="kernel_size"):
        perturb_mask(mask, "erode", 0)


# ---------------------------------------------------------------------------------------------------------
# DataModule
def _synthetic_dm(**kw) -> IVIFDataModule:
    args = dict(
        train=SyntheticPairs("train", 6, 64, 72, seed=0),
        val=SyntheticPairs("val", 2, 48, 56, seed=0),
        test=SyntheticPairs("test", 3, 40, 52, seed=0),
        mask_source=LabelMasks(),
        batch_size=4,
        crop_size=32,
        seed=0,
    )
    args.update(kw)
    return IVIFDataModule(**args)


def test_datamodule_end_to_end_with_perturbation():
    dm = _synthetic_dm(perturb={"mode": "erode", "kernel_size": 5, "apply_to": ["test"]})
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["ir"].shape == (4, 1, 32, 32) and batch["vis"].shape == (4, 3, 32, 32)
    assert batch["mask_ir"].shape == batch["mask_vis"].shape == (4, 1, 32, 32)
    for key in ("ir", "vis", "mask_ir", "mask_vis"):
        assert batch[key].dtype == torch.float32
        assert batch[key].min() >= 0 and batch[key].max() <= 1
    assert set(batch["mask_ir"].unique().tolist()) <= {0.0, 1.0} and len(batch["name"]) == 4

    val = next(iter(dm.val_dataloader()))  # full image, masks untouched
    pair = dm.sources["val"][0]
    assert val["ir"].shape == (1, 1, 48, 56) and val["name"] == ["val_00000"]
    np.testing.assert_array_equal(val["ir"][0, 0].numpy(), pair.ir)
    np.testing.assert_array_equal(val["vis"][0].permute(1, 2, 0).numpy(), pair.vis)
    np.testing.assert_array_equal(val["mask_ir"][0, 0].numpy(), pair.masks[0])

    dm.setup("test")
    test = list(dm.test_dataloader()[0])
    assert len(test) == 3 and test[0]["ir"].shape == (1, 1, 40, 52)
    for i, batch in enumerate(test):
        mask_ir, mask_vis = dm.sources["test"][i].masks
        np.testing.assert_array_equal(batch["mask_ir"][0, 0].numpy(), perturb_mask(mask_ir, "erode", 5))
        np.testing.assert_array_equal(batch["mask_vis"][0, 0].numpy(), perturb_mask(mask_vis, "erode", 5))
        assert batch["mask_ir"].sum() < mask_ir.sum()
    assert [b["name"][0] for b in dm.predict_dataloader()[0]] == ["test_00000", "test_00001", "test_00002"]


def test_datamodule_shuffle_and_crops_are_seeded():
    def first(seed):
        dm = _synthetic_dm(seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first(0), first(0), first(1)
    assert a["name"] == b["name"] and torch.equal(a["ir"], b["ir"])
    assert torch.equal(a["mask_vis"], b["mask_vis"])
    assert a["name"] != c["name"] or not torch.equal(a["ir"], c["ir"])


def test_datamodule_no_masks_and_pickle():
    dm = _synthetic_dm(mask_source=NoMasks(), perturb={"mode": "dilate", "apply_to": ["train", "test"]})
    assert not dm.mask_channels_enabled
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask_ir"].sum() == 0 and batch["mask_vis"].sum() == 0
    clone = pickle.loads(pickle.dumps(dm.datasets["train"]))  # what spawn-started workers receive
    assert clone[0]["ir"].shape == (1, 32, 32)


class _SamePair(PairSource):
    """Every index is the same coordinate-encoded pair: crops reveal the augmentation stream."""

    def __init__(self, n: int = 6):
        self.n = n
        self.ir, self.vis, self.m_ir, self.m_vis = _coordinate_sample(48, 48, np.random.default_rng(2))

    def __len__(self):
        return self.n

    def names(self):
        return [f"p{i}" for i in range(self.n)]

    def key(self, index):
        return f"same:{index}"

    def __getitem__(self, index):
        return Pair(self.names()[index], self.ir, self.vis, self.key(index), (self.m_ir, self.m_vis))

    @property
    def has_labels(self):
        return True


def test_workers_draw_distinct_reproducible_augmentations():
    def crops(seed):
        dm = IVIFDataModule(_SamePair(), None, None, LabelMasks(), batch_size=1, crop_size=16, num_workers=2,
                            seed=seed)
        return [b["ir"] for b in dm.train_dataloader()]

    first, again, other = crops(0), crops(0), crops(1)
    assert len(first) == 6
    # workers 0 and 1 load alternate items: without per-worker seeds they would repeat each other's crops
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_bad_masks_from_a_source_fail_clearly():
    pairs = SyntheticPairs("val", 2, 48, 56)
    mask_ir, mask_vis = pairs[0].masks
    dataset = _synthetic_dm()._dataset("val")
    dataset.pairs = _Relabel(pairs, (mask_ir * 255, mask_vis))  # {0, 255}: not a {0, 1} mask
    with pytest.raises(DataError, match="val_00000.*mask_ir.*maximum 255"):
        dataset[0]
    dataset.pairs = _Relabel(pairs, (mask_ir[:-1], mask_vis))
    with pytest.raises(DataError, match=r"mask_ir of shape \(47, 56\)"):
        dataset[0]


class _Relabel(PairSource):
    """``pairs`` with the given masks on every pair."""

    def __init__(self, pairs, masks):
        self.pairs, self.masks = pairs, masks

    def __len__(self):
        return len(self.pairs)

    def names(self):
        return self.pairs.names()

    def key(self, index):
        return self.pairs.key(index)

    def __getitem__(self, index):
        p = self.pairs[index]
        return Pair(p.name, p.ir, p.vis, p.key, self.masks)


def test_label_masks_on_folder_fails_at_prepare_data(tmp_path):
    root = _make_folder(tmp_path / "ds")
    dm = IVIFDataModule(train=FolderPairs(root), val=None, test=FolderPairs(root), mask_source=LabelMasks())
    with pytest.raises(DataError, match="masks=labels.*no mask labels.*masks=sam"):
        dm.prepare_data()


def test_different_sizes_in_one_batch_fail_clearly(tmp_path):
    root = tmp_path / "ds"
    _make_folder(root, names=("a",), size=(20, 30))
    _make_folder(root, names=("b",), size=(24, 30))
    dm = IVIFDataModule(train=None, val=None, test=FolderPairs(root), mask_source=NoMasks(), val_batch_size=2)
    dm.setup("test")
    with pytest.raises(DataError, match="different sizes.*val_batch_size=1"):
        next(iter(dm.test_dataloader()[0]))
    one_by_one = IVIFDataModule(None, None, FolderPairs(root), NoMasks())
    sizes = [b["ir"].shape for b in one_by_one.test_dataloader()[0]]
    assert sizes == [(1, 1, 20, 30), (1, 1, 24, 30)]
    with pytest.raises(DataError, match="different sizes"):
        collate_pairs([{"ir": torch.zeros(1, 4, 4), "name": "x"}, {"ir": torch.zeros(1, 4, 5), "name": "y"}])


class _Empty(PairSource):
    def __len__(self):
        return 0

    def names(self):
        return []

    def key(self, index):
        raise IndexError(index)

    def __getitem__(self, index):
        raise IndexError(index)


def test_datamodule_config_validation():
    with pytest.raises(DataError, match="perturb.mode"):
        _synthetic_dm(perturb={"mode": "blur"})
    with pytest.raises(DataError, match="unknown key"):
        _synthetic_dm(perturb={"mode": "erode", "kernal_size": 3})
    with pytest.raises(DataError, match="kernel_size"):
        _synthetic_dm(perturb={"mode": "erode", "kernel_size": 0})
    with pytest.raises(DataError, match="apply_to"):
        _synthetic_dm(perturb={"mode": "erode", "apply_to": ["testing"]})
    with pytest.raises(DataError, match="batch_size"):
        _synthetic_dm(batch_size=0)
    with pytest.raises(DataError, match="no split"):
        IVIFDataModule(None, None, None, mask_source=NoMasks())
    with pytest.raises(DataError, match="train split"):
        IVIFDataModule(None, None, SyntheticPairs("test", 1, 16, 16), mask_source=NoMasks()).setup("fit")
    with pytest.raises(DataError, match="val split.*no pairs"):
        _synthetic_dm(val=_Empty()).prepare_data()
    with pytest.raises(DataError, match="no test split"):
        _synthetic_dm(test=None).test_dataloader()


class _MeanModel(L.LightningModule):
    """Smallest module that consumes the batches (checks the loaders inside a real Trainer)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[str, tuple]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", tuple(batch["ir"].shape)))
        return ((batch["ir"].mean() - self.w) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.seen.append(("val", tuple(batch["vis"].shape)))

    def test_step(self, batch, batch_idx):
        self.seen.append(("test", tuple(batch["mask_vis"].shape)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("with_val", [True, False])
def test_datamodule_in_lightning_trainer(tmp_path, with_val):
    dm = _synthetic_dm(**({} if with_val else {"val": None}))
    model = _MeanModel()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    kinds = [k for k, _ in model.seen]
    assert kinds.count("train") == 2 and kinds.count("test") == 3
    assert (kinds.count("val") > 0) == with_val
    assert ("train", (4, 1, 32, 32)) in model.seen and ("test", (1, 1, 40, 52)) in model.seen


def test_folder_with_real_copy_and_sha1(tmp_path, real_data):
    """The content key is the SHA-1 of both files: copying keeps it, the key differs per dataset file."""
    root = tmp_path / "tno"
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
        shutil.copy(real_data / "TNO" / sub / "05.png", root / sub / "05.png")
    pairs = FolderPairs(root)
    digest = hashlib.sha1()
    for sub in ("ir", "vi"):
        data = (root / sub / "05.png").read_bytes()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    assert pairs.key(0) == digest.hexdigest() == FolderPairs.tno(real_data / "TNO").key(4)


# ---------------------------------------------------------------------------------------------------------
# pre-flight validation (issue 3): bad pairs fail in prepare_data, before masks are computed or cached
class _CountingMasks(MaskSource):
    """Records ``prepare`` calls and caches one mask pair per image, as SAM would."""

    def __init__(self, cache_dir: Path):
        self.cache = MaskCache(cache_dir)
        self.calls: list[tuple[str, int]] = []

    def prepare(self, pairs, split):
        self.calls.append((split, len(pairs)))
        for index in range(len(pairs)):
            mask = np.zeros(pairs[index].ir.shape, np.uint8)
            self.cache.put("fake", pairs.key(index), mask, mask)

    def load(self, pair):
        return self.cache.get("fake", pair.key, pair.ir.shape)


def test_size_mismatch_fails_in_prepare_data_before_any_mask_is_cached(tmp_path):
    good = _make_folder(tmp_path / "good", names=("p", "q"), size=(16, 20))  # other content: own entries
    bad = _make_folder(tmp_path / "bad", names=("a", "b", "c"), size=(24, 32))
    cv2.imwrite(str(bad / "vi" / "b.png"), np.zeros((20, 30, 3), np.uint8))
    masks = _CountingMasks(tmp_path / "cache")
    # the bad split comes last: the good train split must not be prepared either
    dm = IVIFDataModule(train=FolderPairs(good), val=None, test=FolderPairs(bad, split="test"),
                        mask_source=masks)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "'b'" in message and "32×24" in message and "30×20" in message and "(test split)" in message
    assert "1 pair(s)" in message and "register/crop" in message and "remove" in message
    assert "'a'" not in message and "'c'" not in message
    assert masks.calls == [] and not (tmp_path / "cache").exists()

    cv2.imwrite(str(bad / "vi" / "b.png"), np.zeros((24, 32, 3), np.uint8))  # the fix
    dm.prepare_data()
    assert masks.calls == [("train", 2), ("test", 3)]
    assert len(list((tmp_path / "cache" / "fake").glob("*.npz"))) == 5  # the fake really writes


def test_validate_lists_at_most_five_mismatches_and_accepts_good_folders(tmp_path):
    names = [f"{i:02d}" for i in range(7)]
    root = _make_folder(tmp_path / "ds", names=names, size=(16, 16), vis_ext=".jpg")
    FolderPairs(root).validate()  # PNG IR + JPEG VIS of one size
    for name in names:
        cv2.imwrite(str(root / "ir" / f"{name}.png"), np.zeros((16, 18), np.uint8))
    expected = r"7 pair\(s\).*'00': IR 00\.png is 18×16, VIS 00\.jpg is 16×16"
    with pytest.raises(DataError, match=expected) as err:
        FolderPairs(root).validate()
    assert "'04'" in str(err.value) and "'05'" not in str(err.value) and "(2 more)" in str(err.value)
    with pytest.raises(DataError, match=r"2 pair\(s\)"):
        FolderPairs(root, names=["00", "01"]).validate()


def test_unreadable_header_fails_in_prepare_data_naming_the_file(tmp_path):
    root = _make_folder(tmp_path / "ds", names=("a", "b", "c"))
    (root / "vi" / "b.png").write_bytes(b"garbage")
    (root / "ir" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    masks = _CountingMasks(tmp_path / "cache")
    dm = IVIFDataModule(train=None, val=None, test=FolderPairs(root), mask_source=masks)
    with pytest.raises(DataError, match=r"2 file\(s\) are not readable images") as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(root / "vi" / "b.png") in message and str(root / "ir" / "c.png") in message
    assert "replace or remove" in message and "a.png" not in message
    assert masks.calls == [] and not (tmp_path / "cache").exists()


def test_validate_falls_back_to_opencv_for_files_pillow_cannot_identify(tmp_path):
    """OpenCV decodes 3-channel float TIFF, Pillow does not: what training reads must not be rejected."""
    root = _make_folder(tmp_path / "ds", names=("a",), size=(12, 20))
    (root / "vi" / "a.png").unlink()
    assert cv2.imwrite(str(root / "vi" / "a.tif"), np.full((12, 20, 3), 0.5, np.float32))
    pairs = FolderPairs(root)
    pairs.validate()
    assert pairs[0].vis.shape == (12, 20, 3)
    assert cv2.imwrite(str(root / "vi" / "a.tif"), np.full((12, 21, 3), 0.5, np.float32))
    with pytest.raises(DataError, match="'a': IR a.png is 20×12, VIS a.tif is 21×12"):
        FolderPairs(root).validate()


def test_validate_real_tno_and_roadscene_reads_headers_only(real_data, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("validate() decoded pixels")

    monkeypatch.setattr(cv2, "imread", no_decoding)
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    for source in (FolderPairs.tno(real_data / "TNO"), FolderPairs.roadscene(real_data / "RoadScene")):
        source.validate()
