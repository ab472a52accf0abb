"""Reading a grid's finished runs: its plan, a run's result, whether it is current, a cell's
best run."""

from __future__ import annotations

import json
import os
from typing import Any

from ...config import from_dict
from ...core.io import read_json
from .plan import CompareConfig, Plan, Run, build_plan, canonical, first_difference
from .worker import RESULT_FILE


def grid_plan(folder: str, report: str = "compare.json") -> tuple[Plan, dict[str, Any]]:
    """The plan of a grid folder, from the config its report recorded (the folder may have
    moved since), and that report: what reads a grid without rerunning it starts here.
    Relative paths in the config (data, drift sets) are read from where the grid ran."""
    folder = os.path.abspath(folder)
    written = read_json(os.path.join(folder, report))
    # every cell: a grid run in stages (cells:) is read whole, as far as it got
    config = from_dict(CompareConfig, {**written["config"], "output_dir": folder,
                                       "cells": None, "first_runs": False})
    ran_in = _ran_in(folder, str(written["config"].get("output_dir") or ""))
    here = os.getcwd()
    try:
        if ran_in:
            os.chdir(ran_in)
        return build_plan(config), written
    finally:
        os.chdir(here)


def _ran_in(folder: str, recorded: str) -> str | None:
    """The folder `neft compare` ran in, when the grid still sits at the relative
    output_dir it was given (outputs/compare/x under /work/wt inside /work/wt)."""
    recorded = os.path.normpath(recorded)  # "" -> "."
    if recorded == "." or os.path.isabs(recorded) or recorded.startswith(".."):
        return None
    if folder.endswith(os.sep + recorded):
        return folder[: -len(recorded) - 1] or os.sep
    return None


def load_result(output_dir: str, run: Run) -> dict[str, Any] | None:
    """A run's result.json, or None while the run is unfinished (or its file unreadable)."""
    path = os.path.join(output_dir, run.folder, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


def current(plan: Plan, run: Run) -> dict[str, Any] | None:
    """The run's result when it was computed with the plan's settings (a setting added
    since, at its neutral value None, changes nothing: the runner's rule too)."""
    result = load_result(plan.config.output_dir, run)
    if result is None or first_difference(result.get("spec"), run.spec) is not None:
        return None
    return result


def best_run(plan: Plan, cell: str) -> Run | None:
    """The generation run of a front cell: its finished run with the lowest dev loss (the
    method's best-dev-loss point), scored on the test split. None until one has finished."""
    finished = [(result["dev_loss"], index, run) for index, run in enumerate(plan.runs)
                if run.kind == "cell" and run.cell == cell
                and (result := current(plan, run)) is not None
                and isinstance(result.get("dev_loss"), int | float)]
    if not finished:
        return None
    chosen = min(finished, key=lambda item: item[:2])[2]
    spec = {"kind": "generate", "of": chosen.folder, "of_spec": chosen.spec,
            "eval": chosen.spec["eval"], "test": chosen.spec["test"]}
    return Run("generate", cell, os.path.join("best", cell), canonical(spec), chosen.seed,
               chosen.learning_rate)
