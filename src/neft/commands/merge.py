"""`neft merge`: add a neft adapter's deltas into its base model, exactly, and save it."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from ..errors import NeftError
from ..model import NeftModel
from ..models import load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge an adapter into its base model (W[R,:] += D, W[:,C] += D)",
        description="Write a plain transformers model with the adapter's deltas added.")
    parser.add_argument("--model", default=None,
                        help="base model (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", required=True, help="adapter folder from `neft train`")
    parser.add_argument("--output_dir", required=True, help="where the merged model goes")
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir")
    parser.set_defaults(func=run)


def merge(model_name: str | None, adapter: str, output_dir: str, overwrite: bool = False) -> str:
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise NeftError(f"output_dir {output_dir} is not empty; pass --overwrite to replace it")
    if model_name is None:
        model_name = NeftModel.saved_base_name(adapter)
    base, tokenizer = load_model(model_name)
    merged = NeftModel.from_pretrained(base, adapter).merge_and_unload()
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".neft-merge-", dir=parent)
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def run(args: argparse.Namespace) -> int:
    path = merge(args.model, args.adapter, args.output_dir, args.overwrite)
    print(f"merged model written to {path}")
    return 0
