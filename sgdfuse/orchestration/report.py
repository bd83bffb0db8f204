"""The ablation report behind ``report.py``: finished runs → the tables and plots a paper prints.

Runs (local run folders or W&B, :mod:`.report_runs`) are grouped into rows (experiment, plus the kernel
size of eroded / dilated test masks), screened, and averaged over seeds per test set:

- a run is left out, with its reason, when it is unfinished or its metrics are missing or unreadable, when
  it scored under another metric convention than the report, when its settings differ from the other runs
  of its row (everything recorded except the seed and ``ignore_keys``), when its data differ from the
  reference experiment's, or when it repeats a seed of its row (the earlier run is kept);
- per test set, an *ablation* table (rows without perturbed masks) and, when there are such runs, a *mask
  robustness* table (the reference row = original masks, then every erode / dilate row), each with mean ±
  std over seeds, the best value per column marked (``lower_is_better`` decides the direction) and the
  change against ``compare_to`` (``full``, ``paper``);
- written as Markdown, LaTeX (booktabs) and CSV, with bar and robustness plots (:mod:`.report_plots`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgdfuse.atomic import atomic_write_text
from sgdfuse.orchestration.report_runs import RunRecord, local_runs, wandb_runs
from sgdfuse.orchestration.run_folders import DEFAULT_CONVENTION, differing_keys, flatten, is_ignored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What to report and how; defaults: ``configs/report.yaml`` (read by :func:`settings_from_config`)."""

    metrics: tuple[str, ...]
    lower_is_better: tuple[str, ...]
    reference: str
    compare_to: tuple[str, ...]
    order: tuple[str, ...]
    experiments: tuple[str, ...] | None
    convention: str | None
    decimals: int
    ignore_keys: tuple[str, ...]
    plots: bool


@dataclass(frozen=True)
class LeftOut:
    run: str
    row: str
    reason: str


@dataclass(frozen=True)
class Cell:
    """One metric of one row over its seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (n − 1); None for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class SetResult:
    """All rows of one test set."""

    name: str
    metrics: list[str]
    rows: list[str]
    cells: dict[tuple[str, str], Cell]
    runs: dict[str, list[RunRecord]]
    perturb: dict[str, tuple[str, int] | None]
    experiment: dict[str, str]

    def seeds(self, row: str) -> list[Any]:
        return [r.seed for r in self.runs[row]]

    @property
    def ablation_rows(self) -> list[str]:
        return [r for r in self.rows if self.perturb[r] is None]

    def robustness_rows(self, reference: str) -> list[str]:
        """The reference row (original masks) and every row with eroded / dilated masks; [] without those."""
        perturbed = [r for r in self.rows if self.perturb[r] is not None]
        if not perturbed:
            return []
        return ([reference] if reference in self.rows else []) + perturbed


@dataclass
class Report:
    settings: Settings
    convention: str
    sets: list[SetResult]
    left_out: list[LeftOut]
    notes: list[str] = field(default_factory=list)


# --- grouping and screening ----------------------------------------------------------------------------

def row_label(run: RunRecord) -> str:
    """The table row of a run: its experiment, plus ``k=<size>`` when its test masks are perturbed."""
    return f"{run.experiment} k={run.perturb[1]}" if run.perturb else run.experiment


def _identity_key(identity: dict[str, Any], ignore: Sequence[str]) -> str:
    kept = {k: v for k, v in flatten(identity).items() if not is_ignored(k, ignore)}
    return json.dumps(kept, sort_keys=True, default=str)


def _majority(members: list[RunRecord], key) -> str:
    """The most common ``key`` among ``members``; a tie goes to the earliest run's."""
    counts = Counter(key(r) for r in members)
    top = max(counts.values())
    return next(key(r) for r in sorted(members, key=lambda r: r.created) if counts[key(r)] == top)


def _diff_text(a: RunRecord, b: RunRecord, ignore: Sequence[str], section: str | None = None) -> str:
    ia, ib = (({section: r.identity.get(section)} if section else r.identity) for r in (a, b))
    diff = differing_keys(ia, ib, ignore)
    return ", ".join(diff[:6]) + (f", … ({len(diff)} keys)" if len(diff) > 6 else "")


