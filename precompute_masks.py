"""Precompute the mask cache for a dataset without training: ``python precompute_masks.py data=msrs ...``.

Builds only the data config's pair sources and the mask source (no DataModule, no Lightning Trainer) and
calls ``prepare`` on each split – exactly what ``prepare_data`` does at the start of training – so that a
cluster can fill the cache on one GPU before a sweep starts, and every run then reads it.
"""

import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="precompute_masks")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from sgdfuse.orchestration.cpu import configure_from_config

    configure_from_config(cfg)  # torch threads per process (logged), allocator
    source = instantiate(cfg.masks.source)
    rows = []
    start = time.perf_counter()
    for split in cfg.splits:
        if cfg.data.get(split) is None:
            print(f"[{split}] not in data config {cfg.data.get('_target_')}: skipped")
            continue
        pairs = instantiate(cfg.data[split])
        split_start = time.perf_counter()
        pairs.validate()  # sizes and headers first: SAM never runs on a broken dataset
        source.prepare(pairs, split)
        stats = getattr(source, "stats", None)  # SamMasks reports what it did; other sources do no work
        if stats is None:
            rows.append((split, len(pairs), "-", "-", time.perf_counter() - split_start))
        else:
            rows.append((split, stats.pairs, stats.computed, stats.cached, stats.seconds))
    print(f"\nmask source: {type(source).__name__}")
    if hasattr(source, "cache"):
        print(f"cache: {source.cache.source_dir(source.source_hash)}")
    print(f"{'split':<8}{'pairs':>8}{'images':>8}{'computed':>10}{'cached':>8}{'seconds':>10}")
    for split, n, computed, cached, seconds in rows:
        print(f"{split:<8}{n:>8}{2 * n:>8}{computed!s:>10}{cached!s:>8}{seconds:>10.1f}")
    print(f"total {time.perf_counter() - start:.1f} s (images = IR + VIS; computed/cached count pairs)")


if __name__ == "__main__":
    main()
