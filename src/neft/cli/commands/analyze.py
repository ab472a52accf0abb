"""`neft analyze`: the paper's neuron analyses (section 6) as tools.

    neft analyze distribution a.safetensors b.safetensors --output_dir outputs/analyze
    neft analyze overlap a.safetensors b.safetensors c.safetensors
    neft analyze utilization --model smollm2-135m --adapter outputs/neft --data DIR
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ...analyze import (
    analyze_utilization,
    distribution,
    format_distribution,
    format_overlap,
    label_sets,
    overlap_matrices,
    plot_distribution,
    plot_overlap,
)
from ...core.io import check_output_files, check_output_folder, write_json
from .select import _target_modules

DEFAULT_OUTPUT = os.path.join("outputs", "analyze")


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sets", nargs="+", metavar="SET",
                        help="NeuronSet files (neft select) or neft adapter folders (neft train)")
    parser.add_argument("--labels", nargs="+", metavar="NAME",
                        help="one name per set (default: the file names)")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT,
                        help=f"where the .json and .png go (default {DEFAULT_OUTPUT})")
    _add_overwrite(parser)


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier results of this analysis in --output_dir")


def _outputs(output_dir: str, name: str, exts: tuple[str, ...], overwrite: bool) -> list[str]:
    """The files an analysis writes, checked before the work: an earlier result is
    replaced only with --overwrite, and an unwritable folder fails now, not after it."""
    check_output_folder(output_dir)
    paths = [os.path.join(output_dir, f"{name}.{ext}") for ext in exts]
    check_output_files(paths, overwrite)
    return paths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="neuron analyses: distribution, overlap, utilization",
        description="The paper's neuron analyses: where selected neurons sit, how neuron "
                    "sets overlap, and neuron utilization and how fine-tuning reorders it.")
    kinds = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    dist = kinds.add_parser(
        "distribution", help="neurons per layer and kind, for several sets side by side",
        description="Count each set's neurons per layer and per kind (up rows, down columns, "
                    "...); print a table, write distribution.json and distribution.png.")
    _add_sets(dist)
    dist.set_defaults(func=run_distribution)

    overlap = kinds.add_parser(
        "overlap", help="pairwise overlap and Jaccard of neuron sets (the paper's Table 6)",
        description="Share of each set's neurons also in each other set (the paper's overlap) "
                    "and the Jaccard similarity; print both matrices, write overlap.json and "
                    "overlap.png.")
    _add_sets(overlap)
    overlap.set_defaults(func=run_overlap)

    util = kinds.add_parser(
        "utilization", help="each neuron's utilization and rank; with two models, rank change",
        description="Score every neuron by the paper's utilization: the maximum Pearson "
                    "correlation between its weight vector and the mean hidden state of each "
                    "preceding layer over --data. With --adapter (base vs base + adapter) or "
                    "--reference (a second model or merged checkpoint): rank change per "
                    "neuron, mean |rank change| per utilization percentile (the paper's "
                    "Figure 2) and the strongly affected / suppressed / indirectly affected "
                    "counts. Writes utilization.json, .safetensors (per neuron) and .png.")
    util.add_argument("--model", help="model name or path (default: the base an --adapter "
                                      "recorded)")
    second = util.add_mutually_exclusive_group()
    second.add_argument("--adapter", help="neft or LoRA adapter folder (or its Hub id): "
                                          "compare model with model + adapter")
    second.add_argument("--reference", help="second model or merged checkpoint folder")
    util.add_argument("--data", required=True, help="evaluation data: file or folder of splits")
    util.add_argument("--split", default="test", help="split of a folder (default test)")
    util.add_argument("--task", default="translation")
    util.add_argument("--template", default="auto", help="prompt template as in training")
    util.add_argument("--source_lang")
    util.add_argument("--target_lang")
    util.add_argument("--max_samples", type=int, help="use the first N records")
    util.add_argument("--max_length", type=int, default=256)
    util.add_argument("--batch_size", type=int, default=8)
    util.add_argument("--neurons", help="NeuronSet of the trained neurons, for 'indirectly "
                                        "affected' (a neft --adapter tells it by itself)")
    util.add_argument("--threshold", type=int, help="|rank change| that counts as strongly "
                                                    "affected (default: the paper's 100,000 of "
                                                    "704,512, scaled to the pool)")
    util.add_argument("--buckets", type=int, default=10, help="utilization percentile buckets")
    util.add_argument("--include_gate", action="store_true", help="gate_proj rows too")
    util.add_argument("--target_modules", type=_target_modules, default=None,
                      help="candidate modules and axes, e.g. mlp.fc_in=rows,mlp.fc_out=cols")
    util.add_argument("--dtype", help="model dtype: float32, bfloat16, float16 or auto")
    util.add_argument("--output_dir", default=DEFAULT_OUTPUT,
                      help=f"where the results go (default {DEFAULT_OUTPUT})")
    util.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_overwrite(util)
    util.set_defaults(func=run_utilization)


def _report(name: str, result: dict[str, Any], text: str,
            plot: Callable[[dict[str, Any], str], None], paths: list[str]) -> int:
    """Print the table, write ``<name>.json`` and ``<name>.png``."""
    print(text)
    write_json(paths[0], result)
    plot(result, paths[1])
    print("wrote " + ", ".join(paths))
    return 0


def run_distribution(args: argparse.Namespace) -> int:
    paths = _outputs(args.output_dir, "distribution", ("json", "png"), args.overwrite)
    result = distribution(label_sets(args.sets, args.labels))
    return _report("distribution", result, format_distribution(result), plot_distribution,
                   paths)


def run_overlap(args: argparse.Namespace) -> int:
    paths = _outputs(args.output_dir, "overlap", ("json", "png"), args.overwrite)
    result = overlap_matrices(label_sets(args.sets, args.labels))
    return _report("overlap", result, format_overlap(result), plot_overlap, paths)


def run_utilization(args: argparse.Namespace) -> int:
    _outputs(args.output_dir, "utilization", ("json", "safetensors", "png"), args.overwrite)
    result = analyze_utilization(
        args.data, args.model, adapter=args.adapter, reference=args.reference,
        neurons=args.neurons, split=args.split, task=args.task, template=args.template,
        source_lang=args.source_lang, target_lang=args.target_lang,
        max_samples=args.max_samples, max_length=args.max_length, batch_size=args.batch_size,
        include_gate=args.include_gate, target_modules=args.target_modules,
        threshold=args.threshold, buckets=args.buckets, dtype=args.dtype,
        progress=not args.quiet)
    print(result.format())
    print("wrote " + ", ".join(result.save(args.output_dir)))
    return 0
