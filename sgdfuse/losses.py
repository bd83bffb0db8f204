"""Fusion losses on luminance in [0, 1] (docs/design.md, Stage-I loss; docs/design.md, Mask-guided losses).

Stage I:  L = L1(Y_f, max(IR, Y_vis)) + λ_grad · L1(|∇Y_f|, max(|∇IR|, |∇Y_vis|)),
Stage II: the same targets with spatial weights from the SAM masks, normalised by the weight sum so that
the loss scale does not depend on mask coverage (our reading). Without masks both reduce to Stage I.

Optional structural term (``w_ssim``, our addition): ``1 − ½(SSIM(Y_f, IR) + SSIM(Y_f, Y_vis))`` from
torchmetrics' SSIM map, weighted like the other two terms. Stage II's intensity and gradient targets are
the ones Stage I already minimises, so with them alone a head that starts at F1 has almost nothing to learn
(README, "Real data on a CPU"); SSIM is a target Stage I never saw (U2Fusion and SwinFusion train with it).

Optional mask-guided intensity targets (``intensity_target``, another reading of "mask-guided intensity
loss"): the pixel-wise max only inside the IR mask (thermal targets keep their IR luminance) and, outside it,
the mean of the sources (``salient_mean``) or the visible luminance (``salient_vis``, TarDAL's target-aware
split). ``max`` (everywhere) is the default; on the validation split the other two lowered the contrast of
the final image (README, "Real data on a CPU").

Optional signed gradient target (``gradient_target="signed"``, our addition): instead of matching only the
magnitude ``|∇Y_f|`` to ``max(|∇IR|, |∇Y_vis|)``, match the Sobel components (Gx, Gy) of ``Y_f`` to those of
the source whose gradient is the larger at each pixel, so that an edge also keeps that source's polarity
and orientation (the magnitude form lets an edge flip or mix; Qabf scores orientation).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel (Gx, Gy) of a B×1×H×W image, replicate-padded so that flat borders have zero gradient."""
    kx = _SOBEL_X.to(img).view(1, 1, 3, 3)
    padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(-1, -2))


