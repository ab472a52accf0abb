"""The selection study (issue 19): each cell of the selection screens against random
neurons, read as "does this selection beat random?", on every screen side by side.

    .venv/bin/python benchmarks/selection_study.py \
        WT/outputs/compare/selection-en-de WT/outputs/compare/selection-sum-en-en \
        --results benchmarks/results --overwrite

For every cell X and drift set, X's standard point against the reference cell's front
(random neurons in the screens): (a) dev loss at X's drift and (b) drift at X's dev loss,
with the paired record bootstrap (and the seed spread where there are seeds). A cell
beats random when at least one of these is resolved better and none resolved worse, on
every grid (a win read on the line from the base, or past the reference's last point,
is listed but not counted). Writes selection_study.{md,json,png} into the first grid's
folder (--results for another; --overwrite to replace earlier pages); a grid still
running is read as far as it got.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from typing import Any

from neft.core.io import atomic_text, save_figure, write_json
from neft.errors import NeftError
from neft.experiments.bench import machine
from neft.experiments.compare.plan import first_difference
from neft.experiments.compare.report import verdict_glance
from neft.experiments.compare.results import grid_plan, load_result
from neft.experiments.compare.verdicts import verdicts
from neft.experiments.compare.worker import FAILED_FILE

MEASURES = ("loss at matched drift", "drift at matched loss")


def against_reference(grid: str, reference: str | None = None,
                      confirm: bool = False) -> dict[str, Any]:
    """Every cell's front verdicts against the grid's reference cell (or `reference`, one
    of its cells), and its progress; with `confirm`, on the grid's confirm split."""
    if not os.path.isfile(os.path.join(grid, "compare.json")):
        raise NeftError(f"{grid} has no compare.json: pass a neft compare output_dir (it "
                        "writes compare.json when its first run has finished)")
    plan, written = grid_plan(grid)
    if confirm:
        split = plan.front["confirm_split"] if plan.front else None
        if not split:
            raise NeftError(f"{grid} ran without front.confirm_split: nothing to confirm on; "
                            "drop --confirm")
        plan = dataclasses.replace(plan, read_split=split)
    if reference is not None:
        if reference not in {c.name for c in plan.cells}:
            raise NeftError(f"{reference!r} is not a cell of {grid}; its cells: "
                            + ", ".join(c.name for c in plan.cells))
        plan = dataclasses.replace(plan, reference=reference)
    # the grid is read whole, as far as it got; its progress counts the cells last asked for
    asked = {n.strip() for n in str(written["config"].get("cells") or "").split(",")} - {""}
    counted = [run for run in plan.runs if not asked or run.kind != "cell" or run.cell in asked]
    # each run finished (with the config's settings), finished with others (e.g. other
    # drift texts on another machine: not read, and said why), failed, or not run yet
    done, changed, failed = 0, [], []
    for run in counted:
        result = load_result(plan.config.output_dir, run)
        difference = (first_difference(result.get("spec"), run.spec) if result is not None
                      else None)
        if result is not None and difference is None:
            done += 1
        elif difference:
            changed.append(difference)
        elif os.path.isfile(os.path.join(plan.config.output_dir, run.folder, FAILED_FILE)):
            failed.append(run.folder)
    found = verdicts(plan)
    rows: list[dict[str, Any]] = []
    if found is not None:
        for cell in (c.name for c in plan.cells if c.name != plan.reference):
            for name in found["sets"]:
                fronts = found["fronts"][name]
                if cell in fronts.cells and plan.reference in fronts.cells:
                    rows += fronts.compare(cell, plan.reference)
    return {"grid": os.path.basename(os.path.normpath(grid)), "reference": plan.reference,
            "split": plan.read_split or plan.config.test_split,
            "done": done, "planned": len(counted), "config_runs": len(plan.runs), "rows": rows,
            "changed": len(changed), "first_change": changed[0] if changed else None,
            "failed": failed,
            "records": _records(found),
            "sets": found["sets"] if found else []}


FEW_RECORDS = 30


