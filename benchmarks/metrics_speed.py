"""Seconds for the default fusion-metric set (FusionMetrics.update on one pair) at several image sizes.

    python benchmarks/metrics_speed.py [--threads 1] [--repeats 3] [--metrics EN SSIM ...]

Prints a Markdown table: size, seconds per pair (best of ``repeats`` after one warm-up), and the share of
the slowest metrics. Inputs are random 8-bit-like images (the cost does not depend on content).
"""

from __future__ import annotations

import argparse
import time

import torch

from sgdfuse.metrics import DEFAULT_METRICS, METRIC_FUNCTIONS, FusionMetrics, to_grey8

SIZES = [(256, 256), (480, 640), (768, 1024)]


def _pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ir = torch.rand(1, 1, h, w, generator=g)
    vis = torch.rand(1, 3, h, w, generator=g)
    return (ir + vis) / 2, ir, vis


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _time_size(h: int, w: int, metrics: list[str], repeats: int) -> tuple[float, dict[str, float]]:
    """Whole update (grey conversion + every metric) and each metric alone, in seconds."""
    fused, ir, vis = _pair(h, w)
    metric = FusionMetrics(metrics)
    total = _best(lambda: metric.update(fused, ir, vis), repeats)
    f, a, b = to_grey8(fused), to_grey8(ir), to_grey8(vis)
    each = {m: _best(lambda m=m: METRIC_FUNCTIONS[m](f, a, b, "cddfuse"), repeats) for m in metrics}
    return total, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), metrics: {' '.join(args.metrics)}\n")
    print("| H×W | seconds / pair | slowest metrics (s) |")
    print("|---|---:|---|")
    for h, w in SIZES:
        total, each = _time_size(h, w, args.metrics, args.repeats)
        top = ", ".join(f"{m} {t:.3f}" for m, t in sorted(each.items(), key=lambda kv: -kv[1])[:3])
        print(f"| {h}×{w} | {total:.3f} | {top} |")


if __name__ == "__main__":
    main()
