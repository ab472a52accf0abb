"""`neft merge`: add a neft adapter's deltas into its base model, exactly, and save it."""

from __future__ import annotations

import argparse

from ...config import parse_bool
from ...core.export import merge


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge an adapter into its base model (W[R,:] += D, W[:,C] += D)",
        description="Write a plain transformers model with the adapter's deltas added. "
                    "Same as `neft export --format merged`.")
    parser.add_argument("--model", default=None,
                        help="base model (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", required=True,
                        help="adapter folder from `neft train`, or its Hub id")
    parser.add_argument("--output_dir", required=True, help="where the merged model goes")
    parser.add_argument("--trust_remote_code", type=parse_bool, nargs="?", const=True,
                        default=False, help="allow the base model's own code (true / false, "
                                            "as in neft train)")
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = merge(args.model, args.adapter, args.output_dir, args.overwrite,
                 trust_remote_code=args.trust_remote_code)
    print(f"merged model written to {path}")
    return 0
