"""`neft select`: score neurons and write a NeuronSet file, or combine existing sets.

    neft select --model smollm2-135m --scorer gradient --data DIR --percent 6 --output s.safetensors
    neft select --model M --scorer cosine --reference FT_DIR --match_lora 8 --output s.safetensors
    neft select --union a.safetensors b.safetensors --output u.safetensors
    neft select --transfer a.safetensors --model OTHER --output t.safetensors
"""

from __future__ import annotations

import argparse

from ...config import finite_float, parse_options
from ...core.io import check_output_file
from ...errors import NeftError
from ...select import (
    QUOTAS,
    SCORERS,
    format_summary,
    intersect_sets,
    open_model,
    select_neurons,
    transfer_set,
    union_sets,
)
from ...select.massive import DEFAULT_AVOID
from ...select.registry import DEFAULT_SCORER


def _target_modules(text: str) -> dict[str, str]:
    """'mlp.fc_in=rows,mlp.fc_out=cols' -> {'mlp.fc_in': 'rows', 'mlp.fc_out': 'cols'}."""
    pairs = [item.partition("=") for item in text.split(",") if item]
    if not pairs or any(not sep for _, sep, _ in pairs):
        # ArgumentTypeError, so that argparse shows this message, not "invalid value".
        raise argparse.ArgumentTypeError(f"{text!r}: write module=axis pairs, e.g. "
                                         "mlp.fc_in=rows,mlp.fc_out=cols")
    named = [module for module, _, _ in pairs]
    twice = next((m for m in named if named.count(m) > 1), None)
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r} names {twice} twice: give each module once "
                                         f"(both axes: {twice}=rows+cols)")
    return {module: axis for module, _, axis in pairs}


def _defaults_of(knob: str) -> str:
    """'probe 200, fast-probe 20, gradient 24': each scorer's default of one knob."""
    return "default " + ", ".join(f"{s.name} {s.defaults[knob]:g}" if isinstance(
        s.defaults[knob], float) else f"{s.name} {s.defaults[knob]}"
        for s in SCORERS.values() if knob in s.defaults)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select", help="choose the neurons to train (writes a NeuronSet file)",
        description="Score every candidate neuron (MLP in-rows and out-columns) and keep a "
                    "budget of the best; or take the union/intersection of sets, or transfer "
                    "a set to another model with the same shapes.")
    parser.add_argument("--output", required=True, help="NeuronSet file to write (.safetensors)")
    parser.add_argument("--model", help="model name or path (smollm2-135m = the embedded one)")
    parser.add_argument("--scorer", choices=list(SCORERS), default=DEFAULT_SCORER,
                        help="; ".join(f"{s.name}: {s.help}" if s.help else s.name
                                       for s in SCORERS.values()).replace("%", "%%"))
    budget = parser.add_argument_group("budget (exactly one)")
    budget.add_argument("--neurons", type=int)
    budget.add_argument("--percent", type=finite_float,
                        help="%% of ALL model parameters (the paper's)")
    budget.add_argument("--params", type=int, help="trainable parameters")
    budget.add_argument("--match_lora", "--match-lora", type=int, metavar="R",
                        help="as many parameters as LoRA rank R")
    budget.add_argument("--lora_target_modules", default=None,
                        help="comma-separated LoRA modules for --match_lora "
                             "(default: all linear layers but lm_head)")
    parser.add_argument("--quota", choices=(*QUOTAS, "none"), default=None,
                        help="rank per layer, per module kind, or per (layer, kind) instead of "
                             "one global ranking (the paper; none)")
    parser.add_argument("--layers", default=None,
                        help="select only in these blocks: A-B, 3,5,7, upper:N or lower:N "
                             "(the budget unchanged)")
    parser.add_argument("--avoid", default=DEFAULT_AVOID,
                        help="leave out massive (or massive:R): the units whose activation on "
                             "--data (without it: the model's own samples) is R x their "
                             f"layer's median (R 40); none leaves nothing out (default: "
                             f"{DEFAULT_AVOID or 'none'})")
    parser.add_argument("--reference", help="fine-tuned checkpoint (folder or .safetensors) for "
                                            "cosine/reversed")
    parser.add_argument("--data", help="task data for probe/fast-probe/gradient (file or folder "
                                       "with train.jsonl)")
    parser.add_argument("--task", default="translation")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="use the first N records")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (gradient: batches); " + _defaults_of("steps"))
    parser.add_argument("--learning_rate", type=finite_float, default=None,
                        help=_defaults_of("learning_rate"))
    parser.add_argument("--per_device_train_batch_size", "--batch_size", dest="batch_size",
                        type=int, default=None, help="batch size; " + _defaults_of("batch_size"))
    parser.add_argument("--scorer_options", type=parse_options, default=None,
                        metavar="K=V,...",
                        help="any knob of the scorer, by name: " + "; ".join(
                            f"{s.name}: {', '.join(s.defaults)}" for s in SCORERS.values()
                            if s.defaults))
    parser.add_argument("--target_modules", type=_target_modules, default=None,
                        help="candidate modules and axes, e.g. mlp.fc_in=rows,mlp.fc_out=cols "
                             "(rows+cols: both; default: the MLP preset found in the model)")
    parser.add_argument("--include_gate", action="store_true", help="gate_proj rows too")
    sets = parser.add_mutually_exclusive_group()
    sets.add_argument("--union", nargs="+", metavar="SET", help="union of NeuronSet files")
    sets.add_argument("--intersection", nargs="+", metavar="SET",
                      help="intersection of NeuronSet files")
    sets.add_argument("--transfer", metavar="SET",
                      help="apply a NeuronSet to --model (same shapes) and rewrite its fingerprint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists (default: refuse)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Before any scoring: a probe can take an hour, and --output may be anyone's file.
    check_output_file(args.output, args.overwrite, "output", example="neurons.safetensors")
    if args.union or args.intersection:
        combine = union_sets if args.union else intersect_sets
        neurons = combine(*(args.union or args.intersection))
    elif args.transfer:
        if not args.model:
            raise NeftError("--transfer needs --model, the model to apply the set to")
        neurons = transfer_set(args.transfer, open_model(args.model)[0])
    else:
        if not args.model:
            raise NeftError("--model is required to select neurons (e.g. --model smollm2-135m)")
        targets = args.lora_target_modules.split(",") if args.lora_target_modules else None
        neurons = select_neurons(
            args.model, args.scorer, neurons=args.neurons, percent=args.percent,
            params=args.params, match_lora=args.match_lora, lora_target_modules=targets,
            quota=args.quota, layers=args.layers, avoid=args.avoid, reference=args.reference,
            data=args.data,
            task=args.task,
            max_length=args.max_length, limit=args.limit, seed=args.seed,
            target_modules=args.target_modules, include_gate=args.include_gate,
            steps=args.steps, learning_rate=args.learning_rate, batch_size=args.batch_size,
            restore=False, progress=not args.quiet, scorer_options=args.scorer_options)
    neurons.save(args.output)
    print(format_summary(neurons))
    print(f"wrote {args.output}")
    return 0

