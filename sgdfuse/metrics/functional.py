"""Fusion metrics as pure torch functions (docs/metrics.md, Metric definitions).

Every function takes B×H×W tensors of 8-bit grey levels (integer-valued, 0..255, see :mod:`.grey`) and returns
one value per image (shape ``B``), computed in float64 unless the reference's own float32 rounding has to be
reproduced (SSIM, MS-SSIM). ``f`` is the fused image, ``a`` the infrared and ``b`` the visible one.
``convention`` is ``"cddfuse"`` (MMIF-CDDFuse ``utils/Evaluator.py``, the default) or ``"matlab"`` (the
Linfeng-Tang MATLAB toolbox used by SeAFusion/PIAFusion tables); they differ only as listed in
docs/metrics.md, Convention differences.
"""

from __future__ import annotations

import math

import numpy as np
import pywt
import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor

CONVENTIONS = ("cddfuse", "matlab")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown metric convention {convention!r}; use one of {CONVENTIONS}")


# --- helpers -------------------------------------------------------------------------------------------
def _histograms(x: Tensor, bins: int = 256) -> Tensor:
    """B×H×W integer levels -> B×bins counts (float64), one ``bincount`` for the whole batch."""
    batch = x.shape[0]
    offset = torch.arange(batch, device=x.device).view(batch, 1, 1) * bins
    counts = torch.bincount((x.long() + offset).flatten(), minlength=batch * bins)
    return counts.view(batch, bins).double()


def _joint_histograms(x: Tensor, y: Tensor, bins: int = 256) -> Tensor:
    """B×H×W levels -> B×bins×bins joint counts (rows: x, columns: y)."""
    return _histograms(x.long() * bins + y.long(), bins * bins).view(-1, bins, bins)


