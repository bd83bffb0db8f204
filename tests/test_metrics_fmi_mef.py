"""FMI (edge / dct / wavelet / pixel features) and the toolbox's MS_SSIM (multi-scale MEF-SSIM) against
literal loop-by-loop numpy transcriptions of ``analysis_fmi.m``, MATLAB ``edge`` (Sobel), ``mef_ssim.m`` and
``analysis_ms_ssim.m`` (Linfeng-Tang/Image-Fusion, ``General Evaluation Metric/Evaluation``), plus
closed forms and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import scipy.fft
import torch
from scipy.ndimage import correlate
from scipy.signal import correlate2d

from sgdfuse.metrics import FusionMetrics, score_pair
from sgdfuse.metrics import functional as MF

EPS = np.finfo(np.float64).eps


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- literal transcriptions ------------------------------------------------------------------------------
def matlab_edge_sobel(img: np.ndarray) -> np.ndarray:
    """MATLAB ``edge(img)`` (Sobel, automatic threshold, thinning) as in edge.m's portable code path."""
    op = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 8  # fspecial('sobel')/8
    bx = correlate(img, op.T, mode="nearest")  # imfilter(a, x_mask, 'replicate')
    by = correlate(img, op, mode="nearest")
    b = bx * bx + by * by
    cutoff = 4 * b.sum() / b.size
    bx, by = np.abs(bx), np.abs(by)
    m, n = b.shape
    e = np.zeros((m, n), dtype=bool)
    for c in range(n):
        for r in range(m):
            b1 = True if c - 1 < 0 else b[r, c - 1] <= b[r, c]
            b2 = True if c + 1 > n - 1 else b[r, c] > b[r, c + 1]
            b3 = True if r - 1 < 0 else b[r - 1, c] <= b[r, c]
            b4 = True if r + 1 > m - 1 else b[r, c] > b[r + 1, c]
            e[r, c] = (b[r, c] > cutoff) and (
                (bx[r, c] >= by[r, c] - EPS * 100 and b1 and b2)
                or (by[r, c] >= bx[r, c] - EPS * 100 and b3 and b4))
    return e


def _rerange(im):
    lo, hi = im.min(), im.max()
    return np.ones_like(im) if hi == lo else (im - lo) / (hi - lo)


def _nmi_loops(x_sub, f_sub):
    """The else-branch of analysis_fmi.m for one window pair (x plays aSub or bSub), loop by loop."""
    xs, fs = x_sub.ravel(order="F").tolist(), f_sub.ravel(order="F").tolist()
    s_x, s_f = sum(sum(x_sub[:, j]) for j in range(3)), sum(sum(f_sub[:, j]) for j in range(3))
    x_pdf, f_pdf = [v / s_x for v in xs], [v / s_f for v in fs]
    l = len(x_pdf)
    x_cdf, f_cdf = [x_pdf[0]], [f_pdf[0]]
    for i in range(1, l):
        x_cdf.append(x_pdf[i] + x_cdf[i - 1])
        f_cdf.append(f_pdf[i] + f_cdf[i - 1])
    x_mean, f_mean = sum(x_pdf) / l, sum(f_pdf) / l
    x_t, f_t = [v - x_mean for v in x_pdf], [v - f_mean for v in f_pdf]
    s_xf = sum(a * b for a, b in zip(x_t, f_t, strict=True))
    c = 0.0 if s_xf == 0 else s_xf / math.sqrt(sum(a * a for a in x_t) * sum(b * b for b in f_t))
    e_x = e2_x = e_f = e2_f = 0.0
    for i in range(1, l + 1):
        e_x += i * x_pdf[i - 1]
        e2_x += i**2 * x_pdf[i - 1]
        e_f += i * f_pdf[i - 1]
        e2_f += i**2 * f_pdf[i - 1]
    x_sd, f_sd = math.sqrt(e2_x - e_x**2), math.sqrt(e2_f - e_f**2)

    if c >= 0:
        def bound(u, v):  # Frechet's upper bound
            return 0.5 * (u + v - abs(u - v))
        degenerate = c == 0 or x_sd == 0 or f_sd == 0
    else:
        def bound(u, v):  # Frechet's lower bound
            return 0.5 * (u + v - 1 + abs(u + v - 1))
        degenerate = x_sd == 0 or f_sd == 0
    if degenerate:
        k = 0.0
    else:
        cov = 0.0
        for i in range(l):
            for j in range(l):
                cov += bound(f_cdf[i], x_cdf[j]) - f_cdf[i] * x_cdf[j]
        k = c / (cov / (f_sd * x_sd))

    def h(p):  # real(-p.*log2(p)), skipped where p == 0
        return 0.0 if p == 0 else -p * math.log2(abs(p))

    joint = h(k * bound(f_cdf[0], x_cdf[0]) + (1 - k) * f_pdf[0] * x_pdf[0])
    for i in range(1, l):  # 1-D boundaries
        up = bound(f_cdf[i], x_cdf[0]) - bound(f_cdf[i - 1], x_cdf[0])
        joint += h(k * up + (1 - k) * f_pdf[i] * x_pdf[0])
    for j in range(1, l):
        up = bound(f_cdf[0], x_cdf[j]) - bound(f_cdf[0], x_cdf[j - 1])
        joint += h(k * up + (1 - k) * f_pdf[0] * x_pdf[j])
    for i in range(1, l):  # 2-D walls
        for j in range(1, l):
            up = (bound(f_cdf[i], x_cdf[j]) - bound(f_cdf[i - 1], x_cdf[j])
                  - bound(f_cdf[i], x_cdf[j - 1]) + bound(f_cdf[i - 1], x_cdf[j - 1]))
            joint += h(k * up + (1 - k) * f_pdf[i] * x_pdf[j])
    x_ent = sum(-p * math.log2(p) for p in x_pdf if p != 0)
    f_ent = sum(-p * math.log2(p) for p in f_pdf if p != 0)
    mi = x_ent + f_ent - joint
    return 0.0 if mi == 0 else 2 * mi / (x_ent + f_ent)


