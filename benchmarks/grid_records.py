"""Keep a grid's records in the repository, so that hours of runs outlive the machine.

    .venv/bin/python benchmarks/grid_records.py WT/outputs/compare/selection-en-de
        # -> benchmarks/results/grids/selection-en-de (replaced whole)
    .venv/bin/python benchmarks/grid_records.py --restore benchmarks/results/grids/selection-en-de
        # -> outputs/compare/selection-en-de: `neft compare` then skips every recorded run

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
    grid, destination = os.path.abspath(grid), os.path.abspath(destination)
    if destination == grid or destination.startswith(grid + os.sep):
        raise SystemExit(f"error: {destination} lies inside the grid it would copy; choose "
                         "a folder outside it")
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
        old = None
        if os.path.isdir(destination):  # set aside, so that one of the two is always whole
            old = tempfile.mkdtemp(prefix=".records-old-", dir=parent)
            os.replace(destination, os.path.join(old, "records"))
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return finished


def restore_records(records: str, grid: str) -> int:
    """Copy recorded runs into a grid folder, each only where the grid has not finished it
    (an unfinished local run of it is replaced: the record is the finished one). Returns
    how many runs were restored."""
    restored = 0
    os.makedirs(grid, exist_ok=True)
    for name in GRID_FILES:
        source = os.path.join(records, name)
        if os.path.isfile(source) and not os.path.isfile(os.path.join(grid, name)):
            shutil.copy2(source, grid)
    for folder, _, files in os.walk(records):
        if "result.json" not in files:
            continue
        target = os.path.join(grid, os.path.relpath(folder, records))
        if os.path.isfile(os.path.join(target, "result.json")):
            continue  # finished here too: this machine's run stands
        staging = target + ".restoring"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(staging, target)
        restored += 1
    return restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="a `neft compare` output folder (with compare.json), or "
                                     "with --restore a records folder")
    parser.add_argument("--destination", default=None,
                        help="default: benchmarks/results/grids/<the grid's folder name>, or "
                             "with --restore outputs/compare/<its name>")
    parser.add_argument("--restore", action="store_true",
                        help="copy recorded runs back into a grid folder (runs it finished "
                             "itself are kept)")
    args = parser.parse_args()
    name = os.path.basename(os.path.normpath(args.grid))
    if args.restore:
        destination = args.destination or os.path.join("outputs", "compare", name)
        count = restore_records(args.grid, destination)
        print(f"{count} recorded runs restored -> {destination}")
        return
    destination = args.destination or os.path.join(HERE, "results", "grids", name)
    count = copy_records(args.grid, destination)
    print(f"{count} finished runs' records -> {os.path.relpath(destination)}")


if __name__ == "__main__":
    main()