def _plogp(p: Tensor, log=torch.log) -> Tensor:
    """p·log(p) with 0·log 0 = 0."""
    return p * log(torch.where(p > 0, p, torch.ones_like(p)))


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson r per image in the sum-of-products form of the reference (NaN for a constant image)."""
    dx = x - x.mean(dim=(-2, -1), keepdim=True)
    dy = y - y.mean(dim=(-2, -1), keepdim=True)
    num = (dx * dy).sum(dim=(-2, -1))
    return num / torch.sqrt((dx * dx).sum(dim=(-2, -1)) * (dy * dy).sum(dim=(-2, -1)))


def _filter_separable(x: Tensor, kernel_1d: Tensor, padding_mode: str | None = None) -> Tensor:
    """Correlate every channel of B×C×H×W ``x`` with ``outer(k, k)``: rows first, then columns.

    ``padding_mode=None`` gives the 'valid' part; otherwise the image is padded by half the kernel.
    """
    channels, k = x.shape[1], kernel_1d.numel()
    if padding_mode is not None:
        x = F.pad(x, (k // 2,) * 4, mode=padding_mode)
    kernel = kernel_1d.to(x).view(1, 1, k, 1).expand(channels, 1, k, 1)
    x = F.conv2d(x, kernel, groups=channels)
    return F.conv2d(x, kernel.transpose(2, 3), groups=channels)


def _fast_len(n: int) -> int:
    """Smallest 2-3-5-smooth integer ≥ n (a fast FFT length; e.g. TNO's 709 rows are prime)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


class _ValidFFT:
    """'valid' correlation of B×H×W images with symmetric ``outer(k, k)`` kernels, by FFT, in float64.

    Same values as the direct convolution to ~1e-15 relative, several times faster than the separable
    float64 ``conv2d`` for VIF's 17×17 window on a 640×480 CPU image. Circular convolution of the
    zero-extended image with the kernel centred on index 0: a symmetric kernel then has a real spectrum (the
    outer product of two 1-D spectra), and outputs more than k//2 from the borders see no wrap-around:
    they are the valid correlation. The inverse transform's 1/n (n: the FFT grid's size, H·W rounded up
    to fast lengths) is folded into the kernel's spectrum (one pass less per image). Images go one at a
    time: eight full-size float64 channels in one batched transform (20 MB) fall out of the cache and
    took twice as long per channel (640×480, one thread).
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.size = (_fast_len(h), _fast_len(w))

    def spectrum(self, x: Tensor) -> Tensor:
        return torch.fft.rfft2(x.double(), s=self.size)

    def kernel(self, kernel_1d: Tensor) -> Tensor:
        """The kernel's spectrum on this grid (rfft2 layout), divided by the grid's size, as complex: a
        complex-complex product is faster than torch's complex-real one, which converts the real operand
        each time."""
        rows, cols = (_centred_spectrum(kernel_1d.double(), n) for n in self.size)
        k = rows[:, None] * cols[: self.size[1] // 2 + 1] / (self.size[0] * self.size[1])
        return k.to(torch.complex128)

    def filter(self, spectra: list[Tensor], kernel_1d: Tensor) -> list[Tensor]:
        """B×H'×W' each: the valid correlation of each spectrum's image."""
        k, c = self.kernel(kernel_1d), kernel_1d.numel() // 2
        # norm="forward": no 1/n on the inverse, the kernel carries it.
        return [torch.fft.irfft2(s * k, s=self.size, norm="forward")[..., c : self.h - c, c : self.w - c]
                for s in spectra]


def _valid_correlate_step2(x: Tensor, kernel_1d: Tensor) -> Tensor:
    """Every other row and column of the 'valid' correlation of B×H×W ``x`` with ``outer(k, k)``: columns
    then rows, as sums of strided slices. Only the kept outputs are computed, a quarter of a full
    transform's work; VIF's next-scale images (windows of 9, 5 and 3 taps) come from here. Not
    :func:`_filter_separable` with a stride: torch's float64 ``conv2d`` is several times slower than
    these slice sums on a CPU."""
    weights = kernel_1d.double().tolist()
    return _strided_taps(_strided_taps(x.double(), weights, -1), weights, -2)


def _strided_taps(x: Tensor, weights: list[float], dim: int) -> Tensor:
    """``Σ_t w_t · x[t : t + 2n − 1 : 2]`` along ``dim``: every other output of the valid 1-D correlation."""
    x = x.movedim(dim, -1)  # a view: the taps are then plain last-axis slices
    n = (x.shape[-1] - len(weights)) // 2 + 1
    out = x[..., 0 : 2 * n - 1 : 2] * weights[0]
    for t in range(1, len(weights)):
        out.add_(x[..., t : t + 2 * n - 1 : 2], alpha=weights[t])
    return out.movedim(-1, dim)


def _check_band(band: int) -> None:
    if band < 1:
        raise ValueError(f"band={band}: the row-band height must be at least 1")


def _centred_spectrum(kernel_1d: Tensor, n: int) -> Tensor:
    """Real DFT (length ``n``) of a symmetric odd-length kernel placed circularly around index 0."""
    c = kernel_1d.numel() // 2
    padded = kernel_1d.new_zeros(n)
    padded[: c + 1] = kernel_1d[c:]
    padded[n - c :] = kernel_1d[:c]
    return torch.fft.fft(padded).real


def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised 1-D Gaussian; ``outer(g, g)`` equals MATLAB ``fspecial('gaussian', size, sigma)``.

    fspecial zeroes taps below eps·max; for the sizes used here (sigma ≥ size/5, or 11/1.5) none is that
    small, so the 2-D window is exactly separable.
    """
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype)


# --- no-reference metrics ------------------------------------------------------------------------------
def entropy(f: Tensor) -> Tensor:
    """EN: Shannon entropy (bits) of the 256-bin grey-level histogram."""
    p = _histograms(f) / f[0].numel()
    return -_plogp(p, torch.log2).sum(-1)


def standard_deviation(f: Tensor) -> Tensor:
    """SD: population standard deviation (ddof=0)."""
    return f.std(dim=(-2, -1), correction=0)


def spatial_frequency(f: Tensor) -> Tensor:
    """SF = sqrt(RF² + CF²), each the mean squared first difference over its own count."""
    rf = (f[..., :, 1:] - f[..., :, :-1]).square().mean(dim=(-2, -1))
    cf = (f[..., 1:, :] - f[..., :-1, :]).square().mean(dim=(-2, -1))
    return torch.sqrt(rf + cf)


def average_gradient(f: Tensor, convention: str = "cddfuse") -> Tensor:
    """AG: mean of sqrt((Gx²+Gy²)/2), np.gradient / MATLAB gradient (central, one-sided at borders).

    ``cddfuse`` averages over H·W; the MATLAB toolbox divides the same sum by (H-1)(W-1).
    """
    _check_convention(convention)
    gx = torch.gradient(f, dim=-1)[0]
    gy = torch.gradient(f, dim=-2)[0]
    s = torch.sqrt((gx * gx + gy * gy) / 2).sum(dim=(-2, -1))
    h, w = f.shape[-2:]
    return s / (h * w if convention == "cddfuse" else (h - 1) * (w - 1))


# --- reference-based metrics ---------------------------------------------------------------------------
def _mutual_information_nats(x: Tensor, y: Tensor) -> Tensor:
    """sklearn ``mutual_info_score`` on grey levels: exact joint histogram, natural log, clipped at 0."""
    pxy = _joint_histograms(x, y) / x[0].numel()
    px, py = pxy.sum(-1), pxy.sum(-2)
    mi = _plogp(pxy).sum((-2, -1)) - _plogp(px).sum(-1) - _plogp(py).sum(-1)
    return mi.clamp_min(0.0)


def _mutual_information_matlab(f: Tensor, x: Tensor) -> Tensor:
    """Toolbox MI (bits): H(X) + H(F) - H(F,X) where ``Hab.m`` indexes the joint histogram with
    ``uint8(v)+1``, which saturates at 255: levels 254 and 255 share a bin (the marginals do not)."""
    joint = _joint_histograms(f.clamp(max=254), x.clamp(max=254)) / f[0].numel()
    h_joint = -_plogp(joint, torch.log2).sum((-2, -1))
    return entropy(f) + entropy(x) - h_joint


def mutual_information(f: Tensor, a: Tensor, b: Tensor, convention: str = "cddfuse") -> Tensor:
    """MI(F,A) + MI(F,B): nats (sklearn) for ``cddfuse``, bits with the Hab.m saturation for ``matlab``."""
    _check_convention(convention)
    if convention == "cddfuse":
        return _mutual_information_nats(f, a) + _mutual_information_nats(f, b)
    return _mutual_information_matlab(f, a) + _mutual_information_matlab(f, b)


def mean_squared_error(f: Tensor, a: Tensor, b: Tensor, convention: str = "cddfuse") -> Tensor:
    """MSE = (mse(A,F) + mse(B,F)) / 2 on 0..255 (``cddfuse``) or on images divided by 255 (``matlab``)."""
    _check_convention(convention)
    mse = ((a - f).square().mean(dim=(-2, -1)) + (b - f).square().mean(dim=(-2, -1))) / 2
    return mse if convention == "cddfuse" else mse / 255.0**2


def correlation_coefficient(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """CC = (r(A,F) + r(B,F)) / 2."""
    return (_pearson(a, f) + _pearson(b, f)) / 2


def psnr(f: Tensor, a: Tensor, b: Tensor, convention: str = "cddfuse") -> Tensor:
    """PSNR. ``cddfuse``: 10·log10(max(F)² / MSE), peak = max of F (not 255). ``matlab``: the toolbox's
    20·log10(255 / sqrt(MSE)) with MSE of images divided by 255 (peak and scale disagree: values ~60 dB)."""
    _check_convention(convention)
    mse = mean_squared_error(f, a, b, convention)
    if convention == "cddfuse":
        return 10 * torch.log10(f.amax(dim=(-2, -1)).square() / mse)
    return 20 * torch.log10(255.0 / torch.sqrt(mse))


def scd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SCD: corr(A, F-B) + corr(B, F-A), the sum of the correlations of differences."""
    return _pearson(a, f - b) + _pearson(b, f - a)


def _vif_windows(device: torch.device) -> list[Tensor]:
    """1-D factors of the four Gaussian windows of ``vifp_mscale`` (N = 17, 9, 5, 3; sd = N/5)."""
    sizes = [2 ** (4 - scale + 1) + 1 for scale in range(1, 5)]
    return [_gaussian_1d(n, n / 5.0).to(device) for n in sizes]


def vif(f: Tensor, a: Tensor, b: Tensor, band: int = 64) -> Tensor:
    """VIF = vifp(A,F) + vifp(B,F): pixel-domain multi-scale VIF (Sheikh & Bovik ``vifp_mscale``), summed.

    A and B share F's moments: per scale the eight local moments (A, B, F, A², B², F², AF, BF) are filtered
    ('valid', float64, by FFT); the next scale's images are the sources filtered with its window, every
    other pixel (:func:`_valid_correlate_step2`). The degenerate-variance rules are the reference's. The
    per-pixel terms go in bands of ``band`` rows, as in :func:`qabf`.
    """
    _check_band(band)
    images = [x.double() for x in (a, b, f)]  # at the current scale
    num = torch.zeros(a.shape[0], 2, dtype=torch.float64, device=f.device)
    den = torch.zeros_like(num)
    windows = _vif_windows(f.device)
    for scale, win in enumerate(windows, start=1):
        h, w = images[0].shape[-2:]
        if min(h, w) < win.numel():
            raise ValueError(f"VIF needs images of at least 41×41 px (four scales of valid filtering), got "
                             f"{tuple(f.shape[-2:])}; drop VIF for images this small.")
        fft = _ValidFFT(h, w)
        spectra = [fft.spectrum(x) for x in images]
        ir, vis, fused = images
        pairs = ((ir, ir), (vis, vis), (fused, fused), (ir, fused), (vis, fused))
        products = [fft.spectrum(x * y) for x, y in pairs]
        moments = torch.stack(fft.filter(spectra + products, win), 1)  # A B F, A² B² F², AF BF
        if scale < len(windows):  # the next scale: these images filtered with its window, every other pixel
            images = [_valid_correlate_step2(x, windows[scale]) for x in images]
        for top in range(0, moments.shape[-2], band):
            n, d = _vif_sums(moments[..., top : top + band, :])
            num, den = num + n, den + d
    vifp = torch.nan_to_num(num / den, nan=1.0)  # reference: NaN (0/0 on flat images) -> 1.0
    return vifp.sum(1)


def _vif_sums(moments: Tensor, sigma_nsq: float = 2.0, eps: float = 1e-10) -> tuple[Tensor, Tensor]:
    """VIF's numerator and denominator sums (B×2, against A and B) from the eight filtered moments."""
    mu1, mu2, e11, e22, e12 = moments.split([2, 1, 2, 1, 2], dim=1)
    s1 = (e11 - mu1 * mu1).clamp_min(0)
    s2 = (e22 - mu2 * mu2).clamp_min(0)
    s12 = e12 - mu1 * mu2
    g = s12 / (s1 + eps)
    # The reference's degenerate cases (flat reference, flat fused window, negative gain) all set the gain
    # to 0, which zeroes the information term whatever sv is; elsewhere sv = max(s2 - g·s12, eps).
    flat1 = s1 < eps
    keep = ~flat1 & (s2 >= eps) & (g >= 0)
    sv = (s2 - g * s12).clamp_min(eps)
    info = torch.log10(1 + g * g * s1 / (sv + sigma_nsq))
    num = torch.where(keep, info, 0.0).sum((-2, -1))
    den = torch.log10(1 + torch.where(flat1, 0.0, s1) / sigma_nsq).sum((-2, -1))
    return num, den


def _sobel_padded(xp: Tensor) -> tuple[Tensor, Tensor]:
    """``convolve2d(x, h, 'same')`` for h = Sobel x and y (true convolution, flipped kernel, zero border) of
    the image ``x`` that ``xp`` holds with a one-pixel zero border.

    Returns (Sx, Sy) by shifted differences and sums: on integer grey levels every partial sum is an
    integer, so this equals the 3×3 convolution exactly. losses.sobel_magnitude is not reused: it is a
    correlation on [0, 1] floats.
    """
    dx = xp[..., :, :-2] - xp[..., :, 2:]  # (H+2)×W: left minus right neighbour
    dy = xp[..., 2:, :] - xp[..., :-2, :]  # H×(W+2): lower minus upper neighbour
    sx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    sy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
    return sx, sy


def _qabf_edges(xp: Tensor) -> tuple[Tensor, Tensor]:
    """Edge strength and orientation of a one-pixel zero-padded image."""
    sx, sy = _sobel_padded(xp)
    g = torch.sqrt(sx * sx + sy * sy)
    alpha = torch.where(sx == 0, math.pi / 2, torch.atan(sy / torch.where(sx == 0, 1.0, sx)))
    return g, alpha


def _qabf_preservation(g_x: Tensor, a_x: Tensor, g_f: Tensor, a_f: Tensor) -> Tensor:
    # Reference quirk: where gX == gF the strength ratio is gF itself, not 1 (0 where both are 0).
    ratio = torch.where(g_x == g_f, g_f, torch.minimum(g_x, g_f) / torch.maximum(g_x, g_f))
    orient = 1 - (a_x - a_f).abs() / (math.pi / 2)
    q_g = torch.sigmoid(15 * (ratio - 0.5))  # 1 / (1 + exp(-15 (ratio - 0.5)))
    q_a = torch.sigmoid(22 * (orient - 0.8))
    return (0.9994 * 0.9879) * q_g * q_a


def qabf(f: Tensor, a: Tensor, b: Tensor, band: int = 64) -> Tensor:
    """Qabf (Xydeas-Petrović edge preservation, weights L = 1).

    Computed in bands of ``band`` rows: the two dozen float64 temporaries of a whole 640×480 image fall
    out of the cache (the per-band loop was 1.4× faster there, one thread)."""
    _check_band(band)
    padded = [F.pad(x.double(), (1, 1, 1, 1)) for x in (a, b, f)]
    num = den = torch.zeros(f.shape[0], dtype=torch.float64, device=f.device)
    for top in range(0, f.shape[-2], band):
        rows = slice(top, min(top + band, f.shape[-2]) + 2)  # the band and its one-row halo
        (g_a, a_a), (g_b, a_b), (g_f, a_f) = (_qabf_edges(x[..., rows, :]) for x in padded)
        q_af = _qabf_preservation(g_a, a_a, g_f, a_f)
        q_bf = _qabf_preservation(g_b, a_b, g_f, a_f)
        num = num + (q_af * g_a + q_bf * g_b).sum((-2, -1))
        den = den + (g_a + g_b).sum((-2, -1))
    return num / den


# --- SSIM family ---------------------------------------------------------------------------------------
def _box_mean7_f32(x: Tensor) -> Tensor:
    """scipy ``uniform_filter(float32, 7)`` on the valid region of integer-valued ``x`` (grey levels and
    their products): rows then columns, each pass exact and stored as float32 like scipy's per-axis output
    buffer.

    Both passes are sums of seven shifted slices. The first adds integers below 2^24 (exact in float32);
    the second adds float32 values in float64, where seven of them (at most 2^16, multiples of
    ulp(1/7)) sum exactly. Each sum is therefore the exact one whatever the order, and the division
    rounds once, as in the float64 average (double rounding is harmless for a division: 53 ≥ 2·24 + 2).
    """
    rows = _sum7(x.float(), -2) / 7
    return (_sum7(rows.double(), -1) / 7).float()


def _sum7(x: Tensor, dim: int) -> Tensor:
    """Sum of 7 consecutive elements along ``dim`` ('valid'), as 1+1, 2+2, 4+2+1: four additions, not six
    (exact in any order for the values :func:`_box_mean7_f32` sums)."""
    n = x.shape[dim] - 6
    s2 = x.narrow(dim, 0, n + 5) + x.narrow(dim, 1, n + 5)
    s4 = s2.narrow(dim, 0, n + 3) + s2.narrow(dim, 2, n + 3)
    out = s4.narrow(dim, 0, n) + s2.narrow(dim, 4, n)
    return out.add_(x.narrow(dim, 6, n))


def _ssim_skimage(x: Tensor, ys: list[Tensor], data_range: float = 2.0) -> Tensor:
    """skimage ``structural_similarity`` defaults on float32 images, mean over the 3-px-cropped map, of
    ``x`` against each of ``ys`` (B×len(ys)); ``x``'s moments are filtered once.

    torchmetrics' SSIM is not used: it has a Gaussian window and population covariance, skimage's default
    is a 7×7 uniform window with the N/(N-1) sample covariance, evaluated in float32 (whose rounding matters
    here because data_range = 2 makes C1, C2 tiny next to 0..255 data). One plane at a time: a stack of
    them falls out of the cache, as in :class:`_ValidFFT`.
    """
    x, ys = x.float(), [y.float() for y in ys]  # before the products: uint8 would overflow
    planes = [x, x * x, *ys, *(y * y for y in ys), *(x * y for y in ys)]
    stats = torch.stack([_box_mean7_f32(p) for p in planes], 1)
    ux, uxx, uy, uyy, uxy = stats.split([1, 1, len(ys), len(ys), len(ys)], dim=1)
    cov_norm = torch.tensor(49.0 / 48.0, dtype=torch.float32)
    c1 = torch.tensor((0.01 * data_range) ** 2, dtype=torch.float32)
    c2 = torch.tensor((0.03 * data_range) ** 2, dtype=torch.float32)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux**2 + uy**2 + c1, vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    return s.double().mean((-2, -1))


def _ssim_matlab(x: Tensor, y: Tensor) -> Tensor:
    """MATLAB ``ssim`` on double data in 0..255 with DynamicRange 1: Gaussian σ=1.5 (11×11), replicate
    padding, population moments, mean over the whole map."""
    win = _gaussian_1d(11, 1.5).to(x.device)
    stack = torch.stack([x, y, x * x, y * y, x * y], 1)
    mx, my, exx, eyy, exy = _filter_separable(stack, win, padding_mode="replicate").unbind(1)
    c1, c2 = 0.01**2, 0.03**2
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean((-2, -1))


def ssim(f: Tensor, a: Tensor, b: Tensor, convention: str = "cddfuse") -> Tensor:
    """SSIM. ``cddfuse``: ssim(F,A) + ssim(F,B) (a sum, up to 2) with skimage defaults and data_range = 2
    (skimage 0.19's float32 default). ``matlab``: 0.5·(ssim(F,A) + ssim(F,B)) with MATLAB ``ssim``."""
    _check_convention(convention)
    if convention == "cddfuse":
        return _ssim_skimage(f, [a, b]).sum(1)
    return 0.5 * (_ssim_matlab(f, a) + _ssim_matlab(f, b))


def _gaussian_1d_torch_f32(size: int = 11, sigma: float = 1.5) -> Tensor:
    """pytorch_msssim's ``_fspecial_gauss_1d`` (float32, centred on size // 2)."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _ms_ssim_wang(x: Tensor, y: Tensor) -> Tensor:
    """pytorch_msssim ``ms_ssim`` (5 scales, Gaussian 11/1.5 'valid', relu on cs and ssim) on B×1×H×W
    float32, data_range 255, op for op so the float32 rounding is the port's own."""
    win = _gaussian_1d_torch_f32().to(x.device).view(1, 1, 1, 11)
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=x.dtype, device=x.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def gaussian(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, win.transpose(2, 3)), win)

    mcs = []
    for level in range(weights.numel()):
        mu1, mu2 = gaussian(x), gaussian(y)
        mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
        sigma1_sq = gaussian(x * x) - mu1_sq
        sigma2_sq = gaussian(y * y) - mu2_sq
        sigma12 = gaussian(x * y) - mu1_mu2
        cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
        ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
        ssim_val, cs = ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)
        if level < weights.numel() - 1:
            mcs.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    stacked = torch.stack([*mcs, torch.relu(ssim_val)], dim=0)  # levels×B×1
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)


