"""What each scorer ranks by (issue 19, "Diagnose"): on the embedded SmolLM2-135M and real
task data, the Spearman correlation of every neuron's score with 1/|w| and with its layer,
and where the neurons chosen at LoRA r8's count sit (layer bands, lowest-norm quartile).

    .venv/bin/python benchmarks/selection_diagnosis.py \
        --data ../shared/data/ddtp/translation/en-de --scorers fast-probe,movement,snip

Writes results/selection_diagnosis.{md,json,png}. Random neurons give the reference
values: correlations ~0, 25% in the lowest quartile, layer bands by pool size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

from neft.core.io import atomic_text, save_figure, write_json
from neft.core.loading import load_model
from neft.select import score_neurons
from neft.select.weights import by_module, logical_matrices, neuron_vectors

HERE = os.path.dirname(os.path.abspath(__file__))


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), float64."""
    values = values.double()
    order = torch.argsort(values, stable=True)
    ranked = torch.empty_like(values)
    ranked[order] = torch.arange(len(values), dtype=torch.float64)
    unique, inverse = torch.unique(values, return_inverse=True)
    if len(unique) < len(values):  # ties: the mean rank of each tied value
        sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranked)
        counts = torch.bincount(inverse, minlength=len(unique)).double()
        ranked = (sums / counts)[inverse]
    return ranked


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def neuron_table(model: torch.nn.Module, groups: list) -> dict[str, torch.Tensor]:
    """Per candidate neuron, in pool order: its norm, layer and kind index."""
    modules = by_module(groups)
    norms = [torch.empty(0)] * len(groups)
    for module, weight in logical_matrices(model, model, list(modules)):
        for i in modules[module]:
            norms[i] = neuron_vectors(weight, groups[i]).double().norm(dim=1)
    kinds = sorted({g.kind for g in groups})
    return {"norm": torch.cat(norms),
            "layer": torch.cat([torch.full((g.count,), g.layer) for g in groups]),
            "kind": torch.cat([torch.full((g.count,), kinds.index(g.kind)) for g in groups]),
            "kinds": kinds}


def lowest_quartile(table: dict[str, torch.Tensor]) -> torch.Tensor:
    """Whether each neuron is in the lowest norm quartile of its (layer, kind)."""
    low = torch.zeros(len(table["norm"]), dtype=torch.bool)
    for layer in table["layer"].unique():
        for kind in table["kind"].unique():
            mask = (table["layer"] == layer) & (table["kind"] == kind)
            if mask.any():
                cut = torch.quantile(table["norm"][mask], 0.25)
                low[mask] = table["norm"][mask] <= cut
    return low


def diagnose(scores, table, low, bands) -> dict:
    flat = torch.cat([s.double().flatten() for s in scores.scores])
    chosen_set = scores.select(scores.budget(match_lora=8))
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    offset = 0
    for group in scores.groups:
        picked = chosen_set.get(group.module, group.axis) if group.module in \
            chosen_set.modules() else torch.empty(0, dtype=torch.long)
        inside = picked[(picked >= group.start) & (picked < group.start + group.count)]
        chosen[offset + inside - group.start] = True
        offset += group.count
    result = {"spearman_inverse_norm": spearman(flat, 1 / table["norm"]),
              "spearman_layer": spearman(flat, table["layer"].double()),
              "chosen": int(chosen.sum()),
              "chosen_in_lowest_norm_quartile": float(low[chosen].double().mean())}
    for index, kind in enumerate(table["kinds"]):
        mask = table["kind"] == index
        result[f"spearman_inverse_norm_{kind}"] = spearman(flat[mask], 1 / table["norm"][mask])
        result[f"lowest_quartile_{kind}"] = float(low[chosen & mask].double().mean()) \
            if (chosen & mask).any() else None
    layers = table["layer"][chosen]
    result["bands"] = {name: float(((layers >= lo) & (layers <= hi)).double().mean())
                       for name, (lo, hi) in bands.items()}
    result["seconds"] = scores.metadata.get("wall_time_s")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="task data folder (its train split)")
    parser.add_argument("--task", default="translation")
    parser.add_argument("--scorers", default="random,magnitude,fast-probe,movement,"
                        "cosine-normfree,snip,gradient")
    parser.add_argument("--limit", type=int, default=400, help="training records to read")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--name", default="selection_diagnosis")
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    rows: dict[str, dict] = {}
    table = low = bands = None
    for scorer in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        start = time.perf_counter()
        data = args.data if scorer not in ("random", "magnitude", "cosine") else None
        scores = score_neurons(model, scorer, data=data, tokenizer=tokenizer, task=args.task,
                               max_length=args.max_length, limit=args.limit, seed=args.seed,
                               progress=False)
        if table is None:
            table = neuron_table(model, scores.groups)
            low = lowest_quartile(table)
            top = int(table["layer"].max())
            third = (top + 1) // 3
            bands = {f"{0}-{third - 1}": (0, third - 1),
                     f"{third}-{2 * third - 1}": (third, 2 * third - 1),
                     f"{2 * third}-{top}": (2 * third, top)}
        rows[scorer] = diagnose(scores, table, low, bands)
        rows[scorer]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{scorer}: {json.dumps({k: v for k, v in rows[scorer].items()})}", flush=True)
        write(args, rows, table, bands)  # after each scorer: a stopped run keeps its rows
    return 0


