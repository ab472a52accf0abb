"""Keep a grid's records in the repository, so that hours of runs outlive the machine.

    .venv/bin/python benchmarks/grid_records.py WT/outputs/compare/selection-en-de
        # -> benchmarks/results/grids/selection-en-de (replaced whole)
    mkdir -p outputs/compare && cp -r benchmarks/results/grids/selection-en-de outputs/compare/
        # on a fresh machine: `neft compare` then skips every recorded run

A run is finished when its folder holds result.json; the fronts and verdicts read only
result.json, points.json (per-record losses) and, for generation runs, eval.json, and the
grid's plan comes from its compare.json. Those files are copied; adapters, checkpoints and
logs are not (a grid's records are a few hundred KB). The reports and
`benchmarks/selection_study.py` / `evidence_summary.py` read the copy as they read the grid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
GRID_FILES = ("compare.json", "compare.md")
RUN_FILES = ("result.json", "points.json", "eval.json", "job.json")


def copy_records(grid: str, destination: str) -> int:
    """Copy the record files of `grid` into a new folder that replaces `destination`;
    returns how many finished runs it holds."""
    grid = os.path.abspath(grid)
    if not os.path.isfile(os.path.join(grid, "compare.json")):
        raise SystemExit(f"error: {grid} holds no compare.json; give a `neft compare` "
                         "output folder")
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".records-", dir=parent)
    finished = 0
    try:
        for name in GRID_FILES:
            if os.path.isfile(os.path.join(grid, name)):
                shutil.copy2(os.path.join(grid, name), staging)
        for folder, _, files in os.walk(grid):
            if "result.json" not in files:
                continue  # unfinished: nothing a rerun would keep
            target = os.path.join(staging, os.path.relpath(folder, grid))
            os.makedirs(target, exist_ok=True)
            for name in RUN_FILES:
                if name in files:
                    shutil.copy2(os.path.join(folder, name), target)
            finished += 1
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="a `neft compare` output folder (with compare.json)")
    parser.add_argument("--destination", default=None,
                        help="default: benchmarks/results/grids/<the grid's folder name>")
    args = parser.parse_args()
    name = os.path.basename(os.path.normpath(args.grid))
    destination = args.destination or os.path.join(HERE, "results", "grids", name)
    count = copy_records(args.grid, destination)
    print(f"{count} finished runs' records -> {os.path.relpath(destination)}")


if __name__ == "__main__":
    main()