_MEF_EPS = 2.220446049250313e-16  # MATLAB eps
_MEF_WEIGHTS = (0.0448, 0.2856, 0.3001)
_MEF_WIN = 11


def _mef_ssim(x1: Tensor, x2: Tensor, f: Tensor) -> Tensor:
    """``mef_ssim.m`` (Ma et al., K = 0.03, 11×11 Gaussian σ 1.5) of the sequence (x1, x2) and F, B×H×W -> B.

    The .m loops over 11×11 patches; here every patch quantity is a moment: the desired patch
    r = s·Σ_k α_k (x_k - μ_k) (α_k = w_k / ed_k, s rescales its norm to max ed) is linear in the sources, so
    its Gaussian-weighted mean, variance and covariance with F follow from filtered x_k, f and their
    products. Box sums of dyadic levels (the downsampled scales are multiples of 1/16) are exact, so the
    patch scatter S_kl = Σ(x_k - μ_k)(x_l - μ_l) is exact and flat patches give exactly 0, as in the loops.
    """
    n = _MEF_WIN * _MEF_WIN
    src = torch.stack([x1, x2], 1).double()  # B×2×H×W
    fd = f.double().unsqueeze(1)
    box = _filter_separable(torch.cat([src, src * src, (x1 * x2).double().unsqueeze(1)], 1),
                            torch.ones(_MEF_WIN, dtype=torch.float64))
    sx, sxx, sx12 = box[:, :2], box[:, 2:4], box[:, 4:]
    mu = sx / n
    s_kk = (n * sxx - sx * sx) / n  # exact integer numerators
    s_12 = (n * sx12 - sx[:, :1] * sx[:, 1:]) / n
    ed = torch.sqrt(s_kk.clamp_min(0)) + 0.001
    # Structure consistency R = ‖Σ_k (x_k - μ_k)‖ / Σ_k ‖x_k - μ_k‖ (eps-regularised), p = tan(π/2·R) ≤ 10.
    num = torch.sqrt((s_kk.sum(1, keepdim=True) + 2 * s_12).clamp_min(0))
    den = torch.sqrt(s_kk.clamp_min(0)).sum(1, keepdim=True)
    r = (num + _MEF_EPS) / (den + _MEF_EPS)
    r = torch.where(r > 1, 1 - _MEF_EPS, torch.where(r < 0, _MEF_EPS, r))
    p = torch.tan(math.pi / 2 * r).clamp_max(10.0)
    w = (ed / _MEF_WIN) ** p + _MEF_EPS
    w = w / w.sum(1, keepdim=True)
    max_ed = ed.amax(1, keepdim=True)
    alpha = w / ed  # B×2×h×w
    a1, a2 = alpha[:, :1], alpha[:, 1:]
    norm_sq = (a1 * a1 * s_kk[:, :1] + a2 * a2 * s_kk[:, 1:] + 2 * a1 * a2 * s_12).clamp_min(0)
    # rBlock is rescaled to norm max(ed) unless it is 0 (both sources flat): then it stays 0.
    scale = torch.where(norm_sq > 0, max_ed / torch.sqrt(torch.where(norm_sq > 0, norm_sq, 1.0)), 0.0)
    x12 = (x1 * x2).double().unsqueeze(1)
    g = _filter_separable(torch.cat([src, fd, src * src, x12, fd * fd, src * fd], 1),
                          _gaussian_1d(_MEF_WIN, 1.5).to(f.device))
    gx, gf, gxx, gx12, gff, gxf = g[:, :2], g[:, 2:3], g[:, 3:5], g[:, 5:6], g[:, 6:7], g[:, 7:9]
    # Gaussian moments of the box-centred sources d_k = x_k - μ_k (the window sums to 1).
    gd = gx - mu
    gdd = gxx - 2 * mu * gx + mu * mu
    gd12 = gx12 - mu[:, 1:] * gx[:, :1] - mu[:, :1] * gx[:, 1:] + mu[:, :1] * mu[:, 1:]
    gdf = gxf - mu * gf
    mu_r = scale * (alpha * gd).sum(1, keepdim=True)
    e_rr = scale * scale * (a1 * a1 * gdd[:, :1] + a2 * a2 * gdd[:, 1:] + 2 * a1 * a2 * gd12)
    e_rf = scale * (alpha * gdf).sum(1, keepdim=True)
    var_r, var_f = e_rr - mu_r * mu_r, gff - gf * gf
    cov = e_rf - mu_r * gf
    c = (0.03 * 255) ** 2
    q = (2 * cov + c) / (var_r + var_f + c)
    return q.mean((-3, -2, -1))


