"""One fuse → score → write path for the test stage of ``train.py`` and for ``evaluate.py``.

Per test set, in ``<out>/<set>/``: ``fused/<name>.png`` (the final image) and ``<output>/<name>.png`` for
every other output the model names (``stage1`` of two-stage models), ``metrics.csv`` (one row per image
and output), ``metrics.md`` (means, one row per output) and ``grid.png`` (IR | VIS | masks | outputs for
the first pairs). Across sets, ``<out>/metrics.json``::

    {"convention": "cddfuse", "metrics": [...], "sets": {"TNO": {"n_images": 42,
                                                          "final": {"EN": ...}, "stage1": {...}}}}

Every file is written atomically. Under DDP every rank scores its shard; means are reduced by the
metric's own states and per-image rows are gathered, so rank 0 writes what one process would.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sgdfuse.atomic import atomic_write_json, atomic_write_text
from sgdfuse.data.io import write_png_atomic
from sgdfuse.metrics import FusionMetrics
from sgdfuse.visualize import panel_rows

log = logging.getLogger(__name__)

#: The output every model has; others (``stage1``) are written and scored beside it.
FINAL = "final"
#: Folder of an output's PNGs (``final`` keeps the historical name ``fused``).
_FOLDERS = {FINAL: "fused"}


def _folder(output: str) -> str:
    return _FOLDERS.get(output, output)


class SetResults:
    """Scores and writes one test set, batch by batch.

    Args:
        out_dir: the set's folder (``<out>/<set>``).
        name: the set's name (titles, summary).
        metrics / convention: see :class:`~sgdfuse.metrics.FusionMetrics`.
        write_images: write the PNGs of every output (off for ``evaluate.py method=folder``).
        grid_pairs: pairs shown in ``grid.png``.
        show_masks: add the mask columns to the grid (when the mask source yields masks).
    """

    def __init__(self, out_dir: str | Path, name: str, metrics: Sequence[str] | None = None,
                 convention: str = "cddfuse", write_images: bool = True, grid_pairs: int = 4,
                 show_masks: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.metric_args = (list(metrics) if metrics else None, convention)
        self.convention = convention
        self.write_images = write_images
        self.grid_pairs = grid_pairs
        self.show_masks = show_masks
        self.scorers: dict[str, FusionMetrics] = {}
        self.grid: list[np.ndarray] = []
        self.metric_names = list(FusionMetrics(*self.metric_args).metric_names)

    def add(self, batch: Mapping[str, Any], outputs: Mapping[str, torch.Tensor]) -> None:
        """Score and write one batch: ``outputs`` are the model's named images, B×3×H×W RGB in [0, 1]."""
        if FINAL not in outputs:
            raise KeyError(f"the model's outputs {sorted(outputs)} have no {FINAL!r} image")
        names = [Path(str(n)).stem for n in batch["name"]]
        for output, images in outputs.items():
            images = images.detach().float().clamp(0, 1)
            scorer = self.scorers.get(output)
            if scorer is None:
                scorer = self.scorers[output] = FusionMetrics(*self.metric_args).to(images.device)
            scorer.update(images, batch["ir"], batch["vis"], names=names)
            if self.write_images:
                for name, img in zip(names, images, strict=True):
                    write_png_atomic(self.out_dir / _folder(output) / f"{name}.png",
                                     img.permute(1, 2, 0).cpu().numpy())
        if len(self.grid) < self.grid_pairs:
            keys = ("ir", "vis", "mask_ir", "mask_vis") if self.show_masks else ("ir", "vis")
            shown = {k: batch[k].cpu() for k in keys if isinstance(batch.get(k), torch.Tensor)}
            ordered = {k: outputs[k].detach().float().cpu() for k in outputs if k != FINAL}
            ordered[FINAL] = outputs[FINAL].detach().float().cpu()
            self.grid.extend(panel_rows(shown, ordered)[: self.grid_pairs - len(self.grid)])

    def finish(self, write: bool = True) -> dict[str, Any]:
        """Means per output (reduced across DDP ranks); with ``write``, the set's CSV, Markdown and grid."""
        if not self.scorers:
            raise ValueError(f"test set {self.name!r}: no image was scored")
        means = {o: {k: float(v) for k, v in s.compute().items()} for o, s in self.scorers.items()}
        rows = {o: _gather(s.per_image()) for o, s in self.scorers.items()}
        result = {"n_images": len(rows[FINAL]), **{o: means[o] for o in _ordered(means)}}
        if write:
            names = self.metric_names
            write_csv(self.out_dir / "metrics.csv", rows, names)
            atomic_write_text(self.out_dir / "metrics.md",
                              metrics_markdown(result, self.name, self.convention))
            if self.grid:
                write_grid(self.out_dir / "grid.png", self.grid)
        return result


