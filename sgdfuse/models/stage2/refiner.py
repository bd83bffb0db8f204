"""Diffusion logic of SGDFuse Stage II (section 3, Stage II; docs/design.md, Stage II).

:class:`DiffusionRefiner` holds the mask-conditioned :class:`~sgdfuse.models.stage2.denoiser.Denoiser`,
the fusion head (HFAH or the ablation's 1×1 conv) and diffusers' schedulers, and provides:

- the ε-MSE objective of phase a (``DDPMScheduler.add_noise`` at random t),
- decoder features at ``feature_timesteps`` (one UNet pass per t, concatenated over t per level) and
  the head on them: F2 in [-1, 1] (phase b, and inference mode ``features``),
- SDEdit-style refinement (inference mode ``refine``): F1 noised to ``t0``, ``n_steps`` DDIM steps back
  to 0 with ``DDIMScheduler``, then ``features`` on the result.

With ``diffusion=False`` (ablation "w/o diffusion") there is no noise and no ε objective: one UNet pass
at t = 0 on the clean image, so the UNet + head form a direct refiner.

Images are in [-1, 1] (F1 mapped by 2x − 1). Noise used at inference is seeded per image from its name,
so a pair is always fused the same way, whatever the batch it comes in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from sgdfuse.models.stage2.denoiser import Denoiser

INFERENCE_MODES = ("features", "refine")


def image_seed(name: str, salt: str = "") -> int:
    """A stable 63-bit seed from a pair name (``hash()`` is salted per process, sha256 is not)."""
    digest = hashlib.sha256(f"{salt}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def per_image_noise(names: Sequence[str], shape: Sequence[int], salt: str = "",
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise, len(names)×shape, each image's slice seeded by its name (drawn on CPU so
    that the values do not depend on the device)."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(image_seed(n, salt)))
             for n in names]
    return torch.stack(noise).to(device=device, dtype=dtype)


def predict_x0(scheduler: DDPMScheduler, x_t: torch.Tensor, eps: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
    """x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t for a batch of (possibly different) timesteps.

    ``scheduler.step`` computes the same quantity but for one scalar t per call; training batches mix t.
    """
    alpha_bar = scheduler.alphas_cumprod.to(device=x_t.device, dtype=x_t.dtype)[timesteps.long()]
    alpha_bar = alpha_bar.view(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


class DiffusionRefiner(nn.Module):
    """Denoiser + fusion head + schedulers (plain module; the training phases live in Lightning).

    Args:
        denoiser: the ε-predicting UNet with feature capture.
        head: maps the per-level features (highest resolution first) and an output size to B×3×H×W
            in [-1, 1] (:class:`HFAH`, :class:`ConvHead`, or a head with ``needs_base = True`` such as
            :class:`ResidualHead`, which also receives x0), built for ``len(feature_steps)`` × the
            denoiser's ``feature_channels``.
        noise_scheduler: the training ``DDPMScheduler``; the DDIM sampler is derived from its config.
        feature_timesteps: timesteps whose decoder features feed the head.
        diffusion: False for the direct-refiner ablation (features at t = 0 of the clean image only).
    """

    def __init__(self, denoiser: Denoiser, head: nn.Module, noise_scheduler: DDPMScheduler,
                 feature_timesteps: Sequence[int] = (5, 50, 100), diffusion: bool = True) -> None:
        super().__init__()
        num_train = noise_scheduler.config.num_train_timesteps
        bad = [t for t in feature_timesteps if not 0 <= int(t) < num_train]
        if diffusion and (not feature_timesteps or bad):
            raise ValueError(f"feature_timesteps {list(feature_timesteps)} must be a non-empty list of "
                             f"integers in [0, {num_train - 1}] (num_train_timesteps = {num_train})")
        self.denoiser = denoiser
        self.head = head
        self.noise_scheduler = noise_scheduler
        # "trailing" spacing puts the last DDIM step at t=T/N-1, whose previous alpha is 1: it ends at x0.
        self.sampler = DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing")
        self.diffusion = diffusion
        self.feature_steps = [int(t) for t in feature_timesteps] if diffusion else [0]

    @staticmethod
    def num_feature_steps(feature_timesteps: Sequence[int], diffusion: bool) -> int:
        """How many timesteps' features the head receives (to size it before the refiner exists)."""
        return len(feature_timesteps) if diffusion else 1

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    # --- phase a -------------------------------------------------------------------------------------
    def epsilon_loss(self, x0: torch.Tensor, cond: torch.Tensor | None, timesteps: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ε-MSE at ``timesteps`` (default uniform random per image); also reports |x̂0 − x0| as a
        readable quality figure (x0 in [-1, 1])."""
        if not self.diffusion:
            raise RuntimeError("epsilon_loss: this refiner was built with diffusion=False (no noise)")
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.noise_scheduler.add_noise(x0, noise, timesteps)
        eps = self.denoiser(x_t, timesteps, cond).sample
        x0_hat = predict_x0(self.noise_scheduler, x_t, eps.detach(), timesteps).clamp(-1, 1)
        return {"loss_eps": F.mse_loss(eps, noise), "x0_mae": (x0_hat - x0).abs().mean()}

    # --- features and head (phase b, inference) ------------------------------------------------------
    def features(self, x0: torch.Tensor, cond: torch.Tensor | None,
                 noise: torch.Tensor | None) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Decoder features at every feature step, concatenated over t per level, and the padded size.

        One UNet pass per timestep; ``noise`` (B×3×H×W, shared by all t) is ignored without diffusion.
        """
        per_step = []
        padded_size = tuple(x0.shape[-2:])
        for t in self.feature_steps:
            x_t = x0 if not self.diffusion else self.noise_scheduler.add_noise(
                x0, noise, torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long))
            out = self.denoiser(x_t, t, cond)
            per_step.append(out.features)
            padded_size = out.padded_size
        levels = [torch.cat(level, dim=1) for level in zip(*per_step, strict=True)]
        return levels, padded_size

    def decode(self, x0: torch.Tensor, cond: torch.Tensor | None, noise: torch.Tensor | None,
               unet_grad: bool = True) -> torch.Tensor:
        """F2 = head(features) in [-1, 1] at x0's size; ``unet_grad=False`` builds no graph through the
        UNet (phase b: only the head trains)."""
        if self.diffusion and noise is None:
            raise ValueError("decode: diffusion features need `noise` (per_image_noise at inference)")
        with torch.set_grad_enabled(unet_grad and torch.is_grad_enabled()):
            feats, padded_size = self.features(x0, cond, noise)
        h, w = x0.shape[-2:]
        if getattr(self.head, "needs_base", False):  # residual heads: F2 = F1 + bounded correction
            return self.head(feats, size=padded_size, base=x0)
        return self.head(feats, size=padded_size)[..., :h, :w]

    # --- inference -----------------------------------------------------------------------------------
    def sdedit(self, x0: torch.Tensor, cond: torch.Tensor | None, noise: torch.Tensor, t0: int,
               n_steps: int) -> torch.Tensor:
        """Noise x0 to (the DDIM grid point nearest) ``t0`` and run ``n_steps`` DDIM steps back to t = 0.

        As diffusers' img2img pipelines do: a schedule of ``n_steps·T/t0`` steps, of which the last
        ``n_steps`` are run (deterministic, η = 0).
        """
        if not self.diffusion:
            raise ValueError("inference mode 'refine' needs diffusion=True (the ablation has no noise model)")
        if not (0 < t0 < self.num_train_timesteps and 0 < n_steps <= t0):
            raise ValueError(f"refine: need 0 < n_steps <= t0 < {self.num_train_timesteps}, "
                             f"got t0={t0}, n_steps={n_steps}")
        total = min(max(round(n_steps * self.num_train_timesteps / t0), n_steps), self.num_train_timesteps)
        self.sampler.set_timesteps(total, device=x0.device)
        timesteps = self.sampler.timesteps[-n_steps:]
        x = self.sampler.add_noise(x0, noise, timesteps[:1])
        for t in timesteps:
            eps = self.denoiser(x, t, cond).sample
            x = self.sampler.step(eps, t, x).prev_sample
        return x

    @torch.no_grad()
    def infer(self, x0: torch.Tensor, cond: torch.Tensor | None, names: Sequence[str],
              mode: str = "features", t0: int = 100, n_steps: int = 10) -> torch.Tensor:
        """F2 in [-1, 1] for inference; deterministic per image name."""
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference.mode must be one of {INFERENCE_MODES}, got {mode!r}")
        if len(names) != x0.shape[0]:
            raise ValueError(f"infer: {len(names)} names for a batch of {x0.shape[0]} images")
        shape = x0.shape[1:]
        if mode == "refine":
            noise = per_image_noise(names, shape, "sdedit", x0.device, x0.dtype)
            x0 = self.sdedit(x0, cond, noise, t0, n_steps)
        noise = per_image_noise(names, shape, "features", x0.device, x0.dtype) if self.diffusion else None
        return self.decode(x0, cond, noise)
