"""`neft merge`: add a neft adapter's deltas into its base model, exactly, and save it."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from ...core.io import apply_umask, check_writable
from ...core.loading import load_adapter_base, load_model
from ...core.model import NeftModel
from ...errors import NeftError


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


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def check_output_dir(output_dir: str, overwrite: bool, inputs: list[str]) -> None:
    """Where the merged model may go. --overwrite replaces an earlier model folder, never
    the adapter or base being read, nor a folder of other files (nothing is lost)."""
    for source in inputs:
        if os.path.isdir(os.path.expanduser(source)) and _same_folder(output_dir, source):
            raise NeftError(f"output_dir {output_dir} is the folder being merged from; write "
                            "the merged model to a new folder")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NeftError(f"output_dir {output_dir} is a file; pass a folder for the merged model")
    check_writable(os.path.abspath(output_dir), "output_dir")  # its parent: staged beside it
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise NeftError(f"output_dir {output_dir} is not empty; pass --overwrite to "
                            "replace it")
        if not os.path.isfile(os.path.join(output_dir, "config.json")):
            raise NeftError(f"output_dir {output_dir} holds files that are not a model; "
                            "--overwrite replaces only an earlier merged model: choose "
                            "another folder")


def merge(model_name: str | None, adapter: str, output_dir: str, overwrite: bool = False) -> str:
    check_output_dir(output_dir, overwrite, [adapter] + ([model_name] if model_name else []))
    if model_name is None:
        model_name = NeftModel.saved_base_name(adapter)
        check_output_dir(output_dir, overwrite, [model_name])
        base, tokenizer = load_adapter_base(model_name, adapter)
    else:
        base, tokenizer = load_model(model_name)
    merged = NeftModel.from_pretrained(base, adapter).merge_and_unload()
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".neft-merge-", dir=parent)
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        apply_umask(staging)  # mkdtemp and safetensors make it private
        old = f"{staging}.old"
        if os.path.exists(output_dir):
            os.replace(output_dir, old)  # set aside, not deleted, until the new one is in
        os.replace(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def run(args: argparse.Namespace) -> int:
    path = merge(args.model, args.adapter, args.output_dir, args.overwrite)
    print(f"merged model written to {path}")
    return 0