def _mef_downsample(x: Tensor) -> Tensor:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``(1:2:end, 1:2:end)``: 2×2 block means, the
    last row/column of an odd size paired with its mirror (itself)."""
    h, w = x.shape[-2:]
    x = F.pad(x.unsqueeze(1), (0, w % 2, 0, h % 2), mode="replicate")
    return F.avg_pool2d(x, 2).squeeze(1)


def _ms_ssim_mef(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``analysis_ms_ssim(cat(3, A, B), F)``: prod_l Q_l^w_l over 3 scales, w = [0.0448 0.2856 0.3001]/sum."""
    levels = len(_MEF_WEIGHTS)
    min_side = _MEF_WIN * 2 ** (levels - 1)
    if min(f.shape[-2:]) < min_side:
        raise ValueError(f"MS_SSIM (convention 'matlab') needs both image sides ≥ {min_side} "
                         f"px (3 scales of an 11-px window), got {tuple(f.shape[-2:])}; drop MS_SSIM for "
                         "images this small.")
    weights = torch.tensor(_MEF_WEIGHTS, dtype=torch.float64, device=f.device)
    weights = weights / weights.sum()
    f, a, b = f.double(), a.double(), b.double()
    scores = []
    for level in range(levels):
        if level:
            f, a, b = _mef_downsample(f), _mef_downsample(a), _mef_downsample(b)
        scores.append(_mef_ssim(a, b, f))
    # A negative Q_l gives NaN here (MATLAB: a complex number).
    return torch.prod(torch.stack(scores, 1) ** weights, 1)