def analysis_fmi(ima, imb, imf, feature="edge", w=3):
    """analysis_fmi.m with the drivers' im2double inputs (levels / 255), window loop as written."""
    ima, imb, imf = (np.asarray(x, dtype=np.float64) / 255 for x in (ima, imb, imf))
    if feature == "none":
        feats = [ima, imb, imf]
    elif feature == "edge":
        feats = [matlab_edge_sobel(x).astype(np.float64) for x in (ima, imb, imf)]
    elif feature == "dct":
        feats = [scipy.fft.dctn(x, norm="ortho") for x in (ima, imb, imf)]
    else:
        feats = []
        for x in (ima, imb, imf):
            ca, (ch, cv, cd) = pywt.dwt2(x, "dmey", mode="symmetric")
            feats.append(_rerange(np.block([[ca, ch], [cv, cd]])))
    a_feat, b_feat, f_feat = feats
    m, n = a_feat.shape
    w = w // 2
    fmi_map = np.ones((m - 2 * w, n - 2 * w))
    for p in range(w, m - w):
        for q in range(w, n - w):
            a_sub = a_feat[p - w:p + w + 1, q - w:q + w + 1]
            b_sub = b_feat[p - w:p + w + 1, q - w:q + w + 1]
            f_sub = f_feat[p - w:p + w + 1, q - w:q + w + 1]
            if np.all(a_sub == f_sub):
                fmi_af = 1.0
            else:
                a_sub, f_sub = _rerange(a_sub), _rerange(f_sub)  # fSub stays normalised below
                fmi_af = _nmi_loops(a_sub, f_sub)
            if np.all(b_sub == f_sub):
                fmi_bf = 1.0
            else:
                b_sub, f_sub = _rerange(b_sub), _rerange(f_sub)
                fmi_bf = _nmi_loops(b_sub, f_sub)
            fmi_map[p - w, q - w] = (fmi_af + fmi_bf) / 2
    return float(fmi_map.mean())


def fspecial_gaussian(size=11, sigma=1.5):
    half = (size - 1) / 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < EPS * h.max()] = 0
    return h / h.sum()