def _records(found: dict[str, Any] | None) -> int | None:
    """How many test records each point scores (the record bootstrap resamples them)."""
    if not found:
        return None
    points = [p for cell in found["data"]["cells"].values() for p in cell]
    return len(points[0]["test"]["nll"]) if points else None


def tally(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Resolved wins and losses of each cell. A win read on the line from the base or on
    the reference's flat front past its last point is not measured (both lines flatter the
    cell), so it counts apart, as on_line; a loss read there counts (the true front lies
    below the line)."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        count = counts.setdefault(row["reference"], {"better": 0, "on_line": 0, "worse": 0,
                                                     "verdicts": 0})
        count["verdicts"] += 1
        count["worse"] += row["verdict"].startswith("worse")
        if row["verdict"].startswith("better"):
            count["on_line" if row.get("from_base") or row.get("past_front")
                  else "better"] += 1
    return counts


def winners(studies: list[dict[str, Any]]) -> list[str]:
    """Cells with a measured resolved win and no resolved loss on every grid."""
    tallies = [tally(study["rows"]) for study in studies]
    cells = set.intersection(*(set(t) for t in tallies)) if tallies else set()
    return sorted(c for c in cells if all(t[c]["better"] and not t[c]["worse"]
                                          for t in tallies))


def plot(studies: list[dict[str, Any]], path: str) -> None:
    """One panel per grid and measure: each cell's delta against random with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(studies), 2, figsize=(11, 1.2 + 0.45 * max(
        len(tally(s["rows"])) for s in studies) * len(studies)), squeeze=False)
    for study, row_axes in zip(studies, axes, strict=True):
        cells = list(tally(study["rows"]))
        for ax, measure in zip(row_axes, MEASURES, strict=True):
            for offset, name in enumerate(study["sets"]):
                for y, cell in enumerate(cells):
                    row = next((r for r in study["rows"] if r["reference"] == cell
                                and r["measure"] == measure and r["drift_set"] == name), None)
                    if row is None:
                        continue
                    if row["delta"] is None:  # the reference's front never gets there
                        ax.annotate(f"{name}: {row['verdict'].split(' (')[0]}, never reached",
                                    (0, y + 0.2 * offset - 0.1), fontsize=7, ha="right",
                                    va="center", color=f"C{offset}")
                        continue
                    if "interval" not in row:  # too few resampled fronts reach it
                        continue
                    low, high = row["interval"]
                    on_line = row.get("from_base") or row.get("past_front")
                    ax.errorbar(row["delta"], y + 0.2 * offset - 0.1, fmt="o", ms=4,
                                xerr=[[row["delta"] - low], [high - row["delta"]]],
                                color=f"C{offset}", mfc="none" if on_line else f"C{offset}",
                                label=name if y == 0 else None)
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_yticks(range(len(cells)), cells, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"{study['grid']}: {measure}", fontsize=9)
            ax.set_xlabel(f"cell - {study['reference']} (below 0: the cell is better)",
                          fontsize=8)
        row_axes[0].legend(fontsize=7, title="drift set", title_fontsize=7)
    fig.text(0.5, 0.005, "hollow: read on the line from the base or past the reference's "
             "last point (a win read there is not counted)", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path)


def markdown(studies: list[dict[str, Any]], command: str, made: str, name: str) -> str:
    host = machine()
    references = sorted({study["reference"] for study in studies})
    against = ", ".join(f"`{r}`" for r in references)
    lines = [f"# Selection study: each cell against {against}", "",
             f"Written {made} by `{command}` on {host.get('cpu', 'this machine')} "
             f"({host['cpus']} CPUs, torch {host['torch']}). Each row is the cell's standard "
             f"point against the front of {against}; "
             "delta is the cell minus the reference (negative: the cell reaches a lower loss "
             "at the same drift, or drifts less for the same loss); resolved only when the "
             "95% interval excludes 0.", ""]
    for study in studies:
        state = ("complete" if study["done"] >= study["planned"]
                 else "unfinished: verdicts may move")
        more = study["config_runs"] - study["planned"]
        asked = f" of the cells last run ({more} more in its config)" if more > 0 else ""
        lines += [f"## {study['grid']}", "",
                  f"{study['done']} of {study['planned']} runs{asked} finished ({state}); "
                  f"loss on the `{study['split']}` split, against `{study['reference']}`.", ""]
        if study.get("records") is not None and study["records"] < FEW_RECORDS:
            lines += [f"Each point scores {study['records']} records only: a bootstrap over so "
                      "few understates the spread, so read these verdicts as a smoke test, not "
                      f"evidence (use {FEW_RECORDS} or more; a few hundred resolve well).", ""]
        if study.get("failed"):
            first = study["failed"][0]
            lines += [f"{len(study['failed'])} runs failed at their last attempt (first: "
                      f"`{first}`, its `{FAILED_FILE}` and `log.txt` say why); `neft compare` "
                      "tries them again.", ""]
        if study.get("changed"):
            lines += [f"{study['changed']} finished runs were made with other settings than "
                      f"the config's now, and are not read (first: {study['first_change']}); "
                      "drift texts harvested on another machine differ, for one: read the "
                      "grid where it ran, or rerun those runs (`neft compare "
                      "--recompute_changed`).", ""]
        if not study["rows"]:
            lines += ["No verdicts yet.", ""]
            continue
        lines += [*verdict_glance(study["rows"], study["sets"], by="reference"), "",
                  "| cell | resolved better | better, read on a line (not counted) | "
                  "resolved worse | verdicts |", "|---|---|---|---|---|"]
        for cell, count in tally(study["rows"]).items():
            lines.append(f"| {cell} | {count['better']} | {count['on_line']} | "
                         f"{count['worse']} | {count['verdicts']} |")
        lines.append("")
    found = winners(studies)
    lines += ["## Beats the reference on every grid", "",
              (", ".join(f"`{c}`" for c in found) if found else "No cell: none has a resolved "
               "win and no resolved loss against the reference on every grid."),
              "", f"![each cell against {', '.join(references)}]({name}.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="+", help="selection screen folders (with compare.json)")
    parser.add_argument("--results", default=None,
                        help="folder for the pages (default: the first grid's folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace pages of the same name already there")
    parser.add_argument("--name", default=None,
                        help="the pages' name (default: selection_study, with -confirm or "
                             "-vs-REFERENCE appended for those readings)")
    parser.add_argument("--reference", default=None,
                        help="read every cell against this cell instead of the grid's reference "
                             "(e.g. random-avoid-lora8)")
    parser.add_argument("--confirm", action="store_true",
                        help="read the grids' confirm split (front.confirm_split, e.g. test) "
                             "instead of the split the screen chose on")
    args = parser.parse_args()
    made = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    command = "benchmarks/selection_study.py " + " ".join(
        os.path.basename(os.path.normpath(g)) for g in args.grids)
    if args.reference:
        command += f" --reference {args.reference}"
    if args.confirm:
        command += " --confirm"
    if args.name:
        command += f" --name {args.name}"
    else:
        args.name = "selection_study" + ("-confirm" if args.confirm else "") + (
            f"-vs-{args.reference}" if args.reference else "")
    base = os.path.join(args.results or args.grids[0], args.name)
    try:
        there = [base + ext for ext in (".md", ".json", ".png") if os.path.exists(base + ext)]
        if there and not args.overwrite:
            raise NeftError(f"{there[0]} already exists; pass --overwrite to replace it or "
                            "--name / --results for other pages")
        studies = [against_reference(grid, args.reference, args.confirm)
                   for grid in args.grids]
    except NeftError as error:
        parser.exit(2, f"selection_study.py: error: {error}\n")
    text = markdown(studies, command, made, args.name)
    with atomic_text(base + ".md") as handle:
        handle.write(text)
    write_json(base + ".json", {"created": made, "command": command, "machine": machine(),
                                "grids": studies, "beats_reference": winners(studies)})
    if any(s["rows"] for s in studies):
        plot([s for s in studies if s["rows"]], base + ".png")
    print(text)


if __name__ == "__main__":
    main()
