"""Print the README's results tables from ``metrics.json`` files (evaluate.py or a run's ``test/``).

    python scripts/results_table.py avg=outputs/real/avg/metrics.json \\
        "ours, Stage I=checkpoints/full/<id>/test/metrics.json:stage1" \\
        "ours, final=checkpoints/full/<id>/test/metrics.json"

Each argument is ``LABEL=PATH[:OUTPUT]`` (OUTPUT defaults to ``final``). One Markdown table per test set,
rows in argument order, the best value of each column in bold; sets a row lacks are left out of it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def read_row(spec: str) -> tuple[str, dict[str, dict[str, float]]]:
    label, _, where = spec.partition("=")
    path, _, output = where.partition(":")
    if not label or not path:
        raise SystemExit(f"{spec!r}: expected LABEL=PATH[:OUTPUT]")
    summary = json.loads(Path(path).read_text())
    sets = {name: result[output or "final"] for name, result in summary["sets"].items()
            if (output or "final") in result}
    if not sets:
        raise SystemExit(f"{path} has no output {output or 'final'!r} in any set")
    return label, sets


def table(set_name: str, rows: list[tuple[str, dict[str, dict[str, float]]]], decimals: int) -> str:
    rows = [(label, sets[set_name]) for label, sets in rows if set_name in sets]
    best = {m: max(values[m] for _, values in rows) for m in METRICS}
    lines = [f"**{set_name}**", "", "| method | " + " | ".join(METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for label, values in rows:
        cells = [f"{values[m]:.{decimals}f}" for m in METRICS]
        cells = [f"**{c}**" if values[m] == best[m] else c for c, m in zip(cells, METRICS, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="LABEL=PATH[:OUTPUT]")
    parser.add_argument("--decimals", type=int, default=3)
    args = parser.parse_args()
    rows = [read_row(spec) for spec in args.rows]
    sets = list(dict.fromkeys(name for _, s in rows for name in s))
    print("\n\n".join(table(name, rows, args.decimals) for name in sets))


if __name__ == "__main__":
    main()