def ms_ssim(f: Tensor, a: Tensor, b: Tensor, convention: str = "cddfuse") -> Tensor:
    """MS-SSIM. ``cddfuse``: the common Python port, ms_ssim(F,A) + ms_ssim(F,B), Wang's 5-scale MS-SSIM on
    the port's ``to_tensor(float32 0..255) * 255`` inputs (0..65025) with data_range 255; needs both sides
    > 160 px. ``matlab``: the toolbox's ``analysis_ms_ssim`` — a different metric, the multi-scale MEF-SSIM
    of Ma et al. with (A, B) as the source sequence (one value, not a sum); needs both sides ≥ 44 px.
    """
    _check_convention(convention)
    if convention == "matlab":
        return _ms_ssim_mef(f, a, b)
    if min(f.shape[-2:]) <= 160:
        raise ValueError(f"MS_SSIM needs both image sides > 160 px (5 scales of an 11-px window), got "
                         f"{tuple(f.shape[-2:])}; drop MS_SSIM for images this small.")
    x, ya, yb = (t.float().unsqueeze(1) * 255 for t in (f, a, b))
    return (_ms_ssim_wang(x, ya) + _ms_ssim_wang(x, yb)).double()


_NABF_SOBEL_V = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64) / 8
_NABF_SOBEL_H = torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 8