def screen(runs: Iterable[RunRecord], settings: Settings) -> tuple[list[RunRecord], list[LeftOut], str]:
    """The runs to average, those left out with their reason, and the report's metric convention."""
    left: list[LeftOut] = []
    usable: list[RunRecord] = []
    for run in runs:
        if settings.experiments is not None and run.experiment not in settings.experiments:
            continue
        if run.problem:
            left.append(LeftOut(run.name, row_label(run), run.problem))
        elif run.seed is None:
            left.append(LeftOut(run.name, row_label(run), "no seed recorded"))
        else:
            usable.append(run)
    convention = settings.convention or _report_convention(usable)
    for run in [r for r in usable if r.convention != convention]:
        left.append(LeftOut(run.name, row_label(run),
                            f"metrics under convention `{run.convention}`, this report uses `{convention}` "
                            f"(`python report.py convention={run.convention}` reports those runs)"))
    usable = [r for r in usable if r.convention == convention]
    usable = _same_settings_per_row(usable, settings.ignore_keys, left)
    usable = _same_data_as_reference(usable, settings, left)
    usable = _one_run_per_seed(usable, left)
    return usable, left, convention


def _report_convention(runs: list[RunRecord]) -> str:
    counts = Counter(r.convention for r in runs)
    if not counts:
        return DEFAULT_CONVENTION
    top = max(counts.values())
    tied = sorted(c for c, n in counts.items() if n == top)
    return DEFAULT_CONVENTION if DEFAULT_CONVENTION in tied else tied[0]


