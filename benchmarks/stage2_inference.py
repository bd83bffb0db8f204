"""Inference cost of Stage II on this machine: ``python benchmarks/stage2_inference.py``.

For the Stage-II model of the paper, the CPU preset and the CPU real-data preset (composed from
``configs/``, so the numbers follow the configs): parameters, FLOPs (``FlopCounterMode``) and seconds
of one UNet pass on a 640×480 pair, the same for the configured fusion head, seconds per pair for Stage I
(default ``FusionNet``), and the cost of the inference modes as passes × measured times:
``features`` (one pass per feature timestep + head), ``refine`` (10 DDIM steps, then ``features``) and
the authors' 60-step sampler (60 passes, as their SR3 code does). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from sgdfuse.models.stage1 import FusionNet
from sgdfuse.models.stage2 import Denoiser
from sgdfuse.orchestration import cpu

#: name -> overrides of configs/train.yaml whose model.stage2 is measured (the real configs, not copies).
PRESETS = {
    "CPU real-data preset": ["preset=cpu_real"],
    "CPU preset": ["preset=cpu"],
    "paper": [],
}
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


def stage2_config(overrides: list[str]) -> DictConfig:
    """``model.stage2`` of ``configs/train.yaml`` under ``overrides`` (interpolations resolved)."""
    config_dir = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.create(OmegaConf.to_container(cfg.model.stage2, resolve=True))


@torch.inference_mode()
def bench_unet(stage2: DictConfig, h: int, w: int, repeats: int) -> dict[str, float]:
    den = Denoiser(cond_channels=2, **stage2.unet).eval()
    steps = len(stage2.feature_timesteps)
    x, cond = torch.rand(1, 3, h, w) * 2 - 1, torch.rand(1, 2, h, w).round()
    feats = den(x, 50, cond).features
    head = instantiate(stage2.head, in_channels=[c * steps for c in den.feature_channels]).eval()
    level_feats = [f.repeat(1, steps, 1, 1) for f in feats]
    kwargs = {"base": x} if getattr(head, "needs_base", False) else {}
    unet_flops, unet_s = flops_and_seconds(lambda: den(x, 50, cond), repeats)
    head_flops, head_s = flops_and_seconds(lambda: head(level_feats, size=(h, w), **kwargs), repeats)
    return {"unet_params": n_params(den), "head_params": n_params(head), "unet_gflops": unet_flops / 1e9,
            "unet_s": unet_s, "head_gflops": head_flops / 1e9, "head_s": head_s, "passes": steps,
            "widths": list(stage2.unet.block_out_channels), "head": stage2.head._target_.rsplit(".", 1)[1]}


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
    parser.add_argument("--only", choices=sorted(PRESETS), action="append", help="benchmark only these")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cpu.configure)")
    args = parser.parse_args()
    cpu.configure(args.threads)  # threads from the idle cores (logged), allocator
    h, w = args.height, args.width
    print(f"# Stage II inference, {w}×{h}, batch 1, {torch.get_num_threads()} CPU thread(s), "
          f"torch {torch.__version__}\n")
    s1 = bench_stage1(h, w, args.repeats)
    print(f"Stage I (default FusionNet, {s1['params'] / 1e6:.2f} M params): {s1['gflops']:.1f} GFLOPs, "
          f"{s1['s']:.3f} s per pair\n")
    print("| config | UNet widths | UNet params | GFLOPs / pass | s / pass | head | head params "
          f"| head GFLOPs | head s | features (T passes) | refine ({REFINE_STEPS}+T passes) "
          f"| {SAMPLER_STEPS}-step sampler |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.only or PRESETS:
        r = bench_unet(stage2_config(PRESETS[name]), h, w, args.repeats)
        features = r["passes"] * r["unet_s"] + r["head_s"]
        refine = REFINE_STEPS * r["unet_s"] + features
        sampler = SAMPLER_STEPS * r["unet_s"]
        print(f"| {name} | {r['widths']} | {r['unet_params'] / 1e6:.2f} M | {r['unet_gflops']:.1f} "
              f"| {r['unet_s']:.3f} | {r['head']} | {r['head_params'] / 1e6:.3f} M | {r['head_gflops']:.1f} "
              f"| {r['head_s']:.3f} | {features:.2f} s (T={r['passes']}) | {refine:.2f} s "
              f"| {sampler:.2f} s |", flush=True)
    print("\nMode costs are passes × the measured times (+ one head call for features/refine), "
          "excluding Stage I. Model settings are composed from configs/ (PRESETS).")


if __name__ == "__main__":
    main()
