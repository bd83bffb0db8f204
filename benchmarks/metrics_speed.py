"""Seconds for the default fusion-metric set on one pair, quiet and next to a busy core, beside the reference.

    python benchmarks/metrics_speed.py [--threads N] [--repeats 3] [--metrics EN SSIM ...] [--no-sizes]

1. One 480×640 pair, scored by ``FusionMetrics.update`` and by the independent numpy/scikit-image/
   scikit-learn implementation of the CDDFuse evaluator (tests/metrics_numpy_reference.py, grey conversion
   included in both), first on the machine as it is ("quiet"), then while a second process this script
   starts keeps one core of its affinity mask busy ("loaded"). Our thread count comes from
   ``sgdfuse.orchestration.cpu.configure`` (re-planned under load, as an entry point starting then would);
   the "all cores" row is torch's default (one thread per allowed core), the case that motivated it.
2. The per-size table (256² to 768×1024) with the configured threads, and the slowest metrics.

Times are the best of ``repeats`` after one warm-up (the machine may be shared: slower runs measure the
neighbours). Inputs are random 8-bit-like images; the cost does not depend on content.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sgdfuse and tests/

from sgdfuse.metrics import DEFAULT_METRICS, METRIC_FUNCTIONS, FusionMetrics, to_grey8  # noqa: E402
from sgdfuse.orchestration import cpu  # noqa: E402
from tests import metrics_numpy_reference as reference  # noqa: E402

SIZES = [(256, 256), (480, 640), (768, 1024)]


def _pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ir = torch.rand(1, 1, h, w, generator=g)
    vis = torch.rand(1, 3, h, w, generator=g)
    return (ir + vis) / 2, ir, vis


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _reference_fn(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> Callable[[], dict]:
    rgb = [t[0].permute(1, 2, 0).expand(-1, -1, 3).numpy() for t in (fused, ir, vis)]
    return lambda: reference.score(*(reference.grey_from_rgb01(np.ascontiguousarray(x)) for x in rgb))


class BusyCore:
    """A child process spinning on the last core of this process's affinity mask."""

    def __enter__(self) -> int:
        core = max(os.sched_getaffinity(0))
        code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)  # let it start spinning before threads are planned
        return core

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def compare_with_reference(metrics: list[str], threads: int | None, repeats: int) -> list[dict]:
    fused, ir, vis = _pair(480, 640)
    metric = FusionMetrics(metrics)
    ours = lambda: metric.update(fused, ir, vis)  # noqa: E731
    ref = _reference_fn(fused, ir, vis)
    rows = []
    plan = cpu.configure(threads)
    rows.append({"condition": "quiet", "threads": plan.threads, "ours": _best(ours, repeats),
                 "reference": _best(ref, repeats)})
    with BusyCore() as core:
        plan = cpu.configure(threads)
        ref_loaded = _best(ref, repeats)
        rows.append({"condition": f"loaded (core {core} busy)", "threads": plan.threads,
                     "ours": _best(ours, repeats), "reference": ref_loaded})
        torch.set_num_threads(cpu.allowed_cores())
        rows.append({"condition": f"loaded (core {core} busy), all cores", "threads": cpu.allowed_cores(),
                     "ours": _best(ours, repeats), "reference": ref_loaded})
    cpu.configure(threads)
    return rows


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
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: sgdfuse.orchestration.cpu's plan)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--no-sizes", action="store_true", help="skip the per-size table")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {cpu.allowed_cores()} allowed core(s), load average "
          f"{os.getloadavg()[0]:.1f}, metrics: {' '.join(args.metrics)}\n")
    print("| 480×640 pair | torch threads | sgdfuse s | reference s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for row in compare_with_reference(args.metrics, args.threads, args.repeats):
        print(f"| {row['condition']} | {row['threads']} | {row['ours']:.3f} | {row['reference']:.3f} "
              f"| {row['reference'] / row['ours']:.1f}× |", flush=True)
    if args.no_sizes:
        return
    print(f"\n| H×W | seconds / pair ({torch.get_num_threads()} thread(s)) | slowest metrics (s) |")
    print("|---|---:|---|")
    for h, w in SIZES:
        total, each = _time_size(h, w, args.metrics, args.repeats)
        top = ", ".join(f"{m} {t:.3f}" for m, t in sorted(each.items(), key=lambda kv: -kv[1])[:3])
        print(f"| {h}×{w} | {total:.3f} | {top} |", flush=True)


if __name__ == "__main__":
    main()
