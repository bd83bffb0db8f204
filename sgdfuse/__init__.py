"""SGDFuse: SAM-guided diffusion for infrared-visible image fusion (plain PyTorch parts).

Lightning wrappers live in the top-level ``lightning_modules`` and ``datamodules`` packages.
"""

__version__ = "0.1.0"
