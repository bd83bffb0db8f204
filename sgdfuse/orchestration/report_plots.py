"""Plots of the ablation report (matplotlib, Agg canvas, PNG): per-metric bars and mask-robustness curves.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, not through pyplot: no global
backend or figure state, so a report can be made from any thread or a notebook without side effects.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sgdfuse.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from sgdfuse.orchestration.report import Report, SetResult


def _grid(n: int, cols: int = 3) -> tuple[Figure, list]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def _title(metric: str, lower_is_better: tuple[str, ...]) -> str:
    return f"{metric} ({'lower' if metric in lower_is_better else 'higher'} is better)"


def bar_plot(result: SetResult, rows: list[str], reference: str, lower_is_better: tuple[str, ...],
             path: Path) -> Path:
    """One panel per metric: the mean of each row with its std over seeds as the error bar."""
    fig, axes = _grid(len(result.metrics))
    x = list(range(len(rows)))
    colors = ["tab:orange" if row == reference else "tab:blue" for row in rows]
    for ax, metric in zip(axes, result.metrics, strict=True):
        cells = [result.cells[(row, metric)] for row in rows]
        ax.bar(x, [c.mean for c in cells], yerr=[c.std or 0.0 for c in cells], color=colors, capsize=3)
        low = min(c.mean - (c.std or 0.0) for c in cells)
        high = max(c.mean + (c.std or 0.0) for c in cells)
        pad = 0.15 * (high - low) or 0.05 * abs(high) or 0.1
        ax.set_ylim(low - pad, high + pad)  # differences between ablations are small against the values
        ax.set_xticks(x, rows, rotation=40, ha="right", fontsize=8)
        ax.set_title(_title(metric, lower_is_better), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Ablations on {result.name} (mean ± std over seeds)")
    return _save(fig, path)


def robustness_plot(result: SetResult, reference: str, lower_is_better: tuple[str, ...],
                    path: Path) -> Path:
    """Each metric against the kernel size k, one curve per erode / dilate experiment, with the
    reference experiment (original masks) as a horizontal line and its std as a band."""
    curves: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in result.rows:
        if result.perturb[row] is not None:
            curves[result.experiment[row]].append((result.perturb[row][1], row))
    fig, axes = _grid(len(result.metrics))
    for ax, metric in zip(axes, result.metrics, strict=True):
        if reference in result.rows:
            ref = result.cells[(reference, metric)]
            ax.axhline(ref.mean, color="black", linestyle="--", linewidth=1,
                       label=f"{reference} (original masks)")
            if ref.std:
                ax.axhspan(ref.mean - ref.std, ref.mean + ref.std, color="black", alpha=0.08)
        for experiment, points in sorted(curves.items()):
            points.sort()
            cells = [result.cells[(row, metric)] for _, row in points]
            ax.errorbar([k for k, _ in points], [c.mean for c in cells], yerr=[c.std or 0.0 for c in cells],
                        marker="o", capsize=3, label=experiment)
        ax.set_xticks(sorted({k for points in curves.values() for k, _ in points}))
        ax.set_xlabel("kernel size k")
        ax.set_title(_title(metric, lower_is_better), fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, len(labels)))
    fig.suptitle(f"Mask robustness on {result.name} (mean ± std over seeds)")
    return _save(fig, path)


def write_plots(report: Report, out_dir: Path) -> dict[str, list[Path]]:
    """``<set>_ablation.png`` and, with eroded / dilated runs, ``<set>_robustness.png`` per test set."""
    from sgdfuse.orchestration.report import safe_name

    s = report.settings
    written: dict[str, list[Path]] = {}
    for result in report.sets:
        if not result.metrics:
            continue
        paths = []
        if result.ablation_rows:
            paths.append(bar_plot(result, result.ablation_rows, s.reference, s.lower_is_better,
                                  Path(out_dir) / f"{safe_name(result.name)}_ablation.png"))
        if result.robustness_rows(s.reference):
            paths.append(robustness_plot(result, s.reference, s.lower_is_better,
                                         Path(out_dir) / f"{safe_name(result.name)}_robustness.png"))
        written[result.name] = paths
    return written
