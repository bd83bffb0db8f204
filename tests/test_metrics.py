"""Fusion metrics: agreement with an independent numpy reference on real pairs, and closed-form properties
that pin each formula and quirk of docs/metrics.md."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse.color import recombine, rgb_to_y
from sgdfuse.data.folder import FolderPairs
from sgdfuse.metrics import DEFAULT_METRICS, FusionMetrics, score_pair, to_grey8
from sgdfuse.metrics import functional as MF
from sgdfuse.metrics.grey import luma8
from tests import metrics_numpy_reference as R

# Small full-size pairs (odd sizes; grey TNO; colour RoadScene, one only 161 px high); the largest TNO pair
# (709×945, a prime number of rows) only in the slow run.
REAL_PAIRS = [
    ("TNO", "37"),
    ("RoadScene", "FLIR_06974"),
    ("RoadScene", "FLIR_00211"),
    pytest.param("TNO", "09", marks=pytest.mark.slow),
]
MATLAB_DIFFERENT = ("AG", "MI", "SSIM", "MSE", "PSNR")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on this shared 2-core machine two contending threads made the FFT/bincount
    kernels 10-40× slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grey(h: int = 48, w: int = 56, seed: int = 0) -> torch.Tensor:
    """1×H×W integer grey levels with structure (a ramp plus noise), as float64."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, w).expand(h, w)
    return (ramp + torch.randint(0, 50, (h, w), generator=g)).round().clamp(0, 255)[None].double()


def _as01(grey: torch.Tensor) -> torch.Tensor:
    """1×H×W grey levels -> 1×1×H×W float in [0, 1] that quantises back to the same levels."""
    return (grey / 255.0).float().unsqueeze(1)


def _scores(f, a, b, metrics=DEFAULT_METRICS, convention="cddfuse") -> dict[str, float]:
    return score_pair(_as01(f), _as01(a), _as01(b), metrics=metrics, convention=convention)


# --- agreement with the numpy/skimage/sklearn reference on real pairs ----------------------------------
def _fuse(pair, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ir = torch.from_numpy(pair.ir.copy())[None, None]
    vis = torch.from_numpy(pair.vis.copy()).permute(2, 0, 1)[None]
    y_vis = rgb_to_y(vis)
    y = (ir + y_vis) / 2 if mode == "avg" else torch.maximum(ir, y_vis)
    return recombine(y, vis), ir, vis


@pytest.mark.parametrize("dataset,name", REAL_PAIRS)
def test_matches_numpy_reference_on_real_pairs(real_data: Path, dataset: str, name: str) -> None:
    pairs = FolderPairs(real_data / dataset, names=[name])
    ir_path, vis_path = pairs.files(0)
    a_ref, b_ref = R.read_grey(ir_path), R.read_grey(vis_path)  # the evaluator's own loading path
    for mode in ("avg", "max"):
        fused, ir, vis = _fuse(pairs[0], mode)
        f_ref = R.grey_from_rgb01(fused[0].permute(1, 2, 0).numpy())
        # The torch path reads the same pixels as the reference loader.
        for ours, ref in ((fused, f_ref), (ir, a_ref), (vis, b_ref)):
            np.testing.assert_array_equal(to_grey8(ours)[0].numpy(), ref)
        metric = FusionMetrics(metrics=[*DEFAULT_METRICS, "Nabf", "MS_SSIM"])
        metric.update(fused, ir, vis, names=[name])
        got = {k: float(v) for k, v in metric.compute().items()}
        want = {**R.score(f_ref, a_ref, b_ref), "Nabf": R.nabf(f_ref, a_ref, b_ref),
                "MS_SSIM": R.ms_ssim(f_ref, a_ref, b_ref)}
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-12), (dataset, name, mode, key)
        if mode == "avg":
            matlab = score_pair(fused, ir, vis, metrics=MATLAB_DIFFERENT, convention="matlab")
            want = {"AG": R.ag(f_ref, "matlab"), "MI": R.mi(f_ref, a_ref, b_ref, "matlab"),
                    "SSIM": R.ssim(f_ref, a_ref, b_ref, "matlab"),
                    "MSE": R.mse(f_ref, a_ref, b_ref, "matlab"),
                    "PSNR": R.psnr(f_ref, a_ref, b_ref, "matlab")}
            for key, value in want.items():
                assert matlab[key] == pytest.approx(value, rel=1e-3), (dataset, name, "matlab", key)