def mef_ssim(img_seq, f_img, k=0.03, window=None):
    """mef_ssim.m, loop by loop."""
    window = fspecial_gaussian() if window is None else window
    s1, s2, s3 = img_seq.shape
    w_size = window.shape[0]
    s_window = np.ones((w_size, w_size)) / w_size**2
    bd = w_size // 2
    mu = np.zeros((s1 - 2 * bd, s2 - 2 * bd, s3))
    ed = np.zeros_like(mu)
    for i in range(s3):
        img = img_seq[:, :, i]
        mu[:, :, i] = correlate2d(img, s_window, "valid")  # filter2(sWindow, img, 'valid')
        mu_sq = mu[:, :, i] * mu[:, :, i]
        sigma_sq = correlate2d(img * img, s_window, "valid") - mu_sq
        ed[:, :, i] = np.sqrt(np.maximum(w_size**2 * sigma_sq, 0)) + 0.001
    r_map = np.zeros((s1 - 2 * bd, s2 - 2 * bd))
    for i in range(bd, s1 - bd):
        for j in range(bd, s2 - bd):
            vecs = img_seq[i - bd:i + bd + 1, j - bd:j + bd + 1, :].reshape(w_size * w_size, s3, order="F")
            denominator = 0.0
            for k_ in range(s3):
                denominator += np.linalg.norm(vecs[:, k_] - mu[i - bd, j - bd, k_])
            total = vecs.sum(1)
            numerator = np.linalg.norm(total - total.mean())
            r_map[i - bd, j - bd] = (numerator + EPS) / (denominator + EPS)
    r_map[r_map > 1] = 1 - EPS
    r_map[r_map < 0] = 0 + EPS
    p = np.tan(np.pi / 2 * r_map)
    p[p > 10] = 10
    p = np.repeat(p[:, :, None], s3, axis=2)
    w_map = (ed / w_size) ** p + EPS
    w_map = w_map / w_map.sum(2, keepdims=True)
    max_ed = ed.max(2)
    c = (k * 255) ** 2
    q_map = np.zeros((s1 - 2 * bd, s2 - 2 * bd))
    win = window.ravel(order="F")
    for i in range(bd, s1 - bd):
        for j in range(bd, s2 - bd):
            blocks = img_seq[i - bd:i + bd + 1, j - bd:j + bd + 1, :]
            r_block = np.zeros((w_size, w_size))
            for k_ in range(s3):
                r_block = r_block + w_map[i - bd, j - bd, k_] * (blocks[:, :, k_] - mu[i - bd, j - bd, k_]) \
                    / ed[i - bd, j - bd, k_]
            if np.linalg.norm(r_block.ravel()) > 0:
                r_block = r_block / np.linalg.norm(r_block.ravel()) * max_ed[i - bd, j - bd]
            f_block = f_img[i - bd:i + bd + 1, j - bd:j + bd + 1]
            r_vec, f_vec = r_block.ravel(order="F"), f_block.ravel(order="F")
            mu1, mu2 = np.sum(win * r_vec), np.sum(win * f_vec)
            sigma1_sq = np.sum(win * (r_vec - mu1) ** 2)
            sigma2_sq = np.sum(win * (f_vec - mu2) ** 2)
            sigma12 = np.sum(win * (r_vec - mu1) * (f_vec - mu2))
            q_map[i - bd, j - bd] = (2 * sigma12 + c) / (sigma1_sq + sigma2_sq + c)
    return float(q_map.mean())


def _box2_symmetric_same(x):
    """imfilter(x, ones(2)/4, 'symmetric', 'same'): kernel origin (1,1), one mirrored row/column after."""
    padded = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.sum(padded[i:i + 2, j:j + 2] * 0.25)
    return out


def analysis_ms_ssim(img_seq, f_img, level=3):
    weight = np.array([0.0448, 0.2856, 0.3001])
    weight = weight / weight.sum()
    img_seq, f_img = img_seq.astype(np.float64), f_img.astype(np.float64)
    q = np.zeros(level)
    for lv in range(level - 1):
        q[lv] = mef_ssim(img_seq, f_img)
        img_seq = np.stack([_box2_symmetric_same(img_seq[:, :, i])[::2, ::2]
                            for i in range(img_seq.shape[2])], axis=2)
        f_img = _box2_symmetric_same(f_img)[::2, ::2]
    q[level - 1] = mef_ssim(img_seq, f_img)
    return float(np.prod(q**weight))


