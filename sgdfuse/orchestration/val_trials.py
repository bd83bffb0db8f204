"""Choose settings on the validation split: trials of one stage against a finished run's own Stage I.

Phase-b trials (``stage2_b``, the default) retrain phase b (the head) from the run's own
``stage1/last.ckpt`` and ``stage2_a/last.ckpt`` under their config overrides (losses, steps, learning rate,
...), fuse every pair of the data config's ``val`` split, and score the final image against that run's own
Stage-I image. Phase b is the only phase whose training the Stage-II loss options change, so trials cost
minutes, not a whole run. Stage-I trials (``stage1``) retrain Stage I under their overrides and score its
image against the run's own Stage I in the same way. Beside the metrics, each image's distance from each
source is reported (not counted), so that a setting winning the count by copying one source shows. Test
sets are never read: settings are chosen here and then tested once (README, "Real data on a CPU").
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from tqdm import tqdm

from sgdfuse.atomic import atomic_write_text
from sgdfuse.data.base import DataError
from sgdfuse.metrics import FusionMetrics, to_grey8
from sgdfuse.orchestration import pipeline
from sgdfuse.orchestration.evaluation import iterate_batches

#: What a trial retrains: phase b on the run's Stage I and phase a, or Stage I itself.
TRIAL_STAGES = ("stage2_b", "stage1")

#: The eight standard metrics a trial is judged by (AG follows SF and is not counted, as in the README).
STANDARD_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")

#: Mean absolute difference, in 8-bit grey levels, of an image from the IR and from the VIS image: reported
#: beside the metrics, never counted. A setting can win the count by copying one source (MI and VIF rise for
#: any copy); these show it.
SOURCE_DISTANCES = ("dist_IR", "dist_VIS")


@dataclass(frozen=True)
class Trial:
    """One named setting: Hydra overrides on top of the run's own config."""

    name: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> Trial:
        """``NAME=OVERRIDE OVERRIDE ...`` (no overrides: the run's own setting, retrained)."""
        name, sep, rest = spec.partition("=")
        if not sep or not name.strip() or "/" in name:
            raise ValueError(f"trial {spec!r}: expected NAME=OVERRIDES, e.g. "
                             "'grad3=model.stage2.loss.w_grad=3' (NAME without '/'; OVERRIDES separated by "
                             "spaces, or nothing)")
        return cls(name.strip(), tuple(rest.split()))


def check_run(run_dir: Path, cfg: DictConfig, stage: str = "stage2_b") -> tuple[Path, Path | None]:
    """The run's Stage-I and phase-a checkpoints (phase a: None for Stage-I trials, which do not need it);
    a clear error when the run cannot serve as a base."""
    if stage not in TRIAL_STAGES:
        raise ValueError(f"trial stage {stage!r}: use one of {list(TRIAL_STAGES)}")
    if stage == "stage1":
        stage1 = run_dir / "stage1" / "last.ckpt"
        if not stage1.is_file():
            raise FileNotFoundError(f"{run_dir} has no Stage I to compare trials with: missing {stage1}. "
                                    "Train it first (python train.py ... with the same overrides).")
        return stage1, None
    if list(cfg.stage2_phases) != ["a", "b"]:
        raise ValueError(f"val trials retrain phase b after phase a; this config's stage2_phases is "
                         f"{list(cfg.stage2_phases)} (use a run with stage2_phases=[a,b])")
    stage1, phase_a = run_dir / "stage1" / "last.ckpt", run_dir / "stage2_a" / "last.ckpt"
    missing = [str(p) for p in (stage1, phase_a) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run to build trials on: missing "
                                f"{', '.join(missing)}. Train it first (python train.py ... with the same "
                                "overrides).")
    return stage1, phase_a


