"""Cold versus warm mask loading with the SAM mask cache (issue 3, item 7).

For each SAM architecture, on synthetic pairs, in a fresh temporary cache:

- **cold**: a new :class:`SamMasks` runs ``prepare`` (builds SAM, two generator calls per pair) and then
  ``load`` for every pair – the first run of a sweep;
- **warm**: another new :class:`SamMasks` with the same settings does the same – every later run, stage or
  ablation. It must not call SAM at all.

SAM calls are counted on ``SamAutomaticMaskGenerator.generate``. Models have random weights (no SAM
weights on these machines), so quality thresholds are 0; the cost of the real ViT-B forward pass is the
same with trained weights. Example::

    python benchmarks/mask_cache.py                      # tiny SAM + ViT-B, 2 pairs of 320×240
    python benchmarks/mask_cache.py --skip-vit-b --pairs 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from segment_anything import SamAutomaticMaskGenerator

from sgdfuse.data.synthetic import SyntheticPairs
from sgdfuse.masks.sam import SamMasks
from sgdfuse.orchestration import cpu


@dataclass
class Run:
    seconds: float
    sam_calls: int
    sam_seconds: float


class CallCounter:
    """Wraps ``SamAutomaticMaskGenerator.generate`` to count calls and their time."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self._original = SamAutomaticMaskGenerator.generate

    def __enter__(self) -> CallCounter:
        counter, original = self, self._original

        def generate(generator: SamAutomaticMaskGenerator, image: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(generator, image)
            finally:
                counter.calls += 1
                counter.seconds += time.perf_counter() - start

        SamAutomaticMaskGenerator.generate = generate  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        SamAutomaticMaskGenerator.generate = self._original  # type: ignore[method-assign]


def load_all(source_kwargs: dict[str, Any], pairs: SyntheticPairs) -> Run:
    """What a training run does with its masks: prepare once, then load every pair."""
    with CallCounter() as counter:
        start = time.perf_counter()
        source = SamMasks(**source_kwargs)
        source.prepare(pairs, "bench")
        for index in range(len(pairs)):
            source.load(pairs[index])
        seconds = time.perf_counter() - start
    return Run(seconds, counter.calls, counter.seconds)


def bench(name: str, model: dict[str, Any] | None, model_type: str, args: argparse.Namespace) -> list[str]:
    height, width = args.size
    pairs = SyntheticPairs("test", num_pairs=args.pairs, height=height, width=width, seed=0)
    generator = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": 100,
    }
    with tempfile.TemporaryDirectory() as cache_dir:
        kwargs = {"model_type": model_type, "model": model, "generator": generator, "cache_dir": cache_dir}
        kwargs["device"] = "cpu"
        cold = load_all(kwargs, pairs)
        warm = load_all(kwargs, pairs)
    n = len(pairs)
    per_call = cold.sam_seconds / max(cold.sam_calls, 1)
    return [
        name,
        f"{width}×{height}",
        str(n),
        f"{cold.seconds / n:.2f} s",
        f"{1000 * warm.seconds / n:.1f} ms",
        f"{cold.seconds / warm.seconds:.0f}×",
        str(cold.sam_calls),
        str(warm.sam_calls),
        f"{per_call:.2f} s",
    ]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--pairs", type=int, default=2, help="IR/VIS pairs per model")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--skip-vit-b", action="store_true", help="tiny SAM only (ViT-B takes minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cpu.configure)")
    args = parser.parse_args()
    plan = cpu.configure(args.threads)  # threads from the idle cores, allocator
    print(f"torch threads: {plan.threads} ({plan.reason})")

    models: list[tuple[str, dict[str, Any] | None, str]] = [
        ("tiny SAM (random)", {"_target_": "sgdfuse.masks.tiny_sam.build_tiny_sam"}, "vit_b"),
    ]
    if not args.skip_vit_b:
        # Registry ViT-B architecture with random weights: a builder config, so no checkpoint is needed.
        models.append(("ViT-B (random)", {"_target_": "segment_anything.build_sam_vit_b"}, "vit_b"))

    header = ["model", "size", "pairs", "cold / pair", "warm / pair", "speed-up", "SAM calls cold",
              "SAM calls warm", "time / SAM call"]  # fmt: skip
    rows = [bench(name, model, model_type, args) for name, model, model_type in models]
    print(
        f"\ngenerator: points_per_side={args.points_per_side}, crop_n_layers={args.crop_n_layers}, "
        "thresholds 0, min_mask_region_area=100; pair = IR + VIS (2 SAM calls)\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
