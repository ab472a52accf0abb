"""`neft train`: one method (neft, random, lora, full, ft-inout) on one dataset."""

from __future__ import annotations

import argparse
import json

from ...config import add_dataclass_arguments, from_dict, given_values
from ...train import TrainConfig, train


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune selected neurons (or a baseline) with transformers' Trainer",
        description="Train NeFT or a baseline. Flags match Trainer/TRL names; --config "
                    "file.yaml may give any of them. Works under torchrun / accelerate launch.")
    add_dataclass_arguments(parser, TrainConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = given_values(TrainConfig, args)
    config = from_dict(TrainConfig, given)
    config.refuse_ignored(given)
    summary = train(config)
    shown = {k: summary[k] for k in ("method", "trainable_parameters", "global_step",
                                     "train_loss", "best_eval_loss", "wall_seconds",
                                     "peak_memory_mb", "interrupted")}
    print(json.dumps(shown, indent=2))
    return 130 if summary["interrupted"] else 0