def _ordered(outputs: Mapping[str, Any]) -> list[str]:
    """Other outputs (``stage1``) before ``final``, as a table reads: Stage I, then the final image."""
    return [o for o in outputs if o != FINAL] + [FINAL]


def _gather(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-image rows of every DDP rank (all ranks call this), sorted by name; unchanged without DDP."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        everything: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everything, rows)
        rows = [row for part in everything for row in part]
    return sorted(rows, key=lambda r: r["name"])


def write_csv(path: Path, rows: Mapping[str, Sequence[dict[str, Any]]], metric_names: Sequence[str]) -> None:
    """One row per image and output: ``name, output, <metrics>``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["name", "output", *metric_names], lineterminator="\n")
    writer.writeheader()
    for output in _ordered(rows):
        for row in rows[output]:
            writer.writerow({"name": row["name"], "output": output,
                             **{m: f"{row[m]:.10g}" for m in metric_names}})
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path, output: str = FINAL) -> list[dict[str, Any]]:
    """The rows of one output of a ``metrics.csv`` (values as floats)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("output", FINAL) == output]
    return [{k: (v if k in ("name", "output") else float(v)) for k, v in r.items()} for r in rows]


def metrics_markdown(result: Mapping[str, Any], title: str, convention: str) -> str:
    outputs = [o for o in _ordered({k: v for k, v in result.items() if isinstance(v, dict)})]
    names = list(result[FINAL])
    lines = [f"# {title}", "",
             f"Mean over {result['n_images']} images; 8-bit grey scoring, convention `{convention}` "
             "(docs/metrics.md).", "",
             "| output | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += ["| " + o + " | " + " | ".join(f"{result[o][n]:.4f}" for n in names) + " |" for o in outputs]
    return "\n".join(lines) + "\n"


def write_grid(path: Path, rows: Sequence[np.ndarray], height: int = 256, gap: int = 4) -> None:
    """Stack panel rows (each scaled to ``height`` px) on a white canvas and write it as PNG."""
    scaled = [cv2.resize(r, (max(1, round(r.shape[1] * height / r.shape[0])), height),
                         interpolation=cv2.INTER_AREA) for r in rows]
    width = max(r.shape[1] for r in scaled)
    canvas = np.ones((len(scaled) * (height + gap) - gap, width, 3), dtype=np.float32)
    for i, r in enumerate(scaled):
        canvas[i * (height + gap): i * (height + gap) + height, : r.shape[1]] = r
    write_png_atomic(path, canvas)


def write_summary(out_dir: str | Path, results: Mapping[str, Mapping[str, Any]], convention: str,
                  metric_names: Sequence[str]) -> Path:
    """``<out>/metrics.json`` over all sets; an existing file is replaced, and the log says so."""
    path = Path(out_dir) / "metrics.json"
    if path.is_file():
        log.warning("replacing the earlier test results in %s", path)
    atomic_write_json(path, {"convention": convention, "metrics": list(metric_names), "sets": dict(results)})
    return path


def flat_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``test/<set>/<metric>`` (final image) and ``test/<set>/<output>/<metric>`` for the other outputs."""
    flat: dict[str, float] = {}
    for name, result in results.items():
        for output, values in result.items():
            if isinstance(values, dict):
                prefix = f"test/{name}" if output == FINAL else f"test/{name}/{output}"
                flat.update({f"{prefix}/{k}": float(v) for k, v in values.items()})
    return flat


def read_summary(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json`` written by :func:`write_summary`."""
    return json.loads(Path(path).read_text())
