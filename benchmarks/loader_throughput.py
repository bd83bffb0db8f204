"""Training batches per second from a real folder of pairs against the training step rate (goal: ≥ 3×).

    python benchmarks/loader_throughput.py --root /data/RoadScene_train [--workers 0 1 2]
        [--batches 20] [--steps stage1] [--gpu-json benchmarks/results/gpu.json] [overrides ...]

The DataModule is built from the real configs exactly as ``train.py trainer=gpu data=folder
data.root=ROOT`` builds it (paper batch ``data.batch_size`` × ``data.crop_size``², the trainer=gpu loader
settings: pinned memory, persistent workers); ``masks=none`` unless overridden (cached SAM masks add one
small PNG read per image). For each worker count: the first batch (worker start-up) and the mean over the
next ``--batches`` batches. The step rate is measured here for ``--steps`` (Stage I and/or Stage II phase a
at the paper batch on this machine's device) and read from a ``benchmarks/gpu.py`` JSON when one exists.
Each worker runs one torch thread; on a shared machine per-worker rates are the comparable figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from sgdfuse.orchestration import cpu  # noqa: E402


def build_datamodule(root: str, overrides: list[str]):
    from sgdfuse.orchestration.pipeline import build_datamodule as build

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer=gpu", "data=folder", f"data.root={root}",
                                                      "masks=none", *overrides])
    dm = build(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def loader_rate(dm, workers: int, batches: int) -> dict:
    dm.num_workers = workers
    pin = dm.pin_memory and torch.cuda.is_available()  # pinning needs CUDA
    dm.pin_memory = pin
    loader = dm.train_dataloader()
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    n = 0
    while n < batches:
        try:
            next(it)
        except StopIteration:  # a small folder: start the next epoch (persistent workers stay up)
            it = iter(loader)
            continue
        n += 1
    seconds = (time.perf_counter() - start) / batches
    del it, loader
    persistent = dm.persistent_workers and workers > 0
    return {"workers": workers, "pin_memory": pin, "persistent_workers": persistent, "first_batch_s": first,
            "batch_s": seconds, "batches_per_s": 1 / seconds}


def step_rate(cfg, stage: str, device: torch.device, steps: int = 2) -> dict:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    if stage == "stage1":
        module = instantiate(cfg.model.stage1)
    else:
        module = instantiate(cfg.model.stage2, phase="a", stage1_ckpt=None,
                             stage1_net=OmegaConf.to_container(cfg.model.stage1.net, resolve=True))
    module = module.to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    b, c = cfg.data.batch_size, cfg.data.crop_size
    g = torch.Generator().manual_seed(0)
    batch = {"ir": torch.rand(b, 1, c, c, generator=g), "vis": torch.rand(b, 3, c, c, generator=g),
             "mask_ir": torch.zeros(b, 1, c, c), "mask_vis": torch.zeros(b, 1, c, c)}
    batch = {k: v.to(device) for k, v in batch.items()}

    def step() -> None:
        module.compute_losses(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"stage": stage, "device": str(device), "step_s": seconds, "source": "measured here"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a folder of pairs (<root>/ir, <root>/vi)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", nargs="*", default=["stage1"], choices=["stage1", "stage2_a"])
    parser.add_argument("--gpu-json", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    plan = cpu.configure(args.threads)
    if not Path(args.root).is_dir():
        sys.exit(f"--root {args.root}: no such folder of pairs (<root>/ir, <root>/vi)")
    cfg, dm = build_datamodule(args.root, args.overrides)
    print(f"# {len(dm.datasets['train'])} pairs in {args.root}, batch {dm.batch_size} × {dm.crop_size}², "
          f"{cpu.allowed_cores()} allowed cores, {plan.threads} torch thread(s) in the main process "
          f"({plan.reason}), load average {os.getloadavg()[0]:.1f}\n")
    loads = [loader_rate(dm, w, args.batches) for w in args.workers]
    steps = [step_rate(cfg, stage, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
             for stage in args.steps]
    if Path(args.gpu_json).is_file():
        gpu = json.loads(Path(args.gpu_json).read_text())
        steps += [{"stage": r["stage"], "device": f"{gpu['device_name']} ({r['precision']}"
                   f"{', compiled' if r['compile'] else ''})", "step_s": r["step_s"], "source": args.gpu_json}
                  for r in gpu["train"] if "step_s" in r and r["stage"] in ("stage1", "stage2_a")]
    print("| loader workers | pinned | persistent | first batch s | s / batch | batches / s |")
    print("|---:|---|---|---:|---:|---:|")
    for r in loads:
        print(f"| {r['workers']} | {r['pin_memory']} | {r['persistent_workers']} | {r['first_batch_s']:.2f} "
              f"| {r['batch_s']:.3f} | {r['batches_per_s']:.1f} |")
    print("\n| training step | device | s / step | steps / s | " +
          " | ".join(f"loader ÷ step, {r['workers']} worker(s)" for r in loads) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(loads))
    for s in steps:
        ratios = " | ".join(f"{r['batches_per_s'] * s['step_s']:.1f}×" for r in loads)
        print(f"| {s['stage']} | {s['device']} | {s['step_s']:.3f} | {1 / s['step_s']:.2f} | {ratios} |")
    per_worker = max(r["batches_per_s"] / max(r["workers"], 1) for r in loads)
    print(f"\nbest rate per worker: {per_worker:.1f} batches/s; a step of t seconds needs ≥ 3 / (t · "
          f"{per_worker:.1f}) workers (on free cores) for the 3× margin")


if __name__ == "__main__":
    main()