# --- test images -----------------------------------------------------------------------------------------
def _triplet(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F, A, B) integer grey levels with edges, noise, a copied block (F = A), a region where F and B are the
    same flat patch (the .m's fSub order effect) and saturated pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    box = (abs(xx - w // 2) < w // 4) & (abs(yy - h // 2) < h // 3)
    a = np.clip(60 + 120 * box + 2 * yy + rng.integers(-6, 7, (h, w)), 0, 255).astype(float)
    b = np.clip(30 + 8 * xx + 3 * yy + rng.integers(-25, 26, (h, w)), 0, 255).astype(float)
    f = np.round(0.5 * a + 0.5 * b)
    f[:5, :6] = a[:5, :6]
    b[h - 6:, :7] = 90.0
    f[h - 6:, :7] = 90.0
    b[1:4, w - 4:] = 255.0
    return f, a, b


def _t(*xs: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None] for x in xs]


# --- FMI ----------------------------------------------------------------------------------------------------
def test_sobel_edges_match_matlab_edge_transcription() -> None:
    f, a, b = _triplet(24, 20, seed=1)
    for x in (f, a, b):
        want = matlab_edge_sobel(x / 255)
        got = MF.matlab_sobel_edges(_t(x)[0])[0].numpy().astype(bool)
        np.testing.assert_array_equal(got, want)
        assert 0 < want.sum() < want.size  # thinning leaves some edges, not all pixels


@pytest.mark.parametrize("feature", ["edge", "dct", "wavelet", "none"])
def test_fmi_matches_loop_transcription_of_the_toolbox(feature: str) -> None:
    h, w = (14, 12) if feature == "wavelet" else (24, 20)  # dmey's 62 taps make the wavelet map ~80×80
    f, a, b = _triplet(h, w, seed=2)
    got = float(MF.fmi(*_t(f, a, b), feature=feature, chunk=97)[0])
    assert got == pytest.approx(analysis_fmi(a, b, f, feature), rel=1e-6, abs=1e-9)


