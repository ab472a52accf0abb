"""`neft bench`: step time and memory of neft against floor, neft-mask, LoRA, ft-inout, full."""

from __future__ import annotations

import argparse

from ...config import add_dataclass_arguments, build_config
from ...experiments.bench import BenchConfig, main


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="time and memory of every training mode, each in its own process",
        description="Measure median step time, tokens/s, peak memory, optimizer state and "
                    "adapter size per mode; print a table, write JSON, markdown and a plot.")
    add_dataclass_arguments(parser, BenchConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return main(build_config(BenchConfig, args))