def _group(runs: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[row_label(run)].append(run)
    return groups


def _same_settings_per_row(runs: list[RunRecord], ignore: Sequence[str], left: list[LeftOut]
                           ) -> list[RunRecord]:
    """Runs of one row must have been trained and tested alike: the majority's settings win."""
    kept = []
    for row, members in _group(runs).items():
        key = _majority(members, lambda r: _identity_key(r.identity, ignore))
        reference = next(r for r in members if _identity_key(r.identity, ignore) == key)
        n_ref = sum(_identity_key(r.identity, ignore) == key for r in members)
        for run in members:
            if _identity_key(run.identity, ignore) == key:
                kept.append(run)
                continue
            left.append(LeftOut(run.name, row, f"other settings than the {n_ref} other run(s) of `{row}` "
                                               f"(differs at {_diff_text(run, reference, ignore)})"))
    return kept


def _same_data_as_reference(runs: list[RunRecord], settings: Settings, left: list[LeftOut]
                            ) -> list[RunRecord]:
    """Rows are comparable only on the same data: the reference experiment's (else the majority's)."""
    if not runs:
        return runs
    ignore = settings.ignore_keys
    ref_runs = [r for r in runs if r.experiment == settings.reference] or runs
    key = _majority(ref_runs, lambda r: _identity_key({"data": r.identity.get("data")}, ignore))
    reference = next(r for r in ref_runs if _identity_key({"data": r.identity.get("data")}, ignore) == key)
    whose = f"the `{settings.reference}` runs" if ref_runs is not runs else "most runs"
    kept = []
    for run in runs:
        if _identity_key({"data": run.identity.get("data")}, ignore) == key:
            kept.append(run)
        else:
            left.append(LeftOut(run.name, row_label(run), f"other data than {whose} (differs at "
                                                          f"{_diff_text(run, reference, ignore, 'data')})"))
    return kept


def _one_run_per_seed(runs: list[RunRecord], left: list[LeftOut]) -> list[RunRecord]:
    kept = []
    for row, members in _group(runs).items():
        first: dict[Any, RunRecord] = {}
        for run in sorted(members, key=lambda r: (r.created, r.name)):
            seed = json.dumps(run.seed, default=str)
            if seed in first:
                left.append(LeftOut(run.name, row, f"seed {run.seed} repeats {first[seed].name} (the earlier "
                                                   f"run is kept; move one of them away to choose)"))
            else:
                first[seed] = run
                kept.append(run)
    return kept


# --- aggregation ---------------------------------------------------------------------------------------

def _row_order(rows: Iterable[str], runs: dict[str, list[RunRecord]], order: Sequence[str]) -> list[str]:
    def key(row: str) -> tuple:
        run = runs[row][0]
        rank = order.index(run.experiment) if run.experiment in order else len(order)
        return (rank, run.experiment, run.perturb or ("", 0))
    return sorted(rows, key=key)


def aggregate(runs: list[RunRecord], settings: Settings, left: list[LeftOut], notes: list[str]
              ) -> list[SetResult]:
    """Per test set: rows, metrics, and the cells (mean ± std over seeds)."""
    results = []
    for set_name in sorted({s for r in runs for s in r.sets}):
        members = [r for r in runs if set_name in r.sets]
        present = {m for r in members for m in r.sets[set_name]}
        metrics = [m for m in settings.metrics if m in present]
        absent = [m for m in settings.metrics if m not in present]
        if absent:
            notes.append(f"test set {set_name}: no run has {', '.join(absent)}")
        if not metrics:
            continue
        used = []
        for run in members:
            lacking = [m for m in metrics if m not in run.sets[set_name]]
            if lacking:
                why = f"test set {set_name}: lacks {', '.join(lacking)} (the other runs have them)"
                left.append(LeftOut(run.name, row_label(run), why))
            else:
                used.append(run)
        groups = _group(used)
        rows = _row_order(groups, groups, settings.order)
        cells = {(row, m): Cell(tuple(r.sets[set_name][m] for r in groups[row]))
                 for row in rows for m in metrics}
        results.append(SetResult(set_name, metrics, rows, cells, dict(groups),
                                 {row: groups[row][0].perturb for row in rows},
                                 {row: groups[row][0].experiment for row in rows}))
    return results


def make_report(runs: Iterable[RunRecord], settings: Settings) -> Report:
    """Screen, group and average ``runs``; nothing is written."""
    usable, left, convention = screen(runs, settings)
    notes: list[str] = []
    sets = aggregate(usable, settings, left, notes)
    if not sets:
        notes.append("no run could be used: see the runs left out")
    for item in left:
        log.warning("left out %s: %s", item.run, item.reason)
    return Report(settings, convention, sets, left, notes)


def best_rows(result: SetResult, rows: Sequence[str], metric: str, settings: Settings) -> set[str]:
    """Rows with the best mean of ``metric`` (ties at the printed precision all count)."""
    means = {row: round(result.cells[(row, metric)].mean, settings.decimals) for row in rows}
    if not means:
        return set()
    best = (min if metric in settings.lower_is_better else max)(means.values())
    return {row for row, value in means.items() if value == best}


def delta(result: SetResult, row: str, reference: str, metric: str) -> float | None:
    """Mean of ``row`` minus mean of ``reference`` (None when the reference has no runs)."""
    if reference not in result.rows or row not in result.rows:
        return None
    return result.cells[(row, metric)].mean - result.cells[(reference, metric)].mean


# --- rendering -----------------------------------------------------------------------------------------

def _tables(report: Report, result: SetResult) -> list[tuple[str, str, list[str], list[str]]]:
    """``(kind, title, rows, references for Δ)`` of one test set: ablations, then mask robustness."""
    settings = report.settings
    tables = []
    if result.ablation_rows:
        refs = [r for r in settings.compare_to if r in result.ablation_rows]
        tables.append(("ablation", f"Ablations on {result.name}", result.ablation_rows, refs))
    robustness = result.robustness_rows(settings.reference)
    if robustness:
        refs = [settings.reference] if settings.reference in result.rows else []
        tables.append(("robustness", f"Mask robustness on {result.name}", robustness, refs))
    return tables


def _arrow(metric: str, settings: Settings, latex: bool = False) -> str:
    down = metric in settings.lower_is_better
    return ("$\\downarrow$" if down else "$\\uparrow$") if latex else ("↓" if down else "↑")


def _fmt(value: float, decimals: int, signed: bool = False) -> str:
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _value_text(cell: Cell, decimals: int) -> tuple[str, str]:
    mean = _fmt(cell.mean, decimals)
    return mean, "" if cell.std is None else _fmt(cell.std, decimals)


def _md_table(header: list[str], body: list[list[str]], numeric: bool = True) -> str:
    """A pipe table; ``numeric``: every column but the first right-aligned."""
    align = "---:|" if numeric else "---|"
    lines = ["| " + " | ".join(header) + " |", "|---|" + align * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def render_markdown(report: Report, plots: dict[str, list[Path]] | None = None) -> str:
    """The whole report as Markdown: per test set its tables (values, then Δ), plots, then left-out runs."""
    s = report.settings
    out = ["# Ablation report", "",
           f"Convention `{report.convention}`; mean ± std over seeds (sample std, n − 1), n = number of "
           f"seeds; best per column in **bold**; ↑ higher is better, ↓ lower is better.", ""]
    for result in report.sets:
        out += [f"## {result.name}", ""]
        for kind, title, rows, refs in _tables(report, result):
            out += [f"### {title}", ""]
            header = ["experiment", "n", *(f"{m} {_arrow(m, s)}" for m in result.metrics)]
            best = {m: best_rows(result, rows, m, s) for m in result.metrics}
            body = []
            for row in rows:
                cells = []
                for m in result.metrics:
                    mean, std = _value_text(result.cells[(row, m)], s.decimals)
                    text = f"{mean} ± {std}" if std else mean
                    cells.append(f"**{text}**" if row in best[m] else text)
                body.append([row, str(len(result.runs[row])), *cells])
            out += [_md_table(header, body), ""]
            for ref in refs:
                others = [r for r in rows if r != ref]
                if not others:
                    continue
                body = [[row, *(_fmt(delta(result, row, ref, m), s.decimals, signed=True)
                                for m in result.metrics)] for row in others]
                out += [f"Change against `{ref}` (difference of means):", "",
                        _md_table(["experiment", *(f"Δ{m}" for m in result.metrics)], body), ""]
            missing = [r for r in (s.compare_to if kind == "ablation" else [s.reference]) if r not in refs]
            if missing:
                out += [f"No `{'`, `'.join(missing)}` runs for {result.name}: no change against "
                        f"{'them' if len(missing) > 1 else 'it'}.", ""]
        for path in (plots or {}).get(result.name, []):
            out += [f"![{path.stem}]({path.name})", ""]
    if report.notes:
        out += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    out += ["## Left out", ""]
    if report.left_out:
        body = [[f"`{x.run}`", x.row, x.reason] for x in report.left_out]
        out += [_md_table(["run", "row", "reason"], body, numeric=False)]
    else:
        out += ["No run was left out."]
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _latex_tabular(header: list[str], body: list[list[str]], caption: str, label: str) -> str:
    return "\n".join([
        r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}", f"  \\label{{{label}}}",
        f"  \\begin{{tabular}}{{l{'c' * (len(header) - 1)}}}", r"    \toprule",
        "    " + " & ".join(header) + r" \\", r"    \midrule",
        *("    " + " & ".join(row) + r" \\" for row in body),
        r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""])


def render_latex(report: Report) -> str:
    """booktabs tables (``\\usepackage{booktabs}``): values with the best in bold, then the changes."""
    s = report.settings
    out = [f"% Ablation report, convention {report.convention}: mean $\\pm$ std over seeds. "
           "Needs \\usepackage{booktabs}.", ""]
    for result in report.sets:
        for kind, title, rows, refs in _tables(report, result):
            label = "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", f"{result.name}-{kind}").strip("-").lower()
            header = ["Experiment", "$n$", *(f"{latex_escape(m)} {_arrow(m, s, latex=True)}"
                                              for m in result.metrics)]
            best = {m: best_rows(result, rows, m, s) for m in result.metrics}
            body = []
            for row in rows:
                cells = []
                for m in result.metrics:
                    mean, std = _value_text(result.cells[(row, m)], s.decimals)
                    mean = f"\\textbf{{{mean}}}" if row in best[m] else mean
                    cells.append(f"{mean} $\\pm$ {std}" if std else mean)
                body.append([latex_escape(row), str(len(result.runs[row])), *cells])
            caption = (f"{latex_escape(title)}: mean $\\pm$ std over seeds "
                       f"({latex_escape(report.convention)} metrics); best in bold.")
            out.append(_latex_tabular(header, body, caption, label))
            for ref in refs:
                others = [r for r in rows if r != ref]
                if not others:
                    continue
                body = [[latex_escape(row), *(f"${_fmt(delta(result, row, ref, m), s.decimals, signed=True)}$"
                                              for m in result.metrics)] for row in others]
                out.append(_latex_tabular(
                    ["Experiment", *(f"$\\Delta${latex_escape(m)}" for m in result.metrics)], body,
                    f"{latex_escape(title)}: change of the mean against {latex_escape(ref)}.",
                    f"{label}-vs-{re.sub(r'[^A-Za-z0-9]+', '-', ref).lower()}"))
    return "\n".join(out)


