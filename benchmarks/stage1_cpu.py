"""Stage I's 640×480 forward pass on a CPU against a matmul measured in the same processes.

    python benchmarks/stage1_cpu.py [--height 480 --width 640] [--repeats 2] [--threads 1] [--profile]

The default ``FusionNet`` (configs/model/stage1/default.yaml) in four variants, each in a fresh process (the
allocator's state is per process), in turn: the first NCHW formulation (tests/stage1_reference.py, every
step materialised) and the current channels-last one, each with glibc's default allocator and with large
blocks kept in the heap (what every entry point sets, sgdfuse/orchestration/cpu.py). In every process the
forward pass and a 2048³ float32 matmul alternate ``repeats`` times after a warm-up, and the best of each
is kept: on a shared machine, ratios measured side by side are what is comparable. GFLOP/s divide the
FLOPs counted by ``FlopCounterMode`` (convolutions and matmuls) of the variant by its time; the table also
gives them against the reference formulation's count, which is the same function.

``--profile`` prints torch.profiler's top operators of the current variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sgdfuse and tests/

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sgdfuse.models.stage1 import FusionNet  # noqa: E402
from sgdfuse.orchestration import cpu  # noqa: E402
from tests import stage1_reference  # noqa: E402

VARIANTS = [("reference NCHW", "default"), ("reference NCHW", "kept"), ("channels-last", "default"),
            ("channels-last", "kept")]
MATMUL_N = 2048


def _forward(variant: str, net: FusionNet):
    if variant == "reference NCHW":
        return lambda ir, vis: stage1_reference.fusion_net(net, ir, vis)
    return net


def child(variant: str, allocator: str, h: int, w: int, repeats: int, threads: int | None) -> dict:
    cpu.configure(threads, keep_freed_memory=allocator == "kept")
    torch.manual_seed(0)
    net = FusionNet().eval()
    forward = _forward(variant, net)
    ir, vis = torch.rand(1, 1, h, w), torch.rand(1, 3, h, w)
    a, b = torch.rand(MATMUL_N, MATMUL_N), torch.rand(MATMUL_N, MATMUL_N)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            forward(ir, vis)  # doubles as the warm-up
        a @ b
        best_s, best_mm = float("inf"), float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            forward(ir, vis)
            best_s = min(best_s, time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(3):
                a @ b
            best_mm = min(best_mm, (time.perf_counter() - start) / 3)
    return {"variant": variant, "allocator": allocator, "seconds": best_s,
            "gflop": counter.get_total_flops() / 1e9, "matmul_gflops": 2 * MATMUL_N**3 / best_mm / 1e9,
            "threads": torch.get_num_threads()}


def profile(h: int, w: int, threads: int | None) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cpu.configure(threads)
    net = FusionNet().eval()
    ir, vis = torch.rand(1, 1, h, w), torch.rand(1, 3, h, w)
    with torch.inference_mode():
        net(ir, vis)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            net(ir, vis)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=30, max_shapes_column_width=60)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cpu.configure)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.height, args.width, args.repeats, args.threads)))
        return
    if args.profile:
        profile(args.height, args.width, args.threads)
        return
    rows = []
    for variant, allocator in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, allocator, "--height", str(args.height),
               "--width", str(args.width), "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    reference_gflop = rows[0]["gflop"]
    print(f"# Stage I (default FusionNet), {args.width}×{args.height}, batch 1, {rows[0]['threads']} "
          f"thread(s), load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}\n")
    print("| formulation | allocator | s / pair | GFLOP counted | GFLOP/s | matmul GFLOP/s (same process) "
          "| % of matmul | % of matmul, reference FLOPs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r["gflop"] / r["seconds"]
        print(f"| {r['variant']} | {r['allocator']} | {r['seconds']:.2f} | {r['gflop']:.1f} | {rate:.1f} "
              f"| {r['matmul_gflops']:.0f} | {rate / r['matmul_gflops']:.0%} "
              f"| {reference_gflop / r['seconds'] / r['matmul_gflops']:.0%} |")


if __name__ == "__main__":
    main()
