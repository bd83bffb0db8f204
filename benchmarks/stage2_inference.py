"""Inference cost of Stage II on this machine: ``python benchmarks/stage2_inference.py``.

For the small (CPU preset) and the paper-sized UNet: parameters, FLOPs (``FlopCounterMode``) and seconds
of one UNet pass on a 640×480 pair, the same for the fusion head (HFAH), seconds per pair for Stage I
(default ``FusionNet``), and the cost of the inference modes as passes × measured times:
``features`` (one pass per feature timestep + head), ``refine`` (10 DDIM steps, then ``features``) and
the authors' 60-step sampler (60 passes, as their SR3 code does). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from sgdfuse.models.stage1 import FusionNet
from sgdfuse.models.stage2 import HFAH, Denoiser
from sgdfuse.orchestration import cpu

#: name -> (Denoiser kwargs, HFAH kwargs), as in configs/model/stage2/default.yaml and the CPU preset.
SMALL_HFAH = {"level_channels": 16, "hidden_channels": (16, 16)}
UNETS = {
    "small, 3 levels": ({"block_out_channels": (16, 32, 64), "layers_per_block": 1, "norm_num_groups": 8},
                        SMALL_HFAH),
    "small, 4 levels (CPU preset)": ({"block_out_channels": (16, 32, 64, 64), "layers_per_block": 1,
                                      "norm_num_groups": 8}, SMALL_HFAH),
    "paper": ({"block_out_channels": (64, 128, 256, 512), "layers_per_block": 2, "norm_num_groups": 32}, {}),
}
FEATURE_TIMESTEPS = 3  # default [5, 50, 100]
REFINE_STEPS = 10
SAMPLER_STEPS = 60


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sdpa_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args, out_shape=None,
                **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


#: FlopCounterMode has no formula for the CPU flash-attention kernel: without this, attention counts as 0.
SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def flops_and_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """FLOPs of one call (the counted call doubles as warm-up) and the best wall time of ``repeats``
    (the minimum, as ``timeit`` advises: the CPU is shared, slower runs measure the neighbours)."""
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU)
    with counter:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return counter.get_total_flops(), min(times)


@torch.inference_mode()
def bench_unet(unet_cfg: dict, hfah_cfg: dict, h: int, w: int, repeats: int) -> dict[str, float]:
    den = Denoiser(cond_channels=2, **unet_cfg).eval()
    x, cond = torch.rand(1, 3, h, w) * 2 - 1, torch.rand(1, 2, h, w).round()
    feats = den(x, 50, cond).features
    head = HFAH([c * FEATURE_TIMESTEPS for c in den.feature_channels], **hfah_cfg).eval()
    level_feats = [f.repeat(1, FEATURE_TIMESTEPS, 1, 1) for f in feats]
    unet_flops, unet_s = flops_and_seconds(lambda: den(x, 50, cond), repeats)
    head_flops, head_s = flops_and_seconds(lambda: head(level_feats, size=(h, w)), repeats)
    return {"unet_params": n_params(den), "head_params": n_params(head), "unet_gflops": unet_flops / 1e9,
            "unet_s": unet_s, "head_gflops": head_flops / 1e9, "head_s": head_s}


@torch.inference_mode()
def bench_stage1(h: int, w: int, repeats: int) -> dict[str, float]:
    net = FusionNet().eval()
    ir, vis = torch.rand(1, 1, h, w), torch.rand(1, 3, h, w)
    flops, seconds = flops_and_seconds(lambda: net(ir, vis), repeats)
    return {"params": n_params(net), "gflops": flops / 1e9, "s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per measurement (best is kept)")
    parser.add_argument("--only", choices=sorted(UNETS), action="append", help="benchmark only these UNets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cpu.configure)")
    args = parser.parse_args()
    cpu.configure(args.threads)  # threads from the idle cores (logged), allocator
    h, w = args.height, args.width
    print(f"# Stage II inference, {w}×{h}, batch 1, {torch.get_num_threads()} CPU thread(s), "
          f"torch {torch.__version__}\n")
    s1 = bench_stage1(h, w, args.repeats)
    print(f"Stage I (default FusionNet, {s1['params'] / 1e6:.2f} M params): {s1['gflops']:.1f} GFLOPs, "
          f"{s1['s']:.3f} s per pair\n")
    print("| UNet | UNet params | GFLOPs / pass | s / pass | HFAH params | HFAH GFLOPs | HFAH s "
          f"| features ({FEATURE_TIMESTEPS} passes) | refine ({REFINE_STEPS}+{FEATURE_TIMESTEPS} passes) "
          f"| {SAMPLER_STEPS}-step sampler |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.only or UNETS:
        r = bench_unet(*UNETS[name], h, w, args.repeats)
        features = FEATURE_TIMESTEPS * r["unet_s"] + r["head_s"]
        refine = REFINE_STEPS * r["unet_s"] + features
        sampler = SAMPLER_STEPS * r["unet_s"]
        print(f"| {name} | {r['unet_params'] / 1e6:.2f} M | {r['unet_gflops']:.1f} | {r['unet_s']:.3f} "
              f"| {r['head_params'] / 1e6:.3f} M | {r['head_gflops']:.1f} | {r['head_s']:.3f} "
              f"| {features:.2f} s | {refine:.2f} s | {sampler:.2f} s |", flush=True)
    print("\nMode costs are passes × the measured times (+ one HFAH call for features/refine), "
          "excluding Stage I.")


if __name__ == "__main__":
    main()
