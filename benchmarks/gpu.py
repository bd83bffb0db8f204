"""One prepared GPU benchmark (≤ 8 min on one GPU): training steps, inference modes and SAM, as JSON + table.

    python benchmarks/gpu.py                      # paper settings, writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --tiny --device cpu  # tiny sizes: what the test suite runs on a CPU

Everything is built from the real configs (Hydra compose of ``configs/train.yaml``, paper defaults, plus
``masks=sam``): Stage I (``model.stage1``), Stage II (``model.stage2``, Stage I untrained inside), the batch
``data.batch_size`` × ``data.crop_size``², the inference settings and the SAM generator.

1. Training step (forward, backward, Adam step) of Stage I, Stage II phase a (ε-MSE of the UNet) and phase b
   (HFAH on frozen-UNet features) at the paper's batch, in fp32 and bf16 autocast, with and without
   ``torch.compile`` of the trained network (Stage I's net / the UNet). Achieved TFLOP/s count the step's
   FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention; forward and
   backward); MFU divides them by the device's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`; blank for an
   unknown device), for every row, fp32 included.
2. Inference per 640×480 pair (Stage I included): ``features`` (3 UNet passes + head), ``refine``
   (SDEdit, 10 DDIM steps from t0 = 100, then features) and a 60-step sampler (60 DDIM steps from t = 999,
   then features), fp32 and bf16.
3. SAM ViT-B (random weights: no checkpoint needed; quality thresholds 0 so that post-processing handles
   as many masks as trained weights would give) with the config's generator, seconds per image.

Training rows that would start later than ``--budget-s`` minus 90 s are skipped and marked so (inference
and SAM take about a minute); compilation time is reported separately from the steady-state step time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from sgdfuse.atomic import atomic_write_json  # noqa: E402
from sgdfuse.orchestration import cpu  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched in order
#: against ``torch.cuda.get_device_name()``.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 125.0), ("A10", 125.0), ("RTX 6000 Ada", 364.0), ("RTX 4090", 165.0),
    ("RTX 3090", 71.0), ("A6000", 155.0),
)
TINY_OVERRIDES = [
    "preset=cpu", "model.stage1.net.channels=8", "model.stage1.net.num_stages=1",
    "model.stage1.net.num_heads=2",
    "model.stage2.unet.block_out_channels=[8,16]", "model.stage2.unet.norm_num_groups=4",
    "model.stage2.unet.attention_head_dim=4", "model.head_widths.level_channels=8",
    "model.head_widths.hidden_channels=[8,8]", "data.batch_size=2", "data.crop_size=32", "masks=sam_tiny",
]


def peak_bf16_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def compose_config(tiny: bool, extra: list[str]) -> DictConfig:
    overrides = ["masks=sam", *(TINY_OVERRIDES if tiny else []), *extra]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


#: FlopCounterMode has no formula for the CPU flash-attention kernel (CUDA kernels have theirs).
SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_flops(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(seconds of the first ``warmup`` calls, mean seconds per call of the next ``repeats``)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return first, (time.perf_counter() - start) / repeats


def make_batch(b: int, h: int, w: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(b, 2, h, w, generator=g) > 0.7).float()
    batch = {"ir": torch.rand(b, 1, h, w, generator=g), "vis": torch.rand(b, 3, h, w, generator=g),
             "mask_ir": masks[:, :1], "mask_vis": masks[:, 1:]}
    batch = {k: v.to(device).contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
    batch["name"] = [f"bench{i}" for i in range(b)]
    return batch


def build_module(cfg: DictConfig, stage: str, device: torch.device) -> torch.nn.Module:
    if stage == "stage1":
        module = instantiate(cfg.model.stage1)
    else:
        stage1_net = OmegaConf.to_container(cfg.model.stage1.net, resolve=True)
        module = instantiate(cfg.model.stage2, phase=stage.split("_")[1], stage1_ckpt=None, masks=True,
                             stage1_net=stage1_net)
    return module.to(device).to(memory_format=torch.channels_last)


def trained_net(module: torch.nn.Module, stage: str) -> torch.nn.Module:
    """The network whose compilation the row measures (what callbacks.performance.compile would list)."""
    return {"stage1": lambda: module.net, "stage2_a": lambda: module.refiner.denoiser,
            "stage2_b": lambda: module.refiner.head}[stage]()


def train_row(cfg: DictConfig, stage: str, precision: str, compiled: bool, device: torch.device,
              steps: int, peak: float | None) -> dict[str, Any]:
    torch.manual_seed(0)
    module = build_module(cfg, stage, device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    batch = make_batch(cfg.data.batch_size, cfg.data.crop_size, cfg.data.crop_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            loss = module.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = count_flops(step)  # eager, before compiling: the same arithmetic
    if compiled:
        trained_net(module, stage).compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first, per_step = timed(step, device, warmup=3 if compiled else 2, repeats=steps)
    tflops = flops / per_step / 1e12
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"stage": stage, "precision": precision, "compile": compiled, "batch": int(cfg.data.batch_size),
            "crop": int(cfg.data.crop_size), "step_s": per_step, "warmup_s": first,
            "tflop_per_step": flops / 1e12, "tflops": tflops, "mfu": tflops / peak if peak else None,
            "peak_mem_gib": peak_mem}


def inference_rows(cfg: DictConfig, device: torch.device, size: tuple[int, int], repeats: int,
                   sampler_steps: int) -> list[dict[str, Any]]:
    module = build_module(cfg, "stage2_b", device).eval()
    batch = make_batch(1, *size, device)
    base = OmegaConf.to_container(cfg.model.stage2.inference, resolve=True)
    last_t = module.refiner.num_train_timesteps - 1
    modes = {"features": {**base, "mode": "features"},
             "refine": {**base, "mode": "refine"},
             f"sampler{sampler_steps}": {**base, "mode": "refine", "t0": last_t, "n_steps": sampler_steps}}
    rows = []
    for name, inference in modes.items():
        module.hparams.inference = inference
        for precision in ("fp32", "bf16"):
            def fuse(bf16: bool = precision == "bf16") -> None:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    module.fuse(batch)
            reps = 1 if name.startswith("sampler") else repeats
            _, seconds = timed(fuse, device, warmup=1, repeats=reps)
            rows.append({"mode": name, "precision": precision, "size": list(size), "s_per_pair": seconds,
                         **{k: inference[k] for k in ("t0", "n_steps") if inference["mode"] == "refine"}})
    return rows


def sam_row(cfg: DictConfig, device: torch.device, tiny: bool, size: tuple[int, int], pairs: int,
            cache_dir: str) -> dict[str, Any]:
    from sgdfuse.data.synthetic import SyntheticPairs

    source_cfg = copy.deepcopy(OmegaConf.to_container(cfg.masks.source, resolve=True))
    if not tiny:  # random-weight ViT-B from the registry's builder: no download, no checkpoint
        source_cfg["model"] = {"_target_": "segment_anything.build_sam_vit_b", "checkpoint": None}
    source_cfg["generator"].update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    source_cfg.update(checkpoint=None, cache_dir=cache_dir, device=str(device), download=False)
    source = instantiate(source_cfg)
    data = SyntheticPairs(split="test", num_pairs=pairs + 1, height=size[0], width=size[1], seed=0)
    _sync(device)
    start = time.perf_counter()
    source.compute(data[0])  # builds SAM; first-call kernels
    _sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(1, pairs + 1):
        source.compute(data[i])
    _sync(device)
    seconds = (time.perf_counter() - start) / (2 * pairs)  # IR and VIS of every pair
    model = "tiny (tests)" if tiny else "vit_b"
    return {"model": model, "size": list(size), "points_per_side": source_cfg["generator"]["points_per_side"],
            "crop_n_layers": source_cfg["generator"]["crop_n_layers"], "s_per_image": seconds,
            "first_pair_s": warmup}


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_tables(result: dict[str, Any]) -> None:
    print(f"\n# {result['device_name']}, torch {result['torch']}, bf16 peak "
          f"{_fmt(result['peak_bf16_tflops'], '.0f') or 'unknown'} TFLOP/s\n")
    print("| stage | precision | compile | batch | s / step | GFLOP / step | TFLOP/s | MFU | peak GiB | "
          "warm-up s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in result["train"]:
        head = f"| {r['stage']} | {r['precision']} | {r['compile']} "
        if "skipped" in r:
            print(f"{head}| | skipped: {r['skipped']} | | | | | |")
            continue
        print(f"{head}| {r['batch']}×{r['crop']}² | {r['step_s']:.4f} | {r['tflop_per_step'] * 1e3:.1f} "
              f"| {r['tflops']:.2f} | {_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_mem_gib'], '.1f')} "
              f"| {r['warmup_s']:.1f} |")
    print("\n| inference (per pair, Stage I included) | precision | size | s / pair |")
    print("|---|---|---|---:|")
    for r in result["inference"]:
        print(f"| {r['mode']} | {r['precision']} | {r['size'][1]}×{r['size'][0]} | {r['s_per_pair']:.3f} |")
    sam = result["sam"]
    if sam:
        print(f"\nSAM {sam['model']} (random weights, points_per_side={sam['points_per_side']}, "
              f"crop_n_layers={sam['crop_n_layers']}): {sam['s_per_image']:.3f} s per "
              f"{sam['size'][1]}×{sam['size'][0]} image")
    print(f"\ntotal {result['elapsed_s']:.0f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, batch and images (CPU test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per row")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="compiled rows (auto: on for CUDA, off on a CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="no training row starts later than this minus 90 s (kept for inference and SAM)")
    parser.add_argument("--sampler-steps", type=int, default=None, help="sampler row (default 60; tiny 4)")
    parser.add_argument("--skip-sam", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of configs/train.yaml")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    plan = cpu.configure(args.threads)
    device = torch.device(args.device)
    cfg = compose_config(args.tiny, args.overrides)
    steps = args.steps or (2 if args.tiny else 10)
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    peak = peak_bf16_tflops(device)
    size = (48, 64) if args.tiny else (480, 640)
    result: dict[str, Any] = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "torch": torch.__version__, "tiny": args.tiny,
        "peak_bf16_tflops": peak, "cpu_threads": plan.threads, "cpu_threads_reason": plan.reason,
        "overrides": ["masks=sam", *(TINY_OVERRIDES if args.tiny else []), *args.overrides],
        "train": [], "inference": [], "sam": None,
    }
    rows = [(stage, precision, False) for stage in ("stage1", "stage2_a", "stage2_b")
            for precision in ("fp32", "bf16")]
    if compiled:
        rows += [("stage1", "bf16", True), ("stage2_a", "bf16", True)]
    for stage, precision, comp in rows:
        if time.perf_counter() - started > args.budget_s - 90:
            result["train"].append({"stage": stage, "precision": precision, "compile": comp,
                                    "skipped": "time budget"})
            continue
        result["train"].append(train_row(cfg, stage, precision, comp, device, steps, peak))
        print(json.dumps(result["train"][-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.compiler.reset()
    result["inference"] = inference_rows(cfg, device, size, repeats=1 if args.tiny else 3,
                                         sampler_steps=args.sampler_steps or (4 if args.tiny else 60))
    if not args.skip_sam:
        import tempfile

        with tempfile.TemporaryDirectory() as cache_dir:
            result["sam"] = sam_row(cfg, device, args.tiny, size, pairs=1 if args.tiny else 2,
                                    cache_dir=cache_dir)
    result["elapsed_s"] = time.perf_counter() - started
    atomic_write_json(args.out, result)
    print_tables(result)
    print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
