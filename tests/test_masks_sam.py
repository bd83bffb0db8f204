"""SamMasks on a tiny random-weight SAM: the real SamAutomaticMaskGenerator, the cache, checkpoints."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from sgdfuse.data.base import DataError, Pair, PairSource
from sgdfuse.masks.cache import MaskCache
from sgdfuse.masks.sam import SamCheckpointError, SamMasks, select_masks, to_uint8_rgb
from sgdfuse.masks.tiny_sam import build_tiny_sam

TINY = {"_target_": "sgdfuse.masks.tiny_sam.build_tiny_sam", "seed": 0}
# Random weights pass no threshold (docs/design.md, Masks in tests): thresholds 0, few points, no crops.
FAST = {
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "crop_n_layers": 0,
    "min_mask_region_area": 0,
}


class TinyPairs(PairSource):
    """A few structured 64×96 pairs: bright warm blobs in IR, textured rectangles in VIS."""

    def __init__(self, num_pairs: int = 3, height: int = 64, width: int = 96, seed: int = 0) -> None:
        self.num_pairs, self.height, self.width, self.seed = num_pairs, height, width, seed

    def __len__(self) -> int:
        return self.num_pairs

    def names(self) -> list[str]:
        return [f"tiny{i}" for i in range(self.num_pairs)]

    def key(self, index: int) -> str:
        return f"tiny:{self.seed}:{index}"

    def __getitem__(self, index: int) -> Pair:
        rng = np.random.default_rng((self.seed, index))
        h, w = self.height, self.width
        ir = 0.1 + 0.05 * rng.random((h, w), dtype=np.float32)
        vis = 0.2 + 0.1 * rng.random((h, w, 3), dtype=np.float32)
        y, x = rng.integers(4, h // 2), rng.integers(4, w // 2)
        ir[y : y + h // 3, x : x + w // 4] = 0.9
        vis[h - y - h // 4 : h - y, w - x - w // 3 : w - x] = rng.random(3, dtype=np.float32)
        return Pair(name=self.names()[index], ir=ir, vis=vis, key=self.key(index))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run several times faster on one thread when the CPU is shared (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sam_calls(monkeypatch):
    """Counts SamAutomaticMaskGenerator.generate calls (one per image and modality)."""
    calls: list[tuple[int, ...]] = []
    original = SamAutomaticMaskGenerator.generate

    def counting(self, image):
        calls.append(image.shape)
        return original(self, image)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", counting)
    return calls


def tiny_source(cache_dir: Path, **overrides) -> SamMasks:
    kwargs = {"model": TINY, "generator": FAST, "cache_dir": str(cache_dir), "device": "cpu", **overrides}
    return SamMasks(**kwargs)


def _entries(cache_dir: Path, source: SamMasks) -> list[Path]:
    return sorted(source.cache.source_dir(source.source_hash).glob("*.npz"))


def test_real_generator_yields_nonempty_binary_masks_of_image_size(tmp_path, sam_calls):
    pairs = TinyPairs(num_pairs=1)
    mask_ir, mask_vis = tiny_source(tmp_path).compute(pairs[0])
    for mask in (mask_ir, mask_vis):
        assert mask.shape == (64, 96) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert 0 < mask.sum() <= 0.5 * mask.size * 5  # non-empty, within top_k × max_area
    assert sam_calls == [(64, 96, 3), (64, 96, 3)]  # IR replicated to 3 channels, then VIS


def test_select_masks_ranks_by_iou_times_stability_within_area_bounds():
    shape = (10, 10)

    def ann(rows: slice, iou: float, stability: float) -> dict:
        seg = np.zeros(shape, dtype=bool)
        seg[rows] = True
        return {
            "segmentation": seg,
            "area": int(seg.sum()),
            "predicted_iou": iou,
            "stability_score": stability,
        }

    anns = [
        ann(slice(0, 1), 0.99, 0.99),  # 10 % area, best score
        ann(slice(1, 2), 0.90, 0.50),  # 10 %, score 0.45 (third)
        ann(slice(2, 3), 0.80, 0.80),  # 10 %, score 0.64 (second)
        ann(slice(3, 10), 1.0, 1.0),  # 70 %: background, above max_area
    ]
    mask = select_masks(anns, shape, top_k=2, min_area=0.05, max_area=0.5)
    expected = np.zeros(shape, dtype=np.uint8)
    expected[0] = expected[2] = 1
    np.testing.assert_array_equal(mask, expected)
    # Nothing qualifies (all too small): an all-zero mask, not an error.
    assert select_masks(anns, shape, top_k=5, min_area=0.8, max_area=0.9).sum() == 0


def test_to_uint8_rgb_replicates_grey_and_rounds():
    grey = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    rgb = to_uint8_rgb(grey)
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_prepare_runs_sam_once_per_image_then_never(tmp_path, sam_calls):
    pairs = TinyPairs(num_pairs=3)
    first = tiny_source(tmp_path)
    first.prepare(pairs, "train")
    assert len(sam_calls) == 2 * len(pairs)
    assert (first.stats.computed, first.stats.cached, first.stats.calls) == (3, 0, 6)
    assert len(_entries(tmp_path, first)) == 3
    manifest = first.cache.read_manifest(first.source_hash)
    assert manifest["segment_anything_version"] == "1.0"
    assert manifest["source"]["generator"]["points_per_side"] == 4
    assert manifest["source"]["checkpoint_sha256"] is None
    cold = [first.load(pairs[i]) for i in range(len(pairs))]

    sam_calls.clear()
    first.prepare(pairs, "train")  # same object
    fresh = tiny_source(tmp_path)  # a later run: new object, same cache dir
    fresh.prepare(pairs, "train")
    assert sam_calls == []
    assert (fresh.stats.computed, fresh.stats.cached, fresh.stats.calls) == (0, 3, 0)
    for i, (mask_ir, mask_vis) in enumerate(cold):
        got_ir, got_vis = fresh.load(pairs[i])
        np.testing.assert_array_equal(got_ir, mask_ir)
        np.testing.assert_array_equal(got_vis, mask_vis)
    assert sam_calls == []


def test_generator_parameter_change_invalidates_but_speed_knob_does_not(tmp_path, sam_calls):
    pairs = TinyPairs(num_pairs=2)
    base = tiny_source(tmp_path)
    base.prepare(pairs, "test")
    sam_calls.clear()

    changed = tiny_source(tmp_path, generator={**FAST, "points_per_side": 3})
    assert changed.source_hash != base.source_hash
    changed.prepare(pairs, "test")
    assert len(sam_calls) == 4
    assert len(list(tmp_path.glob("*/manifest.json"))) == 2

    sam_calls.clear()
    for other in (
        tiny_source(tmp_path, generator={**FAST, "points_per_batch": 16}),  # speed only: same cache
        tiny_source(tmp_path, generator={**FAST, "pred_iou_thresh": 0}),  # int 0 (command line) == 0.0
        tiny_source(tmp_path, generator={**FAST, "box_nms_thresh": 0.7}),  # SAM's default, spelled out
    ):
        assert other.source_hash == base.source_hash
        other.prepare(pairs, "test")
    assert sam_calls == []
    assert tiny_source(tmp_path, top_k=2).source_hash != base.source_hash
    assert tiny_source(tmp_path, max_area=0.4).source_hash != base.source_hash


def test_checkpoint_content_keys_the_cache_and_is_loaded(tmp_path, sam_calls):
    pairs = TinyPairs(num_pairs=2)
    weights = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam(seed=0).state_dict(), weights)
    # Builder seed 1, weights of seed 0: the checkpoint must win.
    with_ckpt = tiny_source(tmp_path / "cache", model={**TINY, "seed": 1}, checkpoint=str(weights))
    with_ckpt.prepare(pairs, "test")
    assert len(sam_calls) == 4
    reference = tiny_source(tmp_path / "ref").compute(pairs[0])  # seed-0 builder, no checkpoint
    loaded = with_ckpt.load(pairs[0])
    np.testing.assert_array_equal(loaded[0], reference[0])
    np.testing.assert_array_equal(loaded[1], reference[1])
    seed1 = tiny_source(tmp_path / "ref", model={**TINY, "seed": 1}).compute(pairs[0])
    assert not all(np.array_equal(a, b) for a, b in zip(seed1, reference, strict=True))  # distinguishable

    manifest = with_ckpt.cache.read_manifest(with_ckpt.source_hash)
    assert manifest["checkpoint_path"] == str(weights)
    assert len(manifest["source"]["checkpoint_sha256"]) == 64

    # Same content, new mtime: same cache. New content: new cache, SAM runs again.
    sam_calls.clear()
    os.utime(weights, ns=(1, 2 * 10**18))
    same = tiny_source(tmp_path / "cache", model={**TINY, "seed": 1}, checkpoint=str(weights))
    same.prepare(pairs, "test")
    assert sam_calls == [] and same.source_hash == with_ckpt.source_hash
    torch.save(build_tiny_sam(seed=2).state_dict(), weights)
    new = tiny_source(tmp_path / "cache", model={**TINY, "seed": 1}, checkpoint=str(weights))
    assert new.source_hash != with_ckpt.source_hash
    new.prepare(pairs, "test")
    assert len(sam_calls) == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cache_entry_is_recomputed(tmp_path, sam_calls, damage):
    pairs = TinyPairs(num_pairs=3)
    source = tiny_source(tmp_path)
    source.prepare(pairs, "val")
    expected = source.load(pairs[1])
    entry = source.cache.entry_path(source.source_hash, pairs.key(1), (64, 96))
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 3] if damage == "truncate" else os.urandom(len(data)))

    sam_calls.clear()
    again = tiny_source(tmp_path)
    again.prepare(pairs, "val")
    assert len(sam_calls) == 2
    assert (again.stats.computed, again.stats.cached) == (1, 2)
    got = MaskCache(tmp_path).get(source.source_hash, pairs.key(1), (64, 96))
    assert got is not None
    np.testing.assert_array_equal(got[0], expected[0])


def _prepare_in_child(cache_dir: str) -> None:
    torch.set_num_threads(1)
    tiny_source(Path(cache_dir)).prepare(TinyPairs(num_pairs=4), "train")


def test_two_processes_filling_the_same_cache_leave_valid_entries(tmp_path, sam_calls):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_prepare_in_child, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]

    pairs = TinyPairs(num_pairs=4)
    source = tiny_source(tmp_path)
    files = sorted(p.name for p in source.cache.source_dir(source.source_hash).iterdir())
    assert len(files) == 5 and "manifest.json" in files  # 4 entries + manifest, no temp files
    for i in range(4):
        masks = source.cache.get(source.source_hash, pairs.key(i), (64, 96))
        assert masks is not None and masks[0].shape == (64, 96)
    source.prepare(pairs, "train")
    assert sam_calls == [] and source.stats.cached == 4


def test_offline_without_checkpoint_says_which_key_to_set(tmp_path, monkeypatch, sam_calls):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    source = SamMasks(model_type="vit_b", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SamCheckpointError, match=r"masks\.checkpoint=/path/to/sam_vit_b_01ec64\.pth") as err:
        source.prepare(TinyPairs(num_pairs=1), "train")
    assert "sam_vit_b_01ec64.pth" in str(err.value) and "offline" in str(err.value)
    assert isinstance(err.value, DataError)
    assert sam_calls == []
    assert not list((tmp_path / "torch").rglob("*.pth"))

    no_download = SamMasks(model_type="vit_l", cache_dir=str(tmp_path / "cache"), download=False)
    with pytest.raises(SamCheckpointError, match=r"masks\.checkpoint=/path/to/sam_vit_l_0b3195\.pth"):
        no_download.prepare(TinyPairs(num_pairs=1), "train")


def test_online_downloads_official_weights_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    downloads = []

    def fake_download(url, dst, *args, **kwargs):
        downloads.append(url)
        Path(dst).write_bytes(b"official weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = SamMasks(model_type="vit_b", cache_dir=str(tmp_path / "cache")).resolve_checkpoint()
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "sam_vit_b_01ec64.pth"
    assert downloads == ["https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"]
    again = SamMasks(model_type="vit_b", cache_dir=str(tmp_path / "cache"))
    assert again.resolve_checkpoint() == path and len(downloads) == 1
    # The downloaded content keys the cache like a user-given path with the same bytes.
    copy = tmp_path / "copy.pth"
    copy.write_bytes(path.read_bytes())
    given = SamMasks(model_type="vit_b", checkpoint=str(copy), cache_dir=str(tmp_path / "cache"))
    assert given.source_hash == again.source_hash


def test_missing_or_mismatched_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "sam_vit_b_01ec64.pth"
    source = SamMasks(model_type="vit_b", checkpoint=str(missing), cache_dir=str(tmp_path / "c"))
    with pytest.raises(SamCheckpointError, match="SAM checkpoint not found") as err:
        source.prepare(TinyPairs(num_pairs=1), "train")
    assert str(missing) in str(err.value) and "masks.checkpoint=" in str(err.value)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.npz"))

    wrong = tmp_path / "other_arch.pth"
    torch.save(build_tiny_sam(embed_dim=32).state_dict(), wrong)
    mismatched = tiny_source(tmp_path / "c", checkpoint=str(wrong))
    with pytest.raises(SamCheckpointError, match="cannot load SAM checkpoint") as err:
        mismatched.prepare(TinyPairs(num_pairs=1), "train")
    assert str(wrong) in str(err.value)


def test_bad_config_is_rejected_with_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"masks\.source\.generator\.points_per_sid"):
        tiny_source(tmp_path, generator={"points_per_sid": 8})
    with pytest.raises(ValueError, match=r"masks\.source\.model_type='vit_x'"):
        SamMasks(model_type="vit_x", cache_dir=str(tmp_path))
    with pytest.raises(TypeError, match="_recursive_: false"):
        SamMasks(model=build_tiny_sam(), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="min_area < max_area"):
        tiny_source(tmp_path, min_area=0.6, max_area=0.5)


def test_load_before_prepare_computes_lazily_and_caches(tmp_path, sam_calls):
    """Decision: a cache miss in load() computes the masks (with a warning) instead of raising."""
    pairs = TinyPairs(num_pairs=3)
    source = tiny_source(tmp_path)
    lazy = source.load(pairs[1])
    assert len(sam_calls) == 2 and lazy[0].shape == (64, 96)
    assert source.cache.read_manifest(source.source_hash) is not None

    sam_calls.clear()
    fresh = tiny_source(tmp_path)
    fresh.prepare(pairs, "train")
    assert len(sam_calls) == 4 and (fresh.stats.computed, fresh.stats.cached) == (2, 1)
    np.testing.assert_array_equal(fresh.load(pairs[1])[1], lazy[1])


def test_pickled_source_carries_no_sam_weights(tmp_path, sam_calls):
    pairs = TinyPairs(num_pairs=1)
    source = tiny_source(tmp_path)
    source.load(pairs[0])  # builds SAM (lazy path keeps it for further misses)
    assert source._generator is not None
    clone = pickle.loads(pickle.dumps(source))
    assert clone._generator is None
    sam_calls.clear()
    np.testing.assert_array_equal(clone.load(pairs[0])[0], source.load(pairs[0])[0])
    assert sam_calls == []


def test_through_synthetic_pairs(tmp_path, sam_calls):
    synthetic = pytest.importorskip("sgdfuse.data.synthetic")
    pairs = synthetic.SyntheticPairs(split="test", num_pairs=2, height=64, width=64, seed=3)
    source = tiny_source(tmp_path)
    source.prepare(pairs, "test")
    assert len(sam_calls) == 4
    mask_ir, mask_vis = source.load(pairs[1])
    assert mask_ir.shape == mask_vis.shape == (64, 64)
    assert mask_ir.sum() > 0 and mask_vis.sum() > 0
    # Another size of the same generator stream is a different content: new entries.
    tiny_source(tmp_path).prepare(synthetic.SyntheticPairs("test", 2, 64, 80, seed=3), "test")
    assert len(sam_calls) == 8


REPO = Path(__file__).resolve().parents[1]


def test_masks_sam_config_short_checkpoint_key_and_lazy_model(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [
        "masks.checkpoint=/weights/sam_vit_b_01ec64.pth",
        f"paths.cache_dir={tmp_path}",
        "+masks.source.model={_target_: sgdfuse.masks.tiny_sam.build_tiny_sam, seed: 4}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="precompute_masks", overrides=overrides)
    source = instantiate(cfg.masks.source)
    assert isinstance(source, SamMasks)
    assert source.checkpoint == "/weights/sam_vit_b_01ec64.pth"
    assert source.model_config == {"_target_": "sgdfuse.masks.tiny_sam.build_tiny_sam", "seed": 4}
    assert source.generator_config["pred_iou_thresh"] == 0.86 and source.top_k == 5
    assert source.cache.root == tmp_path / "masks"
    assert source._generator is None  # nothing built at instantiation
    assert cfg.masks.perturb.apply_to == ["test"]


def test_precompute_masks_command_fills_the_cache(tmp_path, sam_calls):
    import subprocess
    import sys

    size = ["height=64", "width=64"]
    overrides = [f"data.{split}.{kv}" for split in ("train", "val", "test") for kv in ("num_pairs=2", *size)]
    overrides += [
        "masks.source.model={_target_: sgdfuse.masks.tiny_sam.build_tiny_sam}",
        *(f"masks.source.generator.{k}={v}" for k, v in FAST.items()),
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "precompute_masks.py"), *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line.split() for line in result.stdout.splitlines()]
    rows = {row[0]: row[1:5] for row in table if row and row[0] in ("train", "val", "test")}
    # pairs, images (IR + VIS), computed, cached
    assert rows == {split: ["2", "4", "2", "0"] for split in ("train", "val", "test")}
    # The training run's source (same settings) finds every mask: SAM never runs.
    source = tiny_source(tmp_path / "cache" / "masks", model={"_target_": TINY["_target_"]})
    synthetic = pytest.importorskip("sgdfuse.data.synthetic")
    for split in ("train", "val", "test"):
        source.prepare(synthetic.SyntheticPairs(split, 2, 64, 64, seed=0), split)
        assert source.stats.cached == 2
    assert sam_calls == []