def _nabf_edges(x: Tensor) -> tuple[Tensor, Tensor]:
    """``sobel_fn``: correlation with Sobel/8 on the mirrored image (``per_extn_im_fn`` = reflect padding).
    Returns strength and angle atan(gv/gh) (0 where both are 0)."""
    kernels = torch.stack([_NABF_SOBEL_V, _NABF_SOBEL_H]).unsqueeze(1).to(x)
    g = F.conv2d(F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="reflect"), kernels)
    gv, gh = g[:, 0], g[:, 1]
    both_zero = (gv == 0) & (gh == 0)
    angle = torch.where(both_zero, 0.0, torch.atan(gv / torch.where(both_zero, 1.0, gh)))
    return torch.sqrt(gh * gh + gv * gv), angle


def _nabf_preservation(g_x: Tensor, a_x: Tensor, g_f: Tensor, a_f: Tensor) -> Tensor:
    zero = (g_x == 0) | (g_f == 0)
    ratio = torch.where(g_x > g_f, g_f / g_x, g_x / g_f)
    ratio = torch.where(zero, 0.0, ratio)
    orient = ((a_x - a_f).abs() - math.pi / 2).abs() * 2 / math.pi
    q_g = 0.9999 / (1 + torch.exp(-19 * (ratio - 0.5)))
    q_a = 0.9995 / (1 + torch.exp(-22 * (orient - 0.5)))
    return torch.sqrt(q_g * q_a)


def nabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Nabf: Kumar's modified fusion-artefact measure (toolbox ``analysis_nabf.m``) on 0..255 images.

    Weights w = g^1.5 where g ≥ 2 (Td), else 0.001; artefacts are counted where F's edge is stronger than
    both sources'.
    """
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = _nabf_edges(a), _nabf_edges(b), _nabf_edges(f)
    q_af = _nabf_preservation(g_a, a_a, g_f, a_f)
    q_bf = _nabf_preservation(g_b, a_b, g_f, a_f)
    w_a = torch.where(g_a >= 2, g_a**1.5, 0.001)
    w_b = torch.where(g_b >= 2, g_b**1.5, 0.001)
    artefact = (g_f > g_a) & (g_f > g_b)
    num = torch.where(artefact, (1 - q_af) * w_a + (1 - q_bf) * w_b, 0.0).sum((-2, -1))
    return num / (w_a + w_b).sum((-2, -1))


def _fmi_minmax(v: Tensor) -> Tensor:
    """The .m's window normalisation: (v - min) / (max - min), a constant window becomes all ones."""
    lo, hi = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    flat = hi == lo
    return torch.where(flat, torch.ones_like(v), (v - lo) / torch.where(flat, 1.0, hi - lo))


