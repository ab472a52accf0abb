"""Massive-activation units and drift (issue 19): how much of a selection's drift comes
from the few MLP units whose activation dwarfs the rest of their layer?

    PYTHONPATH=src .venv/bin/python benchmarks/massive_units.py \
        WT/outputs/compare/evidence-sum-en-en [--ratio 40] [--texts 32] [--records 64]

GRID is a finished evidence grid (its cells' adapters are read, nothing is trained).
1. The base model's mean |activation| at each down_proj input unit over manual-page text;
   a unit is massive when that is at least RATIO x its layer's median.
2. For each seeded random and NeFT run: which massive units its set trains, its drift
   on both general-text sets and its dev loss, then the same with the deltas of those
   units (their up_proj row and down_proj column) set to zero.
Writes results/massive_units.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
from typing import Any

import torch

from neft import NeftModel
from neft.core.io import atomic_text, write_json
from neft.core.loading import load_model
from neft.data import load_records
from neft.data.sources import load_drift_sets
from neft.evaluate.likelihood import drift, target_loss
from neft.experiments.bench import machine

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "smollm2-135m"


def unit_activations(model: torch.nn.Module, tokenizer: Any, texts: list[str]
                     ) -> dict[int, torch.Tensor]:
    """Layer -> mean |input| of each down_proj unit over the texts' tokens."""
    found: dict[int, torch.Tensor] = {}
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                      max_length=128)
    keep = batch["attention_mask"].bool()

    def record(layer: int):
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            found[layer] = inputs[0].detach().abs()[keep].mean(0)
        return hook

    hooks = [block.mlp.down_proj.register_forward_pre_hook(record(index))
             for index, block in enumerate(model.model.layers)]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return found


def massive(activations: dict[int, torch.Tensor], ratio: float) -> dict[int, list[int]]:
    units = {}
    for layer, values in activations.items():
        over = (values >= ratio * values.median()).nonzero().flatten().tolist()
        if over:
            units[layer] = over
    return units


def zero_units(model: NeftModel, units: dict[int, list[int]]) -> list[str]:
    """Set the deltas of these units (up_proj row, down_proj column) to zero."""
    hit = []
    for path, layer in model.neft_layers():
        index = int(path.split(".layers.")[1].split(".")[0])
        if index not in units:
            continue
        rows, cols = (t.clone() for t in layer.get_deltas())
        for unit in units[index]:
            for j in (layer.neft_rows == unit).nonzero().flatten().tolist():
                rows[j] = 0
                hit.append(f"{index}.{path.rsplit('.', 1)[1]}[{unit}]")
            for j in (layer.neft_cols == unit).nonzero().flatten().tolist():
                cols[:, j] = 0
                hit.append(f"{index}.{path.rsplit('.', 1)[1]}[{unit}]")
        layer.set_deltas(rows, cols)
    return hit


def measure(model: torch.nn.Module, base: torch.nn.Module, tokenizer: Any,
            sets: dict[str, list[str]], records: list[dict], task: dict[str, Any]
            ) -> dict[str, float]:
    out = {"dev_loss": target_loss(model, tokenizer, records, **task)["loss"]}
    for name, texts in sets.items():
        out[name] = drift(model, base, tokenizer, texts, max_length=128)["kl"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--ratio", type=float, default=40.0)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--records", type=int, default=64)
    args = parser.parse_args()
    first = sorted(glob.glob(os.path.join(args.grid, "cells", "neft-lora8-lr*-s1234")))[0]
    with open(os.path.join(first, "result.json")) as handle:
        spec = json.load(handle)["spec"]
    train = spec["train"]
    task = {k: train[k] for k in ("task", "source_lang", "target_lang", "max_length")}
    base, tokenizer = load_model(MODEL)
    base.eval()
    sets = {name: texts[:args.texts] for name, texts in load_drift_sets(None).items()}
    records = load_records(spec["test"]["data"], split="dev")[:args.records]
    activations = unit_activations(base, tokenizer, sets["manpages"])
    units = massive(activations, args.ratio)
    table = {layer: [(u, float(activations[layer][u]),
                      float(activations[layer][u] / activations[layer].median()))
                     for u in found] for layer, found in units.items()}
    runs = []
    for cell in ("random-lora8", "neft-lora8"):
        for folder in sorted(glob.glob(os.path.join(args.grid, "cells", f"{cell}-lr*-s*"))):
            with open(os.path.join(folder, "result.json")) as handle:
                result = json.load(handle)
            seeded = glob.glob(os.path.join(args.grid, "cells",
                                            f"{cell}-lr{result['learning_rate']:g}-s1235"))
            if not seeded:
                continue  # only the rate that ran three seeds
            tuned = NeftModel.from_pretrained(load_model(MODEL)[0],
                                              os.path.join(folder, "train")).eval()
            trained = measure(tuned, base, tokenizer, sets, records, task)
            hit = zero_units(tuned, units)
            zeroed = measure(tuned, base, tokenizer, sets, records, task)
            runs.append({"run": os.path.basename(folder), "massive_units_trained": hit,
                         "trained": trained, "zeroed": zeroed})
            print(json.dumps(runs[-1]), flush=True)
    where = machine()
    where = f"{where.get('cpu', 'CPU')}, {where['cpus']} cores, torch {where['torch']}"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    command = ("PYTHONPATH=src .venv/bin/python benchmarks/massive_units.py "
               f"{args.grid} --ratio {args.ratio:g} --texts {args.texts} "
               f"--records {args.records}")
    write_json(os.path.join(HERE, "results", "massive_units.json"),
               {"command": command, "machine": where, "date": stamp, "ratio": args.ratio,
                "massive": table, "runs": runs})
    lines = [f"# Massive-activation units and drift ({stamp})", "",
             f"`{command}` on {where}; model {MODEL}, {args.texts} texts per general set, "
             f"the first {args.records} dev records. Massive: mean |down_proj input| at "
             f"least {args.ratio:g}x the layer's median on manual-page text.", "",
             "| layer | unit | mean \\|a\\| | x median |", "|---|---|---|---|"]
    lines += [f"| {layer} | {u} | {a:.1f} | {r:.0f} |" for layer, found in table.items()
              for u, a, r in found]
    lines += ["", "| run | massive units it trains | dev loss | drift manpages | drift licenses "
              "| zeroed: dev loss | drift manpages | drift licenses |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        t, z = run["trained"], run["zeroed"]
        lines.append(f"| {run['run']} | {', '.join(run['massive_units_trained']) or '-'} | "
                     f"{t['dev_loss']:.4f} | {t['manpages']:.4f} | {t['licenses']:.4f} | "
                     f"{z['dev_loss']:.4f} | {z['manpages']:.4f} | {z['licenses']:.4f} |")
    with atomic_text(os.path.join(HERE, "results", "massive_units.md")) as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
