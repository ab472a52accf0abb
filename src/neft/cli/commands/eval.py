"""`neft eval`: generate answers for a test set and score them."""

from __future__ import annotations

import argparse

from ...config import add_dataclass_arguments, from_dict, given_values, refuse_ignored
from ...core.io import write_json
from ...evaluate import EvalConfig, format_table, run_eval


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="greedy generation on a test set, scored with BLEU/chrF/ROUGE (+COMET)",
        description="Evaluate a base model, a full/merged model folder, or a base plus a neft "
                    "or LoRA adapter: generate from the training prompts, score the answers, "
                    "print a table and (with --output_file) write hypotheses and scores as "
                    "JSON. --config file.yaml may give any option.")
    add_dataclass_arguments(parser, EvalConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = given_values(EvalConfig, args)
    config = from_dict(EvalConfig, given)
    refuse_ignored(given, config.ignored_options())
    result = run_eval(config, write=False)
    print(format_table(result), flush=True)  # the scores first: the write can still fail
    if config.output_file:
        write_json(config.output_file, result)
        print(f"wrote {config.output_file}")
    return 0