def _l1(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    return gx.abs() + gy.abs()


def sobel_magnitude(img: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of a B×1×H×W image (B×1×H×W)."""
    return _l1(*sobel(img))


def _weighted_mean(err: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return err.mean()
    weight = weight.expand_as(err)
    return (weight * err).sum() / weight.sum()


#: The intensity targets :func:`fusion_loss` takes (``intensity_target``); the ``salient_*`` ones name the
#: source luminance kept outside the IR mask. One list: the config check reads the Literal.
IntensityTarget = Literal["max", "salient_mean", "salient_vis"]
INTENSITY_TARGETS: tuple[str, ...] = get_args(IntensityTarget)


#: The gradient targets :func:`gradient_loss` takes (``gradient_target``).
GradientTarget = Literal["magnitude", "signed"]
GRADIENT_TARGETS: tuple[str, ...] = get_args(GradientTarget)


def check_intensity_target(kind: str, has_ir_mask: bool) -> None:
    """A clear error for an unknown target, or for a ``salient_*`` target without the IR mask."""
    if kind not in INTENSITY_TARGETS:
        raise ValueError(f"intensity_target={kind!r}: use one of {list(INTENSITY_TARGETS)} "
                         "(model.stage2.loss.intensity_target)")
    if kind != "max" and not has_ir_mask:
        raise ValueError(f"intensity_target={kind!r} needs masks, as it keeps the max inside the IR mask: "
                         "use a mask source (masks=prior|sam|labels) or intensity_target=max")


def target_intensity(ir: torch.Tensor, y_vis: torch.Tensor, mask_ir: torch.Tensor | None = None,
                     kind: str = "max") -> torch.Tensor:
    """``max``: max(IR, Y_vis) everywhere (Stage I, published). ``salient_*``: the max inside ``mask_ir``
    (thermal targets; soft masks blend) and, outside it, (IR + Y_vis) / 2 (``salient_mean``) or Y_vis
    (``salient_vis``, the target-aware split of TarDAL)."""
    check_intensity_target(kind, mask_ir is not None)
    brighter = torch.maximum(ir, y_vis)
    if kind == "max":
        return brighter
    outside = 0.5 * (ir + y_vis) if kind == "salient_mean" else y_vis
    return mask_ir * brighter + (1.0 - mask_ir) * outside


def intensity_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor,
                   weight: torch.Tensor | None = None, target: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) L1 between the fused luminance and ``target`` (default: the pixel-wise max of the
    sources)."""
    target = target_intensity(ir, y_vis) if target is None else target
    return _weighted_mean((y_f - target).abs(), weight)


def gradient_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor,
                  weight: torch.Tensor | None = None, kind: str = "magnitude") -> torch.Tensor:
    """(Weighted) L1 between |∇Y_f| and the pixel-wise max of the source gradient magnitudes
    (``magnitude``), or between ∇Y_f and the gradient (Gx, Gy) of the source with the larger magnitude
    (``signed``; |Gx| + |Gy| errors, so a zero Y_f costs the same in both forms)."""
    if kind not in GRADIENT_TARGETS:
        raise ValueError(f"gradient_target={kind!r}: use one of {list(GRADIENT_TARGETS)} "
                         "(model.stage1.loss.gradient_target / model.stage2.loss.gradient_target)")
    if kind == "magnitude":
        err = (sobel_magnitude(y_f) - torch.maximum(sobel_magnitude(ir), sobel_magnitude(y_vis))).abs()
    else:
        (fx, fy), (ix, iy), (vx, vy) = sobel(y_f), sobel(ir), sobel(y_vis)
        ir_larger = _l1(ix, iy) >= _l1(vx, vy)
        err = _l1(fx - torch.where(ir_larger, ix, vx), fy - torch.where(ir_larger, iy, vy))
    return _weighted_mean(err, weight)


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (Gaussian 11×11, σ 1.5) of two B×1×H×W images in [0, 1], same size as the input."""
    _, full = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none",
                                                  return_full_image=True)
    return full


def ssim_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor,
              weight_ir: torch.Tensor | None = None,
              weight_vis: torch.Tensor | None = None) -> torch.Tensor:
    """``1 − ½(SSIM(Y_f, IR) + SSIM(Y_f, Y_vis))``, each SSIM map averaged with its (optional) weights."""
    return 1.0 - 0.5 * (_weighted_mean(_ssim_map(y_f, ir), weight_ir)
                        + _weighted_mean(_ssim_map(y_f, y_vis), weight_vis))


def fusion_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor, w_int: float = 1.0,
                w_grad: float = 1.0, mask_ir: torch.Tensor | None = None,
                mask_vis: torch.Tensor | None = None, mask_weight: float = 0.0,
                w_ssim: float = 0.0, intensity_target: IntensityTarget = "max",
                gradient_target: GradientTarget = "magnitude") -> dict[str, torch.Tensor]:
    """Intensity + gradient (+ SSIM if ``w_ssim > 0``) loss; with ``mask_weight > 0`` the mask-guided form.

    Weights: ``1 + mask_weight·mask_ir`` on the intensity term (thermal targets) and on SSIM to IR,
    ``1 + mask_weight·mask_vis`` on the gradient term (edges) and on SSIM to VIS. ``intensity_target``:
    see :func:`target_intensity` (``salient_*`` need ``mask_ir``); ``gradient_target``: see
    :func:`gradient_loss`. Returns the total and each part
    (``loss_ssim`` only when ``w_ssim > 0``: the SSIM map costs a few convolutions).
    """
    use_masks = mask_weight > 0 and mask_ir is not None and mask_vis is not None
    w_i = 1.0 + mask_weight * mask_ir if use_masks else None
    w_g = 1.0 + mask_weight * mask_vis if use_masks else None
    target = target_intensity(ir, y_vis, mask_ir, intensity_target)
    l_int = intensity_loss(y_f, ir, y_vis, w_i, target)
    l_grad = gradient_loss(y_f, ir, y_vis, w_g, gradient_target)
    out = {"loss": w_int * l_int + w_grad * l_grad, "loss_int": l_int, "loss_grad": l_grad}
    if w_ssim > 0:
        out["loss_ssim"] = ssim_loss(y_f, ir, y_vis, w_i, w_g)
        out["loss"] = out["loss"] + w_ssim * out["loss_ssim"]
    return out
