"""Stage II of SGDFuse: mask-conditioned diffusion refiner and its fusion heads."""

from sgdfuse.models.stage2.conv_head import ConvHead
from sgdfuse.models.stage2.denoiser import Denoiser, DenoiserOutput
from sgdfuse.models.stage2.hfah import HFAH
from sgdfuse.models.stage2.refiner import DiffusionRefiner, per_image_noise, predict_x0

__all__ = ["ConvHead", "Denoiser", "DenoiserOutput", "DiffusionRefiner", "HFAH", "per_image_noise",
           "predict_x0"]
