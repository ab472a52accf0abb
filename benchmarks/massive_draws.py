"""How often does the default's rule change a random draw? (issue 19). Leaving out the
massive-activation units changes nothing when a draw of random neurons holds none of them,
so the rule's gain depends on how often a draw holds one, and how strong.

    .venv/bin/python benchmarks/massive_draws.py [--draws 300] [--match_lora 8]

On the embedded SmolLM2-135M, nothing trained: each unit's mean |down_proj input| over the
model's own samples (what `neft select` measures without data), as a multiple of its
layer's median; then the random draws of seeds 1..DRAWS (and the screens' 1234-1236) at
LoRA r8's count, and which of those units each holds (its up_proj row or down_proj column).
The draw of a seed does not depend on the task: the screens' seed 1234 is one draw on
every task. Writes results/massive_draws.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import os

from neft.core.io import atomic_text, write_json
from neft.core.loading import load_model
from neft.core.neurons import layer_index
from neft.experiments.bench import machine
from neft.select import score_neurons
from neft.select.datadriven import base_samples
from neft.select.massive import DEFAULT_RATIO, SAMPLES, activation_ratios

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "smollm2-135m"
LEVELS = (DEFAULT_RATIO, 100.0, 200.0)  # the default's threshold, then stronger units only
SCREEN_SEEDS = (1234, 1235, 1236)


def held_units(chosen, units: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """The (layer, unit) pairs among ``units`` whose up_proj row or down_proj column the
    NeuronSet trains."""
    held = set()
    for module, _axis, index in chosen.items():
        layer = layer_index(module)
        held |= {(layer, int(u)) for u in index.tolist() if (layer, int(u)) in units}
    return sorted(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--match_lora", type=int, default=8)
    args = parser.parse_args()
    model, tokenizer = load_model(MODEL)
    pad_id = tokenizer.pad_token_id or 0
    scores = score_neurons(model, "random", seed=1234, progress=False)
    groups = scores.groups
    ratios = activation_ratios(model, groups, base_samples(model, *SAMPLES, 1234, pad_id),
                               pad_id)
    units = {(groups[i].layer, int(u)): float(r[u]) for i, r in ratios.items()
             for u in (r >= LEVELS[0]).nonzero().flatten().tolist()}
    budget = scores.budget(match_lora=args.match_lora)
    draws = []
    for seed in [*range(1, args.draws + 1), *SCREEN_SEEDS]:
        chosen = score_neurons(model, "random", seed=seed, progress=False).select(budget)
        draws.append({"seed": seed, "held": held_units(chosen, units)})
    counted = draws[:args.draws]
    shares = {level: sum(1 for d in counted if any(units[u] >= level for u in d["held"]))
              for level in LEVELS}
    where = machine()
    where = f"{where.get('cpu', 'CPU')}, {where['cpus']} cores, torch {where['torch']}"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    command = (f".venv/bin/python benchmarks/massive_draws.py --draws {args.draws} "
               f"--match_lora {args.match_lora}")
    write_json(os.path.join(HERE, "results", "massive_draws.json"), {
        "command": command, "machine": where, "date": stamp, "model": MODEL,
        "budget": budget.describe(), "units": [[*u, r] for u, r in sorted(units.items())],
        "draws_holding": {f"{level:g}": n for level, n in shares.items()},
        "draws": [{"seed": d["seed"], "held": [list(u) for u in d["held"]]} for d in draws]})
    lines = [f"# How often a random draw holds a massive-activation unit ({stamp})", "",
             f"`{command}` on {where}; model {MODEL}, budget {budget.describe()}, seed "
             f"1234's {SAMPLES[0]} samples of {SAMPLES[1]} tokens (what `neft select` "
             "measures without data). Nothing is trained.", "",
             "| layer | unit | mean \\|a\\| x layer median |", "|---|---|---|"]
    lines += [f"| {layer} | {unit} | {ratio:.0f} |" for (layer, unit), ratio
              in sorted(units.items(), key=lambda item: -item[1])]
    lines += ["", f"| units at least | units | draws of seeds 1..{args.draws} holding one |",
              "|---|---|---|"]
    lines += [f"| {level:g}x | {sum(r >= level for r in units.values())} | {n} "
              f"({n / args.draws:.0%}) |" for level, n in shares.items()]
    lines += ["", "| screen seed | massive units its draw holds (x median) |", "|---|---|"]
    lines += [f"| {d['seed']} | " + (", ".join(f"{layer}:{unit} ({units[(layer, unit)]:.0f}x)"
                                              for layer, unit in d["held"]) or "none") + " |"
              for d in draws[args.draws:]]
    with atomic_text(os.path.join(HERE, "results", "massive_draws.md")) as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
