"""The training phases of Stage II as data: what trains and which losses apply (SGDFuse, section 3).

One table serves the pipeline (which phases exist, their stage names) and the Lightning module (what is
trainable, frozen in eval mode, and which losses are summed). A phase without diffusion (``direct``, the
"w/o diffusion" ablation) builds a refiner without noise: features at t = 0 of the clean image.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """One Stage-II phase.

    Attributes:
        train_unet: the denoising UNet receives gradients (else frozen and kept in eval mode).
        train_head: the fusion head receives gradients.
        eps_loss: the ε-MSE of the noise prediction is part of the loss.
        fusion_loss: the mask-guided intensity + gradient losses on the head's image are part of the loss.
        diffusion: features come from noised inputs at ``feature_timesteps`` (False: one pass at t = 0).
    """

    train_unet: bool
    train_head: bool
    eps_loss: bool
    fusion_loss: bool
    diffusion: bool = True


PHASES: dict[str, Phase] = {
    "a": Phase(train_unet=True, train_head=False, eps_loss=True, fusion_loss=False),
    "b": Phase(train_unet=False, train_head=True, eps_loss=False, fusion_loss=True),
    "joint": Phase(train_unet=True, train_head=True, eps_loss=True, fusion_loss=True),
    "direct": Phase(train_unet=True, train_head=True, eps_loss=False, fusion_loss=True, diffusion=False),
}


def get_phase(name: str) -> Phase:
    """The phase called ``name``; a clear error for anything else."""
    if name not in PHASES:
        raise ValueError(f"Stage-II phase {name!r} does not exist; use one of {list(PHASES)} "
                         "(stage2_phases in the config, e.g. [a, b]).")
    return PHASES[name]


def check_phase_sequence(names: list[str]) -> None:
    """A run's phases share one refiner: all with diffusion, or ``direct`` alone."""
    phases = [get_phase(n) for n in names]
    if not phases:
        raise ValueError("stage2_phases is empty; use e.g. [a, b] ([direct] for the w/o-diffusion ablation)")
    if len({p.diffusion for p in phases}) > 1:
        raise ValueError(f"stage2_phases {names}: 'direct' (no diffusion) cannot be combined with the "
                         "diffusion phases a, b, joint; use [direct] alone for the w/o-diffusion ablation.")