def train_phase_b(cfg: DictConfig, stage1: Path, phase_a: Path, out_dir: Path) -> Path:
    """Phase b of ``cfg`` on the given Stage I and phase a, in ``out_dir/stage2_b`` (resumes if started).

    Seeded as ``train.py`` seeds a run (``cfg.seed``), so that trials differ by their overrides alone."""
    with open_dict(cfg):
        cfg.paths.run_dir = str(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = pipeline.build_datamodule(cfg)
    module = pipeline.build_stage2(cfg, "b", stage1, datamodule.mask_channels_enabled, phase_a)
    return pipeline.fit_stage(cfg, "stage2_b", module, datamodule)


def train_stage1(cfg: DictConfig, out_dir: Path) -> Path:
    """Stage I of ``cfg`` in ``out_dir/stage1`` (resumes if started), seeded as ``train.py`` seeds a run."""
    with open_dict(cfg):
        cfg.paths.run_dir = str(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = pipeline.build_datamodule(cfg)
    return pipeline.fit_stage(cfg, "stage1", pipeline.build_stage1(cfg), datamodule)


def run_stage1_scores(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """The run's own Stage I on the val split: the reference of Stage-I trials (score it under the run's own
    config, so that a trial's data or mask overrides do not move the reference)."""
    stage1, _ = check_run(run_dir, cfg, "stage1")
    return score_val(cfg, stage1)["final"]


def run_trial(cfg: DictConfig, run_dir: Path, stage: str, out_dir: Path,
              reference: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Train one trial of ``stage`` into ``out_dir`` and score it on the val split.

    Returns ``stage1`` (the run's own Stage I; for Stage-I trials ``reference``, from
    :func:`run_stage1_scores`) and ``final`` (the trial's final image; for Stage-I trials, the trial's
    Stage-I image)."""
    stage1, phase_a = check_run(run_dir, cfg, stage)
    if stage == "stage2_b":
        return score_val(cfg, train_phase_b(cfg, stage1, phase_a, out_dir))
    if reference is None:
        raise ValueError("Stage-I trials compare with the run's own Stage I: pass run_stage1_scores(...)")
    return {"stage1": reference, "final": score_val(cfg, train_stage1(cfg, out_dir))["final"]}


@torch.no_grad()
def score_val(cfg: DictConfig, checkpoint: Path,
              metrics: Sequence[str] = STANDARD_METRICS) -> dict[str, dict[str, float]]:
    """Means over the val split of the images a checkpoint gives: ``final``, and ``stage1`` for Stage II."""
    from lightning_modules import load_fusion_model

    if cfg.data.get("val") is None:
        raise DataError("the data config has no val split (data.val is null): trials are scored on it")
    pairs = instantiate(cfg.data.val, _convert_="all")
    masks = instantiate(cfg.masks.source)
    masks.prepare(pairs, "val")
    model = load_fusion_model(checkpoint)
    scores: dict[str, FusionMetrics] = {}
    distances: dict[str, list[torch.Tensor]] = {}
    desc = f"val {checkpoint.parent.parent.name}"
    for batch in tqdm(iterate_batches(pairs, masks), total=len(pairs), desc=desc, unit="pair"):
        sources = torch.stack([to_grey8(batch["ir"]), to_grey8(batch["vis"])], 1)  # B×2×H×W
        for name, image in model.fuse(batch).items():
            image = image.float().clamp(0, 1)
            metric = scores.setdefault(name, FusionMetrics(metrics))
            metric.update(image, batch["ir"], batch["vis"], batch["name"])
            gap = (to_grey8(image).unsqueeze(1) - sources).abs().mean((-2, -1))  # B×2, per image
            distances.setdefault(name, []).append(gap)
    return {name: {**{k: float(v) for k, v in m.compute().items()},
                   **dict(zip(SOURCE_DISTANCES, torch.cat(distances[name]).mean(0).tolist(), strict=True))}
            for name, m in scores.items()}


def judged_metrics(scores: dict[str, float]) -> list[str]:
    """The metrics among one image's scores that a trial is counted on (not the source distances)."""
    return [m for m in scores if m not in SOURCE_DISTANCES]


def at_least_stage1(scores: dict[str, dict[str, float]]) -> list[str]:
    """Metrics on which the final image is at least as good as Stage I (all are higher-is-better here; the
    source distances are not counted)."""
    return [m for m in judged_metrics(scores["final"]) if scores["final"][m] >= scores["stage1"][m]]


#: What the ``final`` columns hold, per trial stage (``stage1`` is always the run's own Stage I).
_FINAL_MEANS = {"stage2_b": "the trial's final image", "stage1": "the trial's Stage-I image"}


def write_tables(rows: list[dict[str, Any]], out_dir: Path, stage: str = "stage2_b") -> None:
    """``trials.csv`` (both images, every metric and source distance, the trial stage) and ``trials.md``
    (final − Stage I, count ≥ Stage I, the final image's distances from the sources)."""
    columns = list(rows[0]["scores"]["final"])
    metrics = judged_metrics(rows[0]["scores"]["final"])
    header = ["trial", "stage", "overrides", "n_at_least_stage1"] + [f"{o}/{m}" for o in ("stage1", "final")
                                                                      for m in columns]
    lines = [",".join(header)]
    for r in rows:
        values = [r["scores"][o][m] for o in ("stage1", "final") for m in columns]
        lines.append(",".join([r["trial"], stage, f'"{" ".join(r["overrides"])}"', str(len(r["wins"]))]
                              + [f"{v:.6f}" for v in values]))
    atomic_write_text(out_dir / "trials.csv", "\n".join(lines) + "\n")
    md = [f"Trials of `{stage}` on the val split; Δ = {_FINAL_MEANS[stage]} − the run's own Stage I.", "",
          "| trial | overrides | ≥ Stage I | " + " | ".join(f"Δ{m}" for m in metrics) + " | F−IR | F−VIS |",
          "|---|---|---:|" + "---:|" * (len(metrics) + 2)]
    for r in rows:
        final, stage1 = r["scores"]["final"], r["scores"]["stage1"]
        deltas = [final[m] - stage1[m] for m in metrics]
        md.append(f"| {r['trial']} | `{' '.join(r['overrides']) or '(run config)'}` | "
                  f"{len(r['wins'])}/{len(metrics)} | " + " | ".join(f"{d:+.4f}" for d in deltas)
                  + "".join(f" | {final[k]:.1f}" for k in SOURCE_DISTANCES) + " |")
    reference = " and ".join(f"{rows[0]['scores']['stage1'][k]:.1f}" for k in SOURCE_DISTANCES)
    md += ["", "F−IR, F−VIS: mean absolute difference from each source, 8-bit grey levels, mean over the val "
               f"pairs; the run's own Stage I: {reference}. A trial "
               "that moves far towards one source may win the count by copying it."]
    atomic_write_text(out_dir / "trials.md", "\n".join(md) + "\n")


def read_trials(out_dir: Path) -> list[dict[str, str]]:
    """The rows of ``trials.csv`` (for tests and reports)."""
    with (out_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))