def _seq_sum(v: Tensor) -> Tensor:
    """Left-to-right sum over the last dim: the rounding MATLAB's ``sum`` of 9 values is assumed to have
    (see :func:`_window_nmi`)."""
    total = v[..., 0]
    for k in range(1, v.shape[-1]):
        total = total + v[..., k]
    return total


def _window_nmi(x: Tensor, f: Tensor) -> Tensor:
    """Normalised MI of ``analysis_fmi.m`` (Fast-FMI) for N windows (N×9 features, MATLAB column-major order)
    -> N. The .m's ``if aSub == fSub`` short cut is applied by the caller.

    The PDF normalisation, means, the correlation c and the moments are summed left to right like the .m's
    ``sum``/loops: with two flat windows (both PDFs uniform) c is 0/0-like and its rounding decides the
    value. Sequentially, mean(ones(9,1)/9) ≠ 1/9 by one ulp, c = 1 and the window scores 1 (a pairwise or
    exact sum would give c = 0 and a score of 0).
    """
    l = x.shape[-1]

    def pdf(v: Tensor) -> Tensor:
        v = _fmi_minmax(v)
        columns = [_seq_sum(v[..., k:k + 3]) for k in range(0, l, 3)]  # sum(sum(aSub)): columns first
        return v / _seq_sum(torch.stack(columns, -1)).unsqueeze(-1)

    px, pf = pdf(x), pdf(f)
    cx, cf = px.cumsum(-1), pf.cumsum(-1)
    dx, df = px - (_seq_sum(px) / l).unsqueeze(-1), pf - (_seq_sum(pf) / l).unsqueeze(-1)
    num = _seq_sum(dx * df)
    c = torch.where(num == 0, 0.0, num / torch.sqrt(_seq_sum(dx * dx) * _seq_sum(df * df)))
    idx = torch.arange(1, l + 1, dtype=x.dtype, device=x.device)

    def sd(p: Tensor) -> Tensor:
        return torch.sqrt(_seq_sum(idx**2 * p) - _seq_sum(idx * p) ** 2)

    sx, sf = sd(px), sd(pf)
    fi, xj = cf.unsqueeze(-1), cx.unsqueeze(-2)  # rows: F's index i, columns: X's index j
    upper = torch.minimum(fi, xj)  # Fréchet bounds of the joint CDF (the .m's 0.5(u+v∓|...|) forms)
    lower = (fi + xj - 1).clamp_min(0)
    positive = c >= 0
    bound = torch.where(positive.view(-1, 1, 1), upper, lower)
    corr = (bound - fi * xj).sum((-2, -1)) / (sf * sx)
    degenerate = (sx == 0) | (sf == 0) | (positive & (c == 0))
    weight = torch.where(degenerate, 0.0, c / torch.where(degenerate, 1.0, corr))  # phi (c ≥ 0) or theta
    # Joint PDF cell (i, j): rectangle measure of the bound, CDFs padded with 0 in front.
    padded = F.pad(bound, (1, 0, 1, 0))
    cell = padded[:, 1:, 1:] - padded[:, :-1, 1:] - padded[:, 1:, :-1] + padded[:, :-1, :-1]
    jpdf = weight.view(-1, 1, 1) * cell + (1 - weight.view(-1, 1, 1)) * pf.unsqueeze(-1) * px.unsqueeze(-2)
    # MATLAB's real(-p·log2(p)) of a negative p is -p·log2|p|.
    h_joint = -(jpdf * torch.log2(torch.where(jpdf == 0, 1.0, jpdf.abs()))).sum((-2, -1))
    h_x, h_f = -_plogp(px, torch.log2).sum(-1), -_plogp(pf, torch.log2).sum(-1)
    mi = h_x + h_f - h_joint
    return torch.where(mi == 0, 0.0, 2 * mi / (h_x + h_f))


