"""`neft export`: a neft adapter as an exact PEFT LoRA adapter, or merged into its base."""

from __future__ import annotations

import argparse

from ...config import parse_bool
from ...core.export import FORMATS, VLLM_RANKS, export


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export an adapter as an exact LoRA (for peft, vLLM, TGI) or merged",
        description="--format lora: a PEFT LoRA adapter folder equal to the neft adapter "
                    "(rank = neurons per module, no SVD, no loss). --format merged: the same "
                    "as `neft merge`.")
    parser.add_argument("--adapter", required=True,
                        help="neft adapter folder (`neft train`) or its Hub id")
    parser.add_argument("--format", default="lora", choices=FORMATS,
                        help="lora (default) or merged")
    parser.add_argument("--output_dir", required=True, help="where the export goes")
    parser.add_argument("--model", default=None,
                        help="base model (default: the adapter's base_model_name_or_path); "
                             "for lora only its config is read")
    parser.add_argument("--max_rank", type=int, default=None,
                        help="lora: pad every module's rank to this with zeros (an engine's "
                             f"fixed rank; vLLM: {', '.join(map(str, VLLM_RANKS))})")
    parser.add_argument("--trust_remote_code", type=parse_bool, nargs="?", const=True,
                        default=False, help="allow the base model's own code (true / false, "
                                            "as in neft train)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = export(args.adapter, args.output_dir, args.format, model=args.model,
                    max_rank=args.max_rank, overwrite=args.overwrite,
                    trust_remote_code=args.trust_remote_code)
    if report["format"] == "merged":
        print(f"merged model written to {report['output_dir']}")
        return 0
    ranks = (f"rank {report['max_rank']}" if report["min_rank"] == report["max_rank"]
             else f"ranks {report['min_rank']}-{report['max_rank']}")
    print(f"LoRA adapter written to {report['output_dir']}: {report['modules']} modules, "
          f"{ranks}, {report['bytes'] / 2**20:.2f} MB (neft adapter "
          f"{report['neft_bytes'] / 2**20:.2f} MB, x{report['bytes'] / report['neft_bytes']:.2f})")
    return 0
