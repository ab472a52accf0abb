"""Collect the evidence and selection grids into benchmarks/results: each grid's report
(compare.md, .json and plots, rendered from the grid's runs by this tree's code) under the
grid's name, and evidence_summary.md with every grid's progress and verdicts side by side.

    .venv/bin/python benchmarks/evidence_summary.py WT/outputs/compare/evidence-en-de ...

A grid still running is collected as far as it got; its progress line says so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import tempfile

from neft.core.io import atomic_text, read_json
from neft.experiments.compare.report import verdict_glance, write_report
from neft.experiments.compare.results import grid_plan

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {"compare.md": ".md", "compare.json": ".json", "compare.png": ".png",
         "compare-front.png": "-front.png"}


def collect(grid: str, results: str) -> list[str]:
    """Render the grid's report with this tree's code (the grid's own folder untouched) and
    file it under the grid's name; the summary lines for it."""
    name = os.path.basename(os.path.normpath(grid))
    plan, written = grid_plan(grid)
    with tempfile.TemporaryDirectory() as rendered:
        write_report(plan, into=rendered, command=f"{written['command']}; rendered by "
                     "benchmarks/evidence_summary.py")
        report = read_json(os.path.join(rendered, "compare.json"))
        for source, suffix in FILES.items():
            path = os.path.join(rendered, source)
            if not os.path.isfile(path):
                continue
            target = os.path.join(results, name + suffix)
            if source == "compare.md":
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                text = text.replace("(compare-front.png)", f"({name}-front.png)")
                text = text.replace("(compare.png)", f"({name}.png)")
                with atomic_text(target) as handle:
                    handle.write(text)
            else:
                shutil.copyfile(path, target)
    done = len([r for r in report["runs"] if r.get("kind") in ("base", "cell")])
    planned = len(plan.runs)
    lines = [f"## {name}", "",
             f"[{name}.md]({name}.md), written {report['created']} by `{report['command']}`; "
             f"{done} of {planned} training/base runs finished"
             + (" (complete)." if done >= planned else " (still running: verdicts may move)."),
             ""]
    rows = (report.get("fronts") or {}).get("verdicts") or []
    if not rows:
        return lines + ["No verdicts yet.", ""]
    reference = rows[0]["reference"]
    sets = (report.get("fronts") or {}).get("drift_sets") or []
    return lines + [f"Against {reference}; the intervals are in [{name}.md]({name}.md).", "",
                    *verdict_glance(rows, sets), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="+", help="grid output folders (with compare.json)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    made = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    lines = ["# Evidence and selection grids: progress and verdicts", "",
             f"Collected {made} by `benchmarks/evidence_summary.py`. Delta is the reference "
             "minus the other cell (lower is better for loss and drift, higher for generation "
             "scores); a verdict is resolved only when its 95% interval excludes 0. What the "
             "verdicts mean per task: [README.md](README.md).", ""]
    for grid in args.grids:
        if os.path.isfile(os.path.join(grid, "compare.json")):
            lines += collect(grid, args.results)
    with atomic_text(os.path.join(args.results, "evidence_summary.md")) as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