def _fmi_windows(wf: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """(fmi_af + fmi_bf) / 2 for N windows (N×9 each).

    As in the .m, after the A part ``fSub`` holds F's *normalised* window unless A's window equalled F's, and
    the B part's ``if bSub == fSub`` compares B's raw window with that (the short cut then differs from the
    full computation it replaces only by rounding). Only windows that are not short-cut go through the
    (costly) joint-PDF computation.
    """
    same_a = (wa == wf).all(-1)
    f_seen_by_b = torch.where(same_a.unsqueeze(-1), wf, _fmi_minmax(wf))
    same_b = (wb == f_seen_by_b).all(-1)
    out = []
    for x, same in ((wa, same_a), (wb, same_b)):
        score = torch.ones(wf.shape[0], dtype=wf.dtype, device=wf.device)
        todo = (~same).nonzero().flatten()
        if todo.numel():
            score[todo] = _window_nmi(x[todo], wf[todo])
        out.append(score)
    return (out[0] + out[1]) / 2


FMI_FEATURES = ("none", "edge", "dct", "wavelet")
_SOBEL_EDGE = torch.tensor([[[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],  # op' (x)
                            [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]],  # op = fspecial('sobel')
                           dtype=torch.float64)


def matlab_sobel_edges(x: Tensor) -> Tensor:
    """MATLAB ``edge(I)`` / ``edge(I, 'sobel')`` with its defaults (automatic threshold, thinning, both
    directions) on B×H×W grey levels -> B×H×W {0, 1} float64.

    As in the toolbox's ``edge.m``: gradients ``imfilter(I, fspecial('sobel')'/8)`` and ``(..., op/8)`` with
    'replicate' borders, b = bx² + by², cutoff = 4·mean(b), and an edge where b > cutoff and b is a
    horizontal maximum (|bx| ≥ |by|: left neighbour ≤ b, right neighbour < b) or a vertical one
    (|by| ≥ |bx|: up ≤ b, down < b); neighbours outside the image count as passed. Computed on integer
    levels with integer kernels (8·255 times MATLAB's im2double/8 values), so b, the cutoff comparison and
    the ties are exact; MATLAB's floating point (and its 100·eps slack on |bx| ≥ |by|) can decide an
    exact tie the other way only by rounding.
    """
    grad = F.conv2d(F.pad(x.double().unsqueeze(1), (1, 1, 1, 1), mode="replicate"),
                    _SOBEL_EDGE.unsqueeze(1).to(x.device))  # imfilter = correlation
    bx, by = grad[:, 0].abs(), grad[:, 1].abs()
    b = bx * bx + by * by  # integers < 2^22: exact
    n = b[0].numel()
    strong = b * n > 4 * b.sum((-2, -1), keepdim=True)  # b > 4·sum(b)/numel(b), exact
    true_col = torch.ones_like(b[..., :, :1], dtype=torch.bool)
    true_row = torch.ones_like(b[..., :1, :], dtype=torch.bool)
    left = torch.cat([true_col, b[..., :, :-1] <= b[..., :, 1:]], -1)
    right = torch.cat([b[..., :, :-1] > b[..., :, 1:], true_col], -1)
    up = torch.cat([true_row, b[..., :-1, :] <= b[..., 1:, :]], -2)
    down = torch.cat([b[..., :-1, :] > b[..., 1:, :], true_row], -2)
    edge = strong & (((bx >= by) & left & right) | ((by >= bx) & up & down))
    return edge.double()


def _rerange(x: Tensor) -> Tensor:
    """The .m's ``rerange``: per-image min-max to [0, 1], a constant image becomes all ones."""
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    flat = hi == lo
    return torch.where(flat, torch.ones_like(x), (x - lo) / torch.where(flat, 1.0, hi - lo))


def _fmi_features(x: Tensor, feature: str) -> Tensor:
    """Feature images of ``analysis_fmi.m`` on the toolbox's ``im2double`` inputs (levels / 255)."""
    if feature == "edge":
        return matlab_sobel_edges(x)  # scale-free: computed on the levels themselves
    x = x.double() / 255.0
    if feature == "none":
        return x
    arr = x.cpu().numpy()
    if feature == "dct":  # MATLAB dct2 = orthonormal 2-D DCT-II
        return torch.from_numpy(scipy.fft.dctn(arr, type=2, norm="ortho", axes=(-2, -1))).to(x.device)
    # wavelet: dwt2(x, 'dmey') with MATLAB's default 'sym' extension (pywt 'symmetric'), [cA cH; cV cD]
    ca, (ch, cv, cd) = pywt.dwt2(arr, "dmey", mode="symmetric", axes=(-2, -1))
    blocks = np.concatenate([np.concatenate([ca, ch], -1), np.concatenate([cv, cd], -1)], -2)
    return _rerange(torch.from_numpy(blocks).to(x.device))


def fmi(f: Tensor, a: Tensor, b: Tensor, feature: str = "edge", chunk: int = 16384) -> Tensor:
    """FMI of the toolbox (``analysis_fmi(A, B, F, feature)``, Haghighat's Fast-FMI, 3×3 windows) on 0..255
    levels, fed as the toolbox's drivers do (``im2double``).

    ``feature``: ``"edge"`` (the toolbox default, MATLAB ``edge`` Sobel: :func:`matlab_sobel_edges`; the
    drivers' column called "FMI_pixel" is this one), ``"dct"`` (``dct2``), ``"wavelet"`` (``dwt2`` with
    'dmey', 'sym' extension), ``"none"`` (raw pixels). Windows are processed in chunks to bound memory (81
    joint cells per window).

    Not verified against MATLAB itself: 'wavelet' uses PyWavelets' 62-tap dmey filter (PyWavelets issue
    #261 says MATLAB's dmey has 102 taps; its sub-bands would then be 20 coefficients longer per side), and
    'edge' scores edge-free window pairs 1 assuming MATLAB's ``sum`` adds 9 values left to right (see
    :func:`_window_nmi`; a pairwise sum would score them 0: FMI_edge 0.910 instead of 0.918 on a TNO pair).
    """
    if feature not in FMI_FEATURES:
        raise ValueError(f"unknown FMI feature {feature!r}; use one of {FMI_FEATURES}")
    feats = [_fmi_features(x, feature) for x in (f, a, b)]
    # unfold lists a window row-major; MATLAB's aSub(:) is column-major: reorder to (col, row).
    order = torch.arange(9, device=f.device).view(3, 3).T.flatten()
    out = []
    for i in range(f.shape[0]):
        wf, wa, wb = (F.unfold(x[i][None, None], 3)[0].T[:, order] for x in feats)
        scores = [_fmi_windows(wf[s:s + chunk], wa[s:s + chunk], wb[s:s + chunk])
                  for s in range(0, wf.shape[0], chunk)]
        out.append(torch.cat(scores).mean())
    return torch.stack(out)


def fmi_pixel(f: Tensor, a: Tensor, b: Tensor, chunk: int = 16384) -> Tensor:
    """FMI with raw-pixel features, ``analysis_fmi(A, B, F, 'none')``: :func:`fmi` with ``feature="none"``."""
    return fmi(f, a, b, "none", chunk)
