"""Collect the evidence and selection grids into benchmarks/results: each grid's compare.md,
.json and plots under the grid's name, and evidence_summary.md with every grid's progress
and verdicts side by side (the numbers exactly as each grid's compare.json has them).

    .venv/bin/python benchmarks/evidence_summary.py WT/outputs/compare/evidence-en-de ...

A grid still running is collected as far as it got; its progress line says so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil

from neft.config import from_dict
from neft.core.io import atomic_text, read_json
from neft.experiments.compare.plan import CompareConfig, build_plan

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {"compare.md": ".md", "compare.json": ".json", "compare.png": ".png",
         "compare-front.png": "-front.png"}


def planned_runs(config: dict) -> int:
    """Runs the grid's config lays out (cells x seeds x rates, and the base)."""
    return len(build_plan(from_dict(CompareConfig, config)).runs)


def collect(grid: str, results: str) -> list[str]:
    name = os.path.basename(os.path.normpath(grid))
    report = read_json(os.path.join(grid, "compare.json"))
    for source, suffix in FILES.items():
        path = os.path.join(grid, source)
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
    planned = planned_runs(report["config"])
    lines = [f"## {name}", "",
             f"[{name}.md]({name}.md), written {report['created']} by `{report['command']}`; "
             f"{done} of {planned} training/base runs finished"
             + (" (complete)." if done >= planned else " (still running: verdicts may move)."),
             ""]
    rows = (report.get("fronts") or {}).get("verdicts") or []
    if not rows:
        return lines + ["No verdicts yet.", ""]
    lines += ["| reference | other | measure | drift set | at | delta | 95% interval | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        interval = row.get("interval")
        span = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "-"
        at = row.get("at")
        lines.append(f"| {row['reference']} | {row['other']} | {row['measure']} | "
                     f"{row.get('drift_set', '-')} | "
                     f"{'-' if at is None else f'{at:.4f}'} | "
                     f"{'-' if row['delta'] is None else format(row['delta'], '+.4f')} | {span} | "
                     f"{row['verdict']} |")
    return lines + [""]


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