def test_wavelet_feature_layout_and_size() -> None:
    x = _t(_triplet(24, 20)[0])[0]
    feat = MF._fmi_features(x, "wavelet")[0]
    # 'sym' extension with a 62-tap filter: floor((N + 61) / 2) coefficients per side and sub-band.
    assert tuple(feat.shape) == (2 * ((24 + 61) // 2), 2 * ((20 + 61) // 2))
    assert float(feat.min()) == 0.0 and float(feat.max()) == 1.0  # rerange


def _interior_window_has_edge(e: np.ndarray) -> np.ndarray:
    h, w = e.shape
    return np.array([[e[p - 1:p + 2, q - 1:q + 2].any() for q in range(1, w - 1)] for p in range(1, h - 1)])


def test_flat_windows_closed_forms() -> None:
    """Two flat windows (both PDFs uniform) score 1: with the .m's left-to-right sums mean(ones(9,1)/9) is one
    ulp above 1/9, so c = 1 and the joint PDF is the diagonal. A flat window against a structured one scores
    0 (c is rounding noise, the joint PDF the product of the marginals)."""
    ones = torch.ones(1, 9, dtype=torch.float64)
    structured = torch.tensor([[0.0, 1, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.float64)
    assert float(MF._window_nmi(ones, ones)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(MF._window_nmi(structured, ones)[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(MF._window_nmi(ones, structured)[0]) == pytest.approx(0.0, abs=1e-12)


def test_fmi_edge_closed_form() -> None:
    """F and one source edge-free, the other edgy: a window without any edge scores 1; a window with an edge
    of the edgy source scores 1/2 (that half 0, flat vs structured; the other half 1, either A = F raw or,
    after the A part normalised fSub to ones, flat vs flat). So FMI_edge = 1 - (share of windows with an
    edge) / 2, whichever source is the edgy one."""
    edgy = _triplet(24, 20, seed=3)[1]
    flat = np.full_like(edgy, 120.0)
    has_edge = _interior_window_has_edge(matlab_edge_sobel(edgy / 255)).mean()
    assert 0 < has_edge < 1
    for f, a, b in ((flat, edgy, flat), (flat, flat, edgy)):
        got = float(MF.fmi(*_t(f, a, b), feature="edge")[0])
        assert got == pytest.approx(1 - has_edge / 2, abs=1e-12)


@pytest.mark.parametrize("feature", MF.FMI_FEATURES)
def test_fmi_of_identical_images_is_one(feature: str) -> None:
    x = _t(_triplet(24, 20, seed=4)[1])[0]
    assert float(MF.fmi(x, x, x, feature=feature)[0]) == 1.0


def test_fmi_constant_images() -> None:
    # F = A = B constant: every window short-cuts to 1. F constant, A = B another constant: no short cut, but
    # every window is flat vs flat (1). A structured: flat F vs structured A gives 0 in the A half.
    c, d = (torch.full((1, 12, 10), v, dtype=torch.float64) for v in (70.0, 200.0))
    for feature in ("none", "edge", "dct"):
        assert float(MF.fmi(c, c, c, feature=feature)[0]) == 1.0
    assert float(MF.fmi(c, d, d, feature="none")[0]) == pytest.approx(1.0, abs=1e-12)
    noisy = _t(_triplet(12, 10, seed=9)[1])[0]
    assert float(MF.fmi(c, noisy, d, feature="none")[0]) == pytest.approx(0.5, abs=1e-12)


def test_fmi_rejects_unknown_feature() -> None:
    x = _t(np.zeros((8, 8)))[0]
    with pytest.raises(ValueError, match="gradient"):
        MF.fmi(x, x, x, feature="gradient")


# --- MS_SSIM (convention="matlab": multi-scale MEF-SSIM) ---------------------------------------------------
def test_mef_ssim_single_scale_matches_loops() -> None:
    f, a, b = _triplet(30, 27, seed=5)
    got = float(MF._mef_ssim(*_t(a, b, f))[0])
    assert got == pytest.approx(mef_ssim(np.stack([a, b], 2), f), rel=1e-9)


def test_ms_ssim_matlab_matches_loop_transcription() -> None:
    f, a, b = _triplet(45, 53, seed=6)  # odd sizes: the mirrored last row/column in the downsampling
    got = float(MF.ms_ssim(*_t(f, a, b), convention="matlab")[0])
    assert got == pytest.approx(analysis_ms_ssim(np.stack([a, b], 2), f), rel=1e-6)


def test_ms_ssim_matlab_properties() -> None:
    f, a, b = _triplet(48, 44, seed=7)
    ab = float(MF.ms_ssim(*_t(f, a, b), convention="matlab")[0])
    assert 0 < ab < 1
    assert float(MF.ms_ssim(*_t(f, b, a), convention="matlab")[0]) == pytest.approx(ab, rel=1e-12)
    # No luminance term: shifting F by a constant changes nothing.
    shifted = float(MF.ms_ssim(*_t(np.clip(f, 0, 200) + 40, a, b), convention="matlab")[0])
    assert shifted == pytest.approx(float(MF.ms_ssim(*_t(np.clip(f, 0, 200), a, b), convention="matlab")[0]),
                                    rel=1e-9)
    # Constant images: no structure anywhere, every local score is C / C.
    c = torch.full((1, 44, 44), 90.0, dtype=torch.float64)
    assert float(MF.ms_ssim(c, c, c + 10, convention="matlab")[0]) == pytest.approx(1.0, abs=1e-9)


def test_ms_ssim_matlab_needs_44_px() -> None:
    x = _t(np.zeros((43, 60)))[0]
    with pytest.raises(ValueError, match="44"):
        MF.ms_ssim(x, x, x, convention="matlab")


# --- registry ----------------------------------------------------------------------------------------------
def test_registry_names_through_fusion_metrics() -> None:
    f, a, b = _triplet(48, 46, seed=8)
    f01, a01, b01 = (torch.from_numpy(x / 255).float()[None, None] for x in (f, a, b))
    names = ["FMI", "FMI_pixel", "FMI_edge", "FMI_dct", "FMI_wavelet", "MS_SSIM"]
    metric = FusionMetrics(metrics=names, convention="matlab")
    metric.update(f01, a01, b01.expand(1, 3, -1, -1), names=["p0"])
    got = {k: float(v) for k, v in metric.compute().items()}
    tf, ta, tb = _t(f, a, b)
    assert got["FMI"] == got["FMI_edge"] == float(MF.fmi(tf, ta, tb, "edge")[0])
    for name, feature in (("FMI_pixel", "none"), ("FMI_dct", "dct"), ("FMI_wavelet", "wavelet")):
        assert got[name] == float(MF.fmi(tf, ta, tb, feature)[0]), name
    assert got["MS_SSIM"] == float(MF.ms_ssim(tf, ta, tb, convention="matlab")[0])
    # FMI is convention-free; MS_SSIM is a different metric under each convention (cddfuse needs > 160 px).
    assert score_pair(f01, a01, b01, metrics=["FMI_dct"])["FMI_dct"] == got["FMI_dct"]
