"""Fusion losses on luminance in [0, 1] (docs/design.md, Stage-I loss; docs/design.md, Mask-guided losses).

Stage I:  L = L1(Y_f, max(IR, Y_vis)) + λ_grad · L1(|∇Y_f|, max(|∇IR|, |∇Y_vis|)),
Stage II: the same targets with spatial weights from the SAM masks, normalised by the weight sum so that
the loss scale does not depend on mask coverage (our reading). Without masks both reduce to Stage I.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(img: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of a B×1×H×W image, replicate-padded so that flat borders have zero gradient."""
    kx = _SOBEL_X.to(img).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx).abs() + F.conv2d(padded, ky).abs()


def _weighted_mean(err: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return err.mean()
    weight = weight.expand_as(err)
    return (weight * err).sum() / weight.sum()


def intensity_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) L1 between the fused luminance and the pixel-wise max of the sources."""
    return _weighted_mean((y_f - torch.maximum(ir, y_vis)).abs(), weight)


def gradient_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) L1 between |∇Y_f| and the pixel-wise max of the source gradient magnitudes."""
    target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(y_vis))
    return _weighted_mean((sobel_magnitude(y_f) - target).abs(), weight)


def fusion_loss(y_f: torch.Tensor, ir: torch.Tensor, y_vis: torch.Tensor, w_int: float = 1.0,
                w_grad: float = 1.0, mask_ir: torch.Tensor | None = None,
                mask_vis: torch.Tensor | None = None, mask_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Intensity + gradient loss; with ``mask_weight > 0`` the mask-guided Stage-II form.

    Weights: ``1 + mask_weight·mask_ir`` on the intensity term (thermal targets) and
    ``1 + mask_weight·mask_vis`` on the gradient term (edges). Returns the total and both parts.
    """
    use_masks = mask_weight > 0 and mask_ir is not None and mask_vis is not None
    w_i = 1.0 + mask_weight * mask_ir if use_masks else None
    w_g = 1.0 + mask_weight * mask_vis if use_masks else None
    l_int = intensity_loss(y_f, ir, y_vis, w_i)
    l_grad = gradient_loss(y_f, ir, y_vis, w_g)
    return {"loss": w_int * l_int + w_grad * l_grad, "loss_int": l_int, "loss_grad": l_grad}