# --- 8-bit grey conversion -------------------------------------------------------------------------------
def test_luma_rounds_half_to_even_like_the_reference() -> None:
    # BGR (250, 0, 0) -> 0.114*250 = 28.5 -> 28 ; BGR (168, 4, 0) -> 21.5 -> 22 (round half to even)
    rgb = torch.tensor([[0, 0, 250], [0, 4, 168]], dtype=torch.uint8).T.reshape(1, 3, 1, 2)
    assert to_grey8(rgb).flatten().tolist() == [28.0, 22.0]
    # Same result from float input in [0, 1] (quantised like a PNG writer first).
    assert to_grey8(rgb.float() / 255).flatten().tolist() == [28.0, 22.0]


def test_luma_is_bit_identical_to_opencv_float32() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(1, 3, 300, 400), dtype=np.uint8)
    bgr = rgb[0, ::-1].transpose(1, 2, 0).astype(np.float32)
    want = np.round(cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(to_grey8(torch.from_numpy(rgb))[0].numpy(), want)


def test_float_input_is_quantised_per_channel_and_clamped() -> None:
    x = torch.tensor([[-0.2, 0.0, 0.5, 1.0, 1.7]]).view(1, 1, 1, 5)
    assert to_grey8(x).flatten().tolist() == [0.0, 0.0, 128.0, 255.0, 255.0]  # round(127.5) = 128 in float32


# --- closed forms ------------------------------------------------------------------------------------------
def test_constant_image_has_zero_information() -> None:
    f = torch.full((1, 32, 40), 77.0, dtype=torch.float64)
    for fn in (MF.entropy, MF.standard_deviation, MF.spatial_frequency, MF.average_gradient):
        assert float(fn(f)[0]) == 0.0


def test_two_level_image_closed_forms() -> None:
    f = torch.zeros(1, 20, 30, dtype=torch.float64)
    f[:, :, :15] = 40.0
    f[:, :, 15:] = 200.0
    assert float(MF.entropy(f)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(MF.standard_deviation(f)[0]) == pytest.approx(80.0, abs=1e-9)
    # One jump of 160 per row among W-1 horizontal differences, none vertically.
    assert float(MF.spatial_frequency(f)[0]) == pytest.approx(math.sqrt(160.0**2 / 29), rel=1e-12)


def test_identical_images() -> None:
    x = _grey()
    s = _scores(x, x, x)
    en_nats = s["EN"] * math.log(2)
    assert s["MI"] == pytest.approx(2 * en_nats, rel=1e-9)  # MI(X, X) = H(X), nats, summed over A and B
    assert s["SSIM"] == pytest.approx(2.0, abs=1e-6)  # a sum of two SSIMs
    assert s["VIF"] == pytest.approx(2.0, abs=1e-6)  # a sum of two VIFs
    assert s["CC"] == pytest.approx(1.0, abs=1e-12)
    assert s["SCD"] != s["SCD"]  # F - B is 0: correlation with a constant is undefined (NaN), as in numpy
    assert s["MSE"] == 0.0 and s["PSNR"] == math.inf
    m = _scores(x, x, x, metrics=["MI", "SSIM"], convention="matlab")
    assert m["MI"] == pytest.approx(2 * s["EN"], rel=1e-9)  # bits
    assert m["SSIM"] == pytest.approx(1.0, abs=1e-9)  # the toolbox averages


def test_swapping_ir_and_vis_changes_nothing() -> None:
    f, a, b = _grey(seed=1), _grey(seed=2), torch.flip(_grey(seed=3), dims=[-1])
    names = [*DEFAULT_METRICS, "Nabf"]
    for convention in ("cddfuse", "matlab"):
        ab, ba = _scores(f, a, b, names, convention), _scores(f, b, a, names, convention)
        for key in names:
            assert ab[key] == pytest.approx(ba[key], rel=1e-12, abs=1e-12), key


def test_sum_conventions() -> None:
    """SSIM, VIF and MI add the F-vs-A and F-vs-B scores (each from its library / single-pair formula); MSE
    and CC average them; SCD crosses the differences."""
    from skimage.metrics import structural_similarity
    from sklearn.metrics import mutual_info_score

    f, a, b = _grey(seed=4), _grey(seed=5), torch.flip(_grey(seed=6), dims=[-2])
    got = _scores(f, a, b)
    ff, fa, fb = (x[0].float().numpy() for x in (f, a, b))
    ssim = structural_similarity(ff, fa, data_range=2) + structural_similarity(ff, fb, data_range=2)
    mi = mutual_info_score(ff.ravel(), fa.ravel()) + mutual_info_score(ff.ravel(), fb.ravel())
    assert got["SSIM"] == pytest.approx(ssim, rel=1e-6)
    assert got["MI"] == pytest.approx(mi, rel=1e-9)
    assert got["VIF"] == pytest.approx(R._vifp(fa, ff) + R._vifp(fb, ff), rel=1e-9)
    only_a, only_b = _scores(f, a, a), _scores(f, b, b)
    for key in ("MSE", "CC"):
        assert got[key] == pytest.approx((only_a[key] + only_b[key]) / 2, rel=1e-12), key
    scd = np.corrcoef(fa.ravel(), (ff - fb).ravel())[0, 1] + np.corrcoef(fb.ravel(), (ff - fa).ravel())[0, 1]
    assert got["SCD"] == pytest.approx(scd, rel=1e-6)


def test_matlab_convention_differences() -> None:
    f, a, b = _grey(seed=7), _grey(seed=8), _grey(seed=9)
    c, m = _scores(f, a, b), _scores(f, a, b, convention="matlab")
    h, w = f.shape[-2:]
    assert m["AG"] == pytest.approx(c["AG"] * h * w / ((h - 1) * (w - 1)), rel=1e-12)
    assert m["MSE"] == pytest.approx(c["MSE"] / 255**2, rel=1e-12)
    assert m["PSNR"] == pytest.approx(20 * math.log10(255 / math.sqrt(m["MSE"])), rel=1e-12)
    for key in ("EN", "SD", "SF", "SCD", "VIF", "Qabf", "CC"):
        assert m[key] == c[key], key


def test_matlab_mi_merges_levels_254_and_255_in_the_joint_histogram() -> None:
    # Four equally frequent levels: H = 2 bits. Hab.m's uint8(v)+1 saturates, so 254 and 255 share a joint
    # bin: H(F, A) = 1.5 bits and MI(F, A) = 2 + 2 - 1.5 = 2.5 bits per source.
    x = torch.tensor([0.0, 100.0, 254.0, 255.0], dtype=torch.float64).repeat(8, 4)[None]
    assert float(MF.mutual_information(x, x, x, "matlab")[0]) == pytest.approx(5.0, abs=1e-12)
    assert float(MF.mutual_information(x, x, x, "cddfuse")[0]) == pytest.approx(4 * math.log(2), abs=1e-12)


# --- quirks ------------------------------------------------------------------------------------------------
def test_qabf_equal_strength_uses_gf_not_one() -> None:
    g = torch.tensor([0.0, 0.3, 3.0], dtype=torch.float64)
    angle = torch.zeros(3, dtype=torch.float64)
    q = MF._qabf_preservation(g, angle, g.clone(), angle)
    ratio = g  # the reference's value where gX == gF (a ratio of 1 would be the textbook choice)
    want = 0.9994 / (1 + torch.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + math.exp(-22 * 0.2))
    torch.testing.assert_close(q, want)
    # Image level: F = A = B gives each pixel ratio gF (≥ 1 on edges), not a perfect score.
    x = _grey(seed=10)
    assert _scores(x, x, x, ["Qabf"])["Qabf"] == pytest.approx(R.qabf(*(x[0].float().numpy(),) * 3), rel=1e-6)


def test_vif_nan_becomes_one_per_source() -> None:
    flat = torch.full((1, 48, 48), 90.0, dtype=torch.float64)
    assert float(MF.vif(flat, flat, flat)[0]) == 2.0


def test_row_bands_do_not_change_vif_or_qabf() -> None:
    # Both go band by band for speed; the band height (here down to 1 row, one band that is taller than the
    # image, and a last band of 3 rows) only changes the order of the final sums.
    f, a, b = _grey(seed=3, h=67, w=75), _grey(seed=4, h=67, w=75), _grey(seed=5, h=67, w=75)
    for fn in (MF.vif, MF.qabf):
        whole = fn(f, a, b, band=1000)
        for band in (1, 8, 64):
            torch.testing.assert_close(fn(f, a, b, band=band), whole, rtol=1e-13, atol=0)
    assert float(MF.vif(f, a, b)[0]) == pytest.approx(R.vif(*(x[0].numpy() for x in (f, a, b))), rel=1e-12)
    assert float(MF.qabf(f, a, b)[0]) == pytest.approx(R.qabf(*(x[0].numpy() for x in (f, a, b))), rel=1e-12)
    with pytest.raises(ValueError, match="band=0"):
        MF.vif(f, a, b, band=0)


def test_vif_downsampling_keeps_only_every_other_valid_pixel() -> None:
    # VIF's next-scale images: the valid 2-D correlation with the scale's window, rows and columns 0, 2, 4...
    # (odd and even sizes, so that the last kept pixel sits on the border of the valid region or not).
    from scipy.signal import convolve2d

    for h, w in ((41, 41), (48, 63), (37, 50)):
        x = _grey(seed=h + w, h=h, w=w)
        for k1 in MF._vif_windows(x.device)[1:]:
            want = convolve2d(x[0].numpy(), torch.outer(k1, k1).numpy(), mode="valid")[::2, ::2]
            got = MF._valid_correlate_step2(x, k1)[0].numpy()
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-10)


def test_uint8_and_float32_grey_levels_score_as_float64() -> None:
    # The products inside SSIM/VIF/Qabf must not overflow uint8 nor round in float32.
    f, a, b = _grey(seed=6, h=67, w=75), _grey(seed=7, h=67, w=75), _grey(seed=8, h=67, w=75)
    for fn in (MF.ssim, MF.vif, MF.qabf):
        want = fn(f, a, b)
        for dtype in (torch.uint8, torch.float32):
            got = fn(*(x.to(dtype) for x in (f, a, b))).double()
            assert got == pytest.approx(want, rel=1e-12), (fn, dtype)


def test_psnr_peak_is_max_of_fused() -> None:
    f = torch.zeros(1, 4, 4, dtype=torch.float64)
    f[0, 0, 0] = 200.0
    a = torch.zeros_like(f)
    b = torch.full_like(f, 10.0)
    mse = (200.0**2 / 16 + (15 * 100 + 190**2) / 16) / 2
    assert float(MF.mean_squared_error(f, a, b)[0]) == pytest.approx(mse)
    assert float(MF.psnr(f, a, b)[0]) == pytest.approx(10 * math.log10(200.0**2 / mse))


def test_vif_rejects_images_too_small_for_four_scales() -> None:
    x = _grey(40, 60)
    with pytest.raises(ValueError, match="41"):
        MF.vif(x, x, x)
    with pytest.raises(ValueError, match="tiny_01.*41"):
        FusionMetrics().update(*(_as01(x),) * 2, _as01(x).expand(1, 3, 40, 60), names=["tiny_01"])


def test_ms_ssim_needs_images_larger_than_160() -> None:
    x = _grey(64, 200)
    with pytest.raises(ValueError, match="160"):
        MF.ms_ssim(x, x, x)
    # The toolbox's MS_SSIM (multi-scale MEF-SSIM, tests/test_metrics_fmi_mef.py) only needs 44 px.
    assert 0 < float(MF.ms_ssim(x, x, x, convention="matlab")[0]) <= 1 + 1e-12


def test_fmi_pixel_matches_a_loop_transcription_of_the_toolbox() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, (10, 13)).astype(np.float64) * 40
    b = np.clip(255 - a + rng.integers(-30, 30, a.shape), 0, 255)
    f = np.maximum(a, b)
    f[:4, :4] = a[:4, :4]  # windows identical to A score 1
    b[5:, 5:] = 77  # constant windows: uniform PDF
    t = [torch.from_numpy(x)[None] for x in (f, a, b)]
    assert float(MF.fmi_pixel(*t, chunk=7)[0]) == pytest.approx(R.fmi_pixel(f, a, b), rel=1e-9)
    assert float(MF.fmi_pixel(t[0], t[0], t[0])[0]) == 1.0


