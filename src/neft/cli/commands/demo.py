"""`neft demo`: select, train NeFT and LoRA r8, evaluate them and the base model."""

from __future__ import annotations

import argparse

from ...config import add_dataclass_arguments, build_config
from ...experiments.demo import DemoConfig, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole method on the embedded model and gettext en->de messages",
        description="Runs with no arguments; every option below is optional.")
    add_dataclass_arguments(parser, DemoConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_demo(build_config(DemoConfig, args))
    return 0