def write(args: argparse.Namespace, rows: dict, table: dict, bands: dict) -> None:
    made = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = " ".join([".venv/bin/python", "benchmarks/selection_diagnosis.py", *sys.argv[1:]])
    kinds = table["kinds"]
    header = ["scorer", "rho(score, 1/|w|)", *[f"rho {k}" for k in kinds], "rho(score, layer)",
              "chosen in lowest-norm quartile", *[f"lowest quartile {k}" for k in kinds],
              *[f"layers {b}" for b in bands], "seconds"]
    lines = [f"# What each scorer ranks by: SmolLM2-135M, {os.path.basename(args.data)}", "",
             f"Written {made} by `{command}` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}; seed {args.seed}; "
             f"{args.limit} training records at most, max_length {args.max_length}; chosen: "
             "the budget of LoRA r8 (4,240 neurons of 92,160).", "",
             "rho: Spearman correlation over all candidate neurons (per kind in its column). "
             "Lowest-norm quartile: of the chosen neurons, the share whose norm is in the "
             "lowest quarter of its layer and kind (random: 25%). Layers: the share of the "
             "chosen neurons in each band of blocks.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scorer, row in rows.items():
        cells = [scorer, f"{row['spearman_inverse_norm']:+.3f}",
                 *[f"{row[f'spearman_inverse_norm_{k}']:+.3f}" for k in kinds],
                 f"{row['spearman_layer']:+.3f}", f"{row['chosen_in_lowest_norm_quartile']:.0%}",
                 *["-" if row[f"lowest_quartile_{k}"] is None
                   else f"{row[f'lowest_quartile_{k}']:.0%}" for k in kinds],
                 *[f"{row['bands'][b]:.0%}" for b in bands], f"{row['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    out = os.path.join(HERE, "results", args.name)
    with atomic_text(out + ".md") as handle:
        handle.write("\n".join(lines) + f"\n\n![where the chosen neurons sit]({args.name}.png)\n")
    write_json(out + ".json", {"created": made, "command": command, "rows": rows,
                               "bands": list(bands)})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rows)
    axes[0].bar(names, [rows[n]["spearman_inverse_norm"] for n in names], color="C0")
    axes[0].set(title="Spearman(score, 1/|w|)", ylim=(-1, 1))
    axes[0].axhline(0, color="gray", lw=0.8)
    bottom = [0.0] * len(names)
    for index, band in enumerate(bands):
        values = [rows[n]["bands"][band] for n in names]
        axes[1].bar(names, values, bottom=bottom, color=f"C{index + 1}", label=f"layers {band}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes[1].set(title="where the chosen neurons sit (share)", ylim=(0, 1))
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    fig.tight_layout()
    save_figure(fig, out + ".png")
    print(f"wrote {out}.md, .json, .png")


if __name__ == "__main__":
    sys.exit(main())
