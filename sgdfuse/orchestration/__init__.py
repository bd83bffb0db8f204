"""Run orchestration: the stage pipeline behind ``train.py``, evaluation, W&B sweeps, SLURM and W&B glue.

This is the one sub-package of ``sgdfuse`` that may import Lightning (it drives Trainers); models, data,
masks, metrics and losses stay plain PyTorch / NumPy.
"""
