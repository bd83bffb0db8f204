"""Independent numpy/scipy/skimage/sklearn implementation of docs/metrics.md (``cddfuse`` convention and the
``matlab`` differences), the yardstick the torch metrics are tested against. Written from the spec: the
reference evaluator's loading path (cv2 float32 BGR2GRAY + np.round) and library calls (np.std,
sklearn mutual_info_score, scipy convolve2d, skimage structural_similarity with data_range=2).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score


def read_grey(path: str | Path) -> np.ndarray:
    """docs/metrics.md, Grey conversion: cv2.imread (3 channels) -> float32 -> BGR2GRAY -> np.round."""
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(path)
    return np.round(cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY))


def grey_from_rgb01(rgb01: np.ndarray) -> np.ndarray:
    """H×W×3 RGB in [0, 1] -> the grey image the evaluator reads back after an 8-bit PNG write."""
    u8 = np.round(np.clip(rgb01.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return np.round(cv2.cvtColor(u8[..., ::-1].astype(np.float32), cv2.COLOR_BGR2GRAY))


def en(f):
    a = np.uint8(np.round(f)).flatten()
    h = np.bincount(a) / a.shape[0]
    return float(-np.sum(h * np.log2(h + (h == 0))))


def sd(f):
    return float(np.std(f))


def sf(f):
    return float(np.sqrt(np.mean((f[:, 1:] - f[:, :-1]) ** 2) + np.mean((f[1:, :] - f[:-1, :]) ** 2)))


def ag(f, convention="cddfuse"):
    gy, gx = np.gradient(f.astype(np.float64))
    s = np.sqrt((gx**2 + gy**2) / 2)
    h, w = f.shape
    return float(s.mean() if convention == "cddfuse" else s.sum() / ((h - 1) * (w - 1)))


def _hist_entropy_bits(x, bins=256):
    p = np.bincount(x.astype(np.int64).ravel(), minlength=bins) / x.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mi(f, a, b, convention="cddfuse"):
    if convention == "cddfuse":
        return float(mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel()))
    total = 0.0
    for x in (a, b):  # Hab.m: uint8(v)+1 saturates, so levels 254 and 255 share a joint bin
        fi = np.minimum(f.astype(np.int64), 254)
        xi = np.minimum(x.astype(np.int64), 254)
        joint = np.bincount((fi * 256 + xi).ravel(), minlength=65536) / f.size
        joint = joint[joint > 0]
        total += _hist_entropy_bits(f) + _hist_entropy_bits(x) + float((joint * np.log2(joint)).sum())
    return total


def mse(f, a, b, convention="cddfuse"):
    if convention == "matlab":
        f, a, b = (x.astype(np.float64) / 255.0 for x in (f, a, b))
    return float((np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2)


def _r(x, y):
    dx, dy = x - np.mean(x), y - np.mean(y)
    return np.sum(dx * dy) / np.sqrt(np.sum(dx**2) * np.sum(dy**2))


def cc(f, a, b):
    return float((_r(a, f) + _r(b, f)) / 2)


def psnr(f, a, b, convention="cddfuse"):
    if convention == "cddfuse":
        return float(10 * np.log10(np.max(f) ** 2 / mse(f, a, b)))
    return float(20 * np.log10(255 / np.sqrt(mse(f, a, b, "matlab"))))


def scd(f, a, b):
    return float(_r(a, f - b) + _r(b, f - a))


def _vifp(ref, dist):
    sigma_nsq, eps = 2, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        sd_ = n / 5.0
        m = (n - 1) / 2
        y, x = np.ogrid[-m : m + 1, -m : m + 1]
        h = np.exp(-(x * x + y * y) / (2 * sd_ * sd_))
        h[h < np.finfo(h.dtype).eps * h.max()] = 0
        win = np.rot90(h / h.sum(), 2)
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    v = num / den
    return 1.0 if np.isnan(v) else float(v)


def vif(f, a, b):
    return _vifp(a, f) + _vifp(b, f)


def _qabf_edges(img):
    hx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
    hy = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)
    sx, sy = convolve2d(img, hx, mode="same"), convolve2d(img, hy, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    alpha = np.full_like(img, math.pi / 2)
    nz = sx != 0
    alpha[nz] = np.arctan(sy[nz] / sx[nz])
    return g, alpha


def _qabf_q(a_x, g_x, a_f, g_f):
    ratio = np.zeros_like(a_x)
    ratio[g_x > g_f] = g_f[g_x > g_f] / g_x[g_x > g_f]
    ratio[g_x == g_f] = g_f[g_x == g_f]
    ratio[g_x < g_f] = g_x[g_x < g_f] / g_f[g_x < g_f]
    orient = 1 - np.abs(a_x - a_f) / (math.pi / 2)
    return 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))


def qabf(f, a, b):
    (ga, aa), (gb, ab), (gf, af) = _qabf_edges(a), _qabf_edges(b), _qabf_edges(f)
    qa, qb = _qabf_q(aa, ga, af, gf), _qabf_q(ab, gb, af, gf)
    return float(np.sum(qa * ga + qb * gb) / np.sum(ga + gb))


def _ssim_matlab(x, y):
    # MATLAB ssim: imgaussfilt(σ=1.5, 11×11, replicate), DynamicRange 1 on 0..255 doubles, full-map mean.
    x, y = x.astype(np.float64), y.astype(np.float64)

    def filt(z):
        return gaussian_filter(z, 1.5, truncate=5 / 1.5, mode="nearest")

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))))


def ssim(f, a, b, convention="cddfuse"):
    if convention == "cddfuse":
        return float(structural_similarity(f, a, data_range=2) + structural_similarity(f, b, data_range=2))
    return 0.5 * (_ssim_matlab(f, a) + _ssim_matlab(f, b))


def score(f, a, b, convention="cddfuse") -> dict[str, float]:
    """All default metrics of one pair of float32 integer-valued 0..255 grey images."""
    return {
        "EN": en(f), "SD": sd(f), "SF": sf(f), "AG": ag(f, convention), "MI": mi(f, a, b, convention),
        "SCD": scd(f, a, b), "VIF": vif(f, a, b), "Qabf": qabf(f, a, b), "SSIM": ssim(f, a, b, convention),
        "MSE": mse(f, a, b, convention), "CC": cc(f, a, b), "PSNR": psnr(f, a, b, convention),
    }


def nabf(f, a, b):
    """Toolbox analysis_nabf.m (Kumar's Nabf) on 0..255 doubles."""
    def edges(x):
        xe = np.pad(x.astype(np.float64), 1, mode="reflect")  # per_extn_im_fn(x, 3)
        kv = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        kh = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8
        gv = convolve2d(xe, np.rot90(kv, 2), mode="valid")
        gh = convolve2d(xe, np.rot90(kh, 2), mode="valid")
        with np.errstate(divide="ignore", invalid="ignore"):
            ang = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
        return np.sqrt(gh**2 + gv**2), ang

    (ga, aa), (gb, ab), (gf, af) = edges(a), edges(b), edges(f)

    def q(gx, ax):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(gx > gf, gf / gx, gx / gf)
        r[(gx == 0) | (gf == 0)] = 0
        o = np.abs(np.abs(ax - af) - np.pi / 2) * 2 / np.pi
        return np.sqrt(0.9999 / (1 + np.exp(-19 * (r - 0.5))) * 0.9995 / (1 + np.exp(-22 * (o - 0.5))))

    wa = np.where(ga >= 2, ga**1.5, 0.001)
    wb = np.where(gb >= 2, gb**1.5, 0.001)
    na = (gf > ga) & (gf > gb)
    return float(np.sum(na * ((1 - q(ga, aa)) * wa + (1 - q(gb, ab)) * wb)) / np.sum(wa + wb))


def _ms_ssim_port(x, y):
    """Wang MS-SSIM as pytorch_msssim computes it, in float64 with scipy."""
    from scipy.ndimage import correlate1d

    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    g /= g.sum()

    def filt(z):  # 'valid' separable Gaussian
        z = correlate1d(z, g, axis=0, mode="constant")[5:-5]
        return correlate1d(z, g, axis=1, mode="constant")[:, 5:-5]

    def pool(z):  # avg_pool2d(2) with padding s % 2 (zero padding counted)
        ph, pw = z.shape[0] % 2, z.shape[1] % 2
        z = np.pad(z, ((ph, ph), (pw, pw)))
        h, w = z.shape[0] // 2 * 2, z.shape[1] // 2 * 2
        z = z[:h, :w]
        return z.reshape(h // 2, 2, w // 2, 2).mean((1, 3))

    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for level in range(5):
        m1, m2 = filt(x), filt(y)
        s1, s2, s12 = filt(x * x) - m1**2, filt(y * y) - m2**2, filt(x * y) - m1 * m2
        cs_map = (2 * s12 + c2) / (s1 + s2 + c2)
        ssim_map = (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1) * cs_map
        if level < 4:
            vals.append(max(cs_map.mean(), 0.0))
            x, y = pool(x), pool(y)
    vals.append(max(ssim_map.mean(), 0.0))
    return float(np.prod(np.array(vals) ** weights))


def ms_ssim(f, a, b):
    """Python-port MS-SSIM: inputs to_tensor(0..255 float32) * 255, summed over A and B."""
    f, a, b = (x.astype(np.float64) * 255 for x in (f, a, b))
    return _ms_ssim_port(f, a) + _ms_ssim_port(f, b)


def _fmi_window(x_sub, f_sub):
    """One window of analysis_fmi.m, transcribed loop by loop (column-major vectors, 1-based moments)."""
    if np.array_equal(x_sub, f_sub):
        return 1.0

    def pdf(v):
        lo, hi = v.min(), v.max()
        v = np.ones_like(v) if hi == lo else (v - lo) / (hi - lo)
        return v.ravel(order="F") / v.sum()

    xp, fp = pdf(x_sub), pdf(f_sub)
    n = len(xp)
    xc, fc = np.cumsum(xp), np.cumsum(fp)
    xt, ft = xp - xp.mean(), fp - fp.mean()
    c = 0.0 if np.sum(xt * ft) == 0 else np.sum(xt * ft) / np.sqrt(np.sum(xt * xt) * np.sum(ft * ft))
    i1 = np.arange(1, n + 1)
    xs = np.sqrt(np.sum(i1**2 * xp) - np.sum(i1 * xp) ** 2)
    fs = np.sqrt(np.sum(i1**2 * fp) - np.sum(i1 * fp) ** 2)

    def up(u, v):
        return 0.5 * (u + v - abs(u - v))

    def lo(u, v):
        return 0.5 * (u + v - 1 + abs(u + v - 1))

    bound = up if c >= 0 else lo
    if (c >= 0 and c == 0) or xs == 0 or fs == 0:
        w = 0.0
    else:
        cov = sum(bound(fc[i], xc[j]) - fc[i] * xc[j] for i in range(n) for j in range(n))
        w = c / (cov / (fs * xs))
    h = 0.0
    for i in range(n):
        for j in range(n):
            m = bound(fc[i], xc[j])
            if i > 0:
                m -= bound(fc[i - 1], xc[j])
            if j > 0:
                m -= bound(fc[i], xc[j - 1])
            if i > 0 and j > 0:
                m += bound(fc[i - 1], xc[j - 1])
            p = w * m + (1 - w) * fp[i] * xp[j]
            if p != 0:
                h += -p * np.log2(abs(p))  # real(-p*log2(p)) for p < 0
    hx = -sum(p * np.log2(p) for p in xp if p != 0)
    hf = -sum(p * np.log2(p) for p in fp if p != 0)
    mi = hx + hf - h
    return 0.0 if mi == 0 else 2 * mi / (hx + hf)


def fmi_pixel(f, a, b):
    """analysis_fmi(A, B, F, 'none') with w = 3 (slow loops: small images only)."""
    vals = [
        (_fmi_window(a[p - 1:p + 2, q - 1:q + 2], f[p - 1:p + 2, q - 1:q + 2])
         + _fmi_window(b[p - 1:p + 2, q - 1:q + 2], f[p - 1:p + 2, q - 1:q + 2])) / 2
        for p in range(1, f.shape[0] - 1) for q in range(1, f.shape[1] - 1)
    ]
    return float(np.mean(vals))
