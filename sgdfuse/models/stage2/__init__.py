"""Stage II of SGDFuse: mask-conditioned diffusion refiner and its fusion heads."""

from sgdfuse.models.stage2.conv_head import ConvHead
from sgdfuse.models.stage2.denoiser import Denoiser, DenoiserOutput
from sgdfuse.models.stage2.hfah import HFAH
from sgdfuse.models.stage2.phases import PHASES, Phase, get_phase
from sgdfuse.models.stage2.refiner import DiffusionRefiner, per_image_noise, predict_x0
from sgdfuse.models.stage2.residual_head import ResidualHead

__all__ = ["PHASES", "ConvHead", "Denoiser", "DenoiserOutput", "DiffusionRefiner", "HFAH", "Phase",
           "ResidualHead", "get_phase", "per_image_noise", "predict_x0"]
