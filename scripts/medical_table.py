"""Medical fusion table: run ``evaluate.py`` on the three Harvard sets and print (or fill in) README rows.

    python scripts/medical_table.py --root /data/mif_real                     # avg and max rows
    python scripts/medical_table.py --root /data/mif_real --method checkpoint \\
        --checkpoint checkpoints/<experiment>/<run_id>/stage2_b/last.ckpt --masks none \\
        --label "released model, zero-shot" --replace-pending README.md

Each (set, method) runs ``python evaluate.py data=harvard_mri_<set> data.root=<root>/MRI_<SET> method=...``
into ``<out>/<SET>/<method>/`` (fused PNGs, metrics.csv, metrics.md, grid.png). The rows are printed as
Markdown; ``--replace-pending README.md`` also replaces that file's placeholder rows
``| MRI_<SET> | pending: <label> | ...`` with the measured ones. Arguments after ``--`` are passed to
evaluate.py as Hydra overrides (e.g. ``-- device=cuda``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file: import this checkout's package

from sgdfuse.atomic import atomic_write_text  # noqa: E402

#: set folder -> data config
SETS = {"MRI_CT": "harvard_mri_ct", "MRI_PET": "harvard_mri_pet", "MRI_SPECT": "harvard_mri_spect"}
#: the 8 standard metrics plus AG, in the README's order
METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def read_means(out: Path) -> dict[str, float]:
    """Mean metrics of one evaluated set in ``out``: ``metrics.json`` (``{"sets": {name: {"final": ...}}}``
    with one set, or a flat dict) when present, else the mean of the rows of ``metrics.csv``."""
    json_path = out / "metrics.json"
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        if "sets" in data:
            if len(data["sets"]) != 1:
                raise ValueError(f"{json_path} holds {len(data['sets'])} sets; expected one")
            data = next(iter(data["sets"].values()))["final"]
        return {k: float(v) for k, v in data.items()}
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{out / 'metrics.csv'} has no rows")
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0] if k != "name"}


def markdown_row(set_name: str, label: str, means: dict[str, float]) -> str:
    return f"| {set_name} | {label} | " + " | ".join(f"{means[m]:.4f}" for m in METRICS) + " |"


def run_evaluate(set_name: str, root: Path, method: str, out: Path, args: argparse.Namespace) -> Path:
    target = out / set_name / method
    command = [
        sys.executable, str(REPO / "evaluate.py"), f"data={SETS[set_name]}", f"data.root={root / set_name}",
        f"method={method}", f"masks={args.masks}", f"output_dir={target}", f"metrics=[{','.join(METRICS)}]",
    ]
    if args.checkpoint:
        command.append(f"checkpoint={args.checkpoint}")
    command += args.overrides
    print("+", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, cwd=REPO, stdout=sys.stderr)  # stdout: only the table rows
    return target


def replace_pending(readme: Path, rows: dict[str, str], label: str) -> None:
    """Swap the rows ``| <set> | pending: <label> |...`` of ``readme`` for the measured ``rows``."""
    lines = readme.read_text().splitlines(keepends=True)
    missing = set(rows)
    for i, line in enumerate(lines):
        for set_name, row in rows.items():
            if line.startswith(f"| {set_name} | pending: {label} |"):
                lines[i] = row + "\n"
                missing.discard(set_name)
    if missing:
        raise SystemExit(f"{readme}: no placeholder row '| <set> | pending: {label} |' for {sorted(missing)}")
    atomic_write_text(readme, "".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True,
                        help="folder holding MRI_CT/, MRI_PET/, MRI_SPECT/")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "medical")
    parser.add_argument("--method", action="append", choices=("avg", "max", "checkpoint"),
                        help="repeatable; default: avg and max")
    parser.add_argument("--checkpoint", help="a train.py checkpoint, for --method checkpoint")
    parser.add_argument("--masks", default="none", help="masks config group choice (default none)")
    parser.add_argument("--label", help="row label for --method checkpoint (default: the checkpoint path)")
    parser.add_argument("--sets", nargs="+", choices=tuple(SETS), default=list(SETS))
    parser.add_argument("--replace-pending", type=Path, metavar="README",
                        help="fill this file's 'pending: <label>' rows with the checkpoint rows")
    parser.add_argument("overrides", nargs="*", help="after --: Hydra overrides for evaluate.py")
    args = parser.parse_args(argv)
    methods = args.method or ["avg", "max"]
    if "checkpoint" in methods and not args.checkpoint:
        parser.error("--method checkpoint needs --checkpoint PATH")
    if args.replace_pending and (methods != ["checkpoint"] or not args.label):
        parser.error("--replace-pending fills checkpoint rows: use it with --method checkpoint alone and "
                     "--label")
    root = args.root.expanduser().resolve()
    checkpoint_rows: dict[str, str] = {}
    for set_name in args.sets:
        for method in methods:
            means = read_means(run_evaluate(set_name, root, method, args.out.resolve(), args))
            label = method
            if method == "checkpoint":
                label = f"{args.label or args.checkpoint} (masks: {args.masks})"
            row = markdown_row(set_name, label, means)
            if method == "checkpoint":
                checkpoint_rows[set_name] = row
            print(row)
    if args.replace_pending:
        replace_pending(args.replace_pending, checkpoint_rows, args.label)


if __name__ == "__main__":
    main()