# --- the torchmetrics Metric -------------------------------------------------------------------------------
def _batch(b: int = 4, h: int = 48, w: int = 56, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ir = torch.rand(b, 1, h, w, generator=g)
    vis = torch.rand(b, 3, h, w, generator=g)
    fused = (0.5 * ir + 0.5 * vis).clamp(0, 1)
    return fused, ir, vis, [f"p{i}" for i in range(b)]


def test_batched_update_equals_mean_of_single_images() -> None:
    fused, ir, vis, names = _batch()
    batched, single = FusionMetrics(), FusionMetrics()
    batched.update(fused, ir, vis, names=names)
    for i in range(len(names)):
        single.update(fused[i:i + 1], ir[i:i + 1], vis[i:i + 1], names=names[i:i + 1])
    got, want = batched.compute(), single.compute()
    rows = single.per_image()
    for key in DEFAULT_METRICS:
        torch.testing.assert_close(got[key], want[key])
        assert float(want[key]) == pytest.approx(np.mean([r[key] for r in rows]), rel=1e-12)
    assert [r["name"] for r in batched.per_image()] == names
    for r_b, r_s in zip(batched.per_image(), rows, strict=True):
        assert r_b == pytest.approx(r_s)


def test_merge_of_two_halves_equals_one_metric_on_all() -> None:
    fused, ir, vis, names = _batch(b=5, seed=3)
    everything, first, second = FusionMetrics(), FusionMetrics(), FusionMetrics()
    everything.update(fused, ir, vis, names=names)
    first.update(fused[:2], ir[:2], vis[:2], names=names[:2])
    second.update(fused[2:], ir[2:], vis[2:], names=names[2:])
    first.merge_state(second)  # what DDP's sum reduction of the states does across ranks
    assert int(first.count) == 5
    for key, value in everything.compute().items():
        torch.testing.assert_close(first.compute()[key], value)
    assert [r["name"] for r in first.per_image()] == names
    first.reset()
    assert first.per_image() == [] and int(first.count) == 0


def _ddp_worker(rank: int, world: int, port: int, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        fused, ir, vis, names = _batch(b=5, seed=3)
        metric = FusionMetrics()
        # Uneven shards (3 + 2 images): a mean of per-rank means would be wrong, the sum states are not.
        part = slice(0, 3) if rank == 0 else slice(3, 5)
        metric.update(fused[part], ir[part], vis[part], names=names[part])
        values = {k: float(v) for k, v in metric.compute().items()}
        if rank == 0:
            torch.save(values, result_file)
    finally:
        dist.destroy_process_group()


def test_ddp_compute_is_the_mean_over_all_images_of_all_ranks(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(result)), nprocs=2, join=True)
    fused, ir, vis, names = _batch(b=5, seed=3)
    single = FusionMetrics()
    single.update(fused, ir, vis, names=names)
    got = torch.load(result)
    for key, value in single.compute().items():
        assert got[key] == pytest.approx(float(value), rel=1e-12), key


def test_uint8_input_equals_float_input_and_forward_returns_batch_means() -> None:
    fused, ir, vis, names = _batch(b=2)
    u8 = [torch.round(x * 255).to(torch.uint8) for x in (fused, ir, vis)]
    metric = FusionMetrics(metrics=["EN", "SSIM", "MI"])
    as_float = metric(fused, ir, vis, names=names)
    as_uint8 = FusionMetrics(metrics=["EN", "SSIM", "MI"])(*u8, names=names)
    for key in as_float:
        torch.testing.assert_close(as_float[key], as_uint8[key])
    assert int(metric.count) == 2 and len(metric.per_image()) == 2


def test_nan_input_is_an_error_naming_the_pair() -> None:
    fused, ir, vis, names = _batch(b=3)
    fused[1, 0, 5, 5] = float("nan")
    metric = FusionMetrics()
    with pytest.raises(ValueError, match=r"p1.*fused.*NaN"):
        metric.update(fused, ir, vis, names=names)
    assert int(metric.count) == 0  # nothing of the bad batch entered the mean


def test_opposite_infinities_and_float16_overflow_take_the_per_pair_search() -> None:
    # The fast check sums each image: +inf and -inf in one image sum to NaN and must still be caught; a
    # float16 batch whose sum exceeds float16's range must not be mistaken for a bad pixel.
    fused, ir, vis, names = _batch(b=3)
    ir[2, 0, 1, 1], ir[2, 0, 2, 2] = float("inf"), float("-inf")
    with pytest.raises(ValueError, match=r"p2.*IR.*NaN or inf"):
        FusionMetrics(["EN"]).update(fused, ir, vis, names=names)
    fused, ir, vis, names = _batch(b=3, h=200, w=240)
    half = [x.half() for x in (fused, ir, vis)]
    assert not torch.isfinite(half[0].sum())  # a float16 sum of this batch overflows
    metric = FusionMetrics(["EN", "SD"])
    metric.update(*half, names=names)
    assert int(metric.count) == 3


def test_grey_conversion_leaves_the_callers_images_alone() -> None:
    # to_grey8 works in place on its own copies; float32 input (0..1 or 0..255) must come back unchanged.
    rgb01 = torch.rand(2, 3, 9, 11)
    rgb255 = torch.round(torch.rand(2, 3, 9, 11) * 255)
    grey = torch.rand(2, 1, 9, 11)
    for x in (rgb01, grey):
        before = x.clone()
        to_grey8(x)
        assert torch.equal(x, before)
    before = rgb255.clone()
    luma8(rgb255)
    assert torch.equal(rgb255, before)


def test_size_mismatch_is_an_error_naming_the_pair() -> None:
    fused, ir, vis, _ = _batch(b=1)
    with pytest.raises(ValueError, match="night_07.*size"):
        FusionMetrics().update(fused[..., :-2], ir, vis, names=["night_07"])


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown fusion metric"):
        FusionMetrics(metrics=["EN", "QQ"])
    with pytest.raises(ValueError, match="convention"):
        FusionMetrics(convention="paper")
    with pytest.raises(RuntimeError, match="before any update"):
        FusionMetrics().compute()
