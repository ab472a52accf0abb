"""`neft compare`: a grid of methods at matched budgets, trained, evaluated, tabulated."""

from __future__ import annotations

import argparse
import dataclasses

from ...config import _base_type, add_dataclass_arguments, build_config
from ...errors import NeftError
from ...experiments.compare import CompareConfig, build_plan, run_compare


def _flag_fields() -> type:
    """CompareConfig's scalar options as a dataclass: the lists and mappings (methods,
    train, eval, lr_sweep, seeds) are YAML only."""

    fields = [(f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(CompareConfig)
              if _base_type(f.type) not in (list, dict)]
    return dataclasses.make_dataclass("CompareFlags", fields)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="methods at matched trainable-parameter budgets: train, evaluate, "
                        "table + JSON + plot",
        description="Run a grid of methods (NeFT at several budgets, LoRA, full FT, "
                    "FT-in|out, random neurons) on one task with the same data, steps and "
                    "seeds, each learning rate chosen by a short sweep on dev loss; evaluate "
                    "all on the test split and write compare.md, compare.json and "
                    "compare.png. Resumable: finished runs are skipped. The grid is given "
                    "by --config compare.yaml (see benchmarks/compare/); flags override its "
                    "scalar options.")
    add_dataclass_arguments(parser, _flag_fields())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if not args.config:
        raise NeftError("neft compare needs --config compare.yaml (the grid: data, seeds, "
                        "methods, lr_sweep); see benchmarks/compare/ddtp-en-de.yaml")
    outcome = run_compare(build_plan(build_config(CompareConfig, args)))
    if outcome["failed"]:
        print(f"neft compare: {len(outcome['failed'])} runs failed or were blocked "
              f"({', '.join(outcome['failed'][:4])}{', ...' if len(outcome['failed']) > 4 else ''}"
              "); see their log.txt, then rerun the same command to retry only those")
        return 1
    return 0