def _csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def render_csv(report: Report) -> str:
    """One line per (test set, table, row): n, seeds and per metric mean, std, Δ against each of
    ``compare_to`` and ``reference`` (empty where that table has no such change), best (1/0)."""
    s = report.settings
    metrics = list(dict.fromkeys(m for r in report.sets for m in r.metrics))
    refs_all = list(dict.fromkeys([*s.compare_to, s.reference]))
    header = ["set", "table", "experiment", "n", "seeds"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", *(f"{m}_delta_{ref}" for ref in refs_all), f"{m}_best"]
    lines = []
    for result in report.sets:
        for kind, _, rows, refs in _tables(report, result):
            best = {m: best_rows(result, rows, m, s) for m in result.metrics}
            for row in rows:
                line: list[Any] = [result.name, kind, row, len(result.runs[row]),
                                   " ".join(str(x) for x in result.seeds(row))]
                for m in metrics:
                    if m not in result.metrics:
                        line += [""] * (3 + len(refs_all))
                        continue
                    cell = result.cells[(row, m)]
                    line += [_num(cell.mean), _num(cell.std)]
                    line += [_num(delta(result, row, ref, m)) if ref in refs else "" for ref in refs_all]
                    line.append(int(row in best[m]))
                lines.append(line)
    return _csv_text(header, lines)


def render_runs_csv(report: Report) -> str:
    """The per-run values behind the means (one line per test set and run)."""
    metrics = list(dict.fromkeys(m for r in report.sets for m in r.metrics))
    lines = [[result.name, row, run.seed, run.name, *(_num(run.sets[result.name].get(m)) for m in metrics)]
             for result in report.sets for row in result.rows for run in result.runs[row]]
    return _csv_text(["set", "experiment", "seed", "run", *metrics], lines)


def render_left_out_csv(report: Report) -> str:
    return _csv_text(["run", "row", "reason"], [[x.run, x.row, x.reason] for x in report.left_out])


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md / .tex / .csv, runs.csv, left_out.csv and the plots (atomic writes)."""
    out = Path(out_dir)
    plots: dict[str, list[Path]] = {}
    if report.settings.plots:
        from sgdfuse.orchestration.report_plots import write_plots  # matplotlib only when plotting

        plots = write_plots(report, out)
    files = {
        "markdown": atomic_write_text(out / "report.md", render_markdown(report, plots)),
        "latex": atomic_write_text(out / "report.tex", render_latex(report)),
        "csv": atomic_write_text(out / "report.csv", render_csv(report)),
        "runs": atomic_write_text(out / "runs.csv", render_runs_csv(report)),
        "left_out": atomic_write_text(out / "left_out.csv", render_left_out_csv(report)),
    }
    for paths in plots.values():
        files |= {p.stem: p for p in paths}
    return files


# --- entry point ---------------------------------------------------------------------------------------

def settings_from_config(cfg: Any) -> Settings:
    def tup(value: Any) -> tuple[str, ...]:
        return tuple(str(v) for v in (value or []))

    return Settings(metrics=tup(cfg.metrics), lower_is_better=tup(cfg.lower_is_better),
                    reference=str(cfg.reference), compare_to=tup(cfg.compare_to), order=tup(cfg.order),
                    experiments=None if cfg.experiments is None else tup(cfg.experiments),
                    convention=cfg.convention, decimals=int(cfg.decimals), ignore_keys=tup(cfg.ignore_keys),
                    plots=bool(cfg.plots))


def collect_runs(cfg: Any, api: Any = None) -> list[RunRecord]:
    """The runs of ``cfg.source``: local run folders, or W&B through ``api`` (default ``wandb.Api()``)."""
    if cfg.source == "local":
        return local_runs(cfg.local.dirs)
    if cfg.source == "wandb":
        if api is None:
            import wandb

            api = wandb.Api()
        filters = dict(cfg.wandb.filters) if cfg.wandb.filters else None
        return wandb_runs(api, cfg.wandb.project, list(cfg.wandb.sweeps or []), filters)
    raise ValueError(f"source={cfg.source!r}: use source=local or source=wandb")


def report_from_config(cfg: Any, out_dir: str | Path, api: Any = None) -> tuple[Report, dict[str, Path]]:
    """``report.py``: collect, screen, average, write; returns the report and the files written."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    report = make_report(collect_runs(cfg, api), settings_from_config(cfg))
    return report, write_report(report, out_dir)
