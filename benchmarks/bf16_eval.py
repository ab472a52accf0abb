"""What bfloat16 autocast does to evaluation on the embedded SmolLM2-135M: test loss and
drift of a trained adapter, float32 against bf16 autocast, with their times, and the drift
of the base in bf16 from itself in float32 (the rounding floor of every drift in bf16).

    .venv/bin/python benchmarks/bf16_eval.py --adapter RUN/train \
        --data ../shared/data/ddtp/translation/en-de --source_lang en --target_lang de

Writes results/bf16_eval.{md,json}. Compare grids may run in bf16 (train.bf16 and
eval.bf16) when the differences here are far below the differences between methods.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch

from neft.core.io import atomic_text, write_json
from neft.core.loading import load_model
from neft.core.precision import bf16_compute
from neft.data.records import load_records
from neft.data.sources import load_drift_sets
from neft.evaluate.likelihood import drift, target_loss
from neft.evaluate.load import load_for_eval

HERE = os.path.dirname(os.path.abspath(__file__))


class Autocast(torch.nn.Module):
    """A model whose forward runs under bf16 autocast, for the base's own rounding drift."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        with bf16_compute(True, self.model):
            return self.model(**inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--task", default="translation")
    parser.add_argument("--source_lang")
    parser.add_argument("--target_lang")
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--texts", type=int, default=40, help="texts of each drift set")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--name", default="bf16_eval")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    tuned, tokenizer, _ = load_for_eval(None, args.adapter)
    base, _ = load_model("smollm2-135m")
    records = load_records(args.data, split="test", task=args.task)[:args.records]
    sets = {name: texts[:args.texts] for name, texts in load_drift_sets(None).items()}
    rows = {}
    for bf16 in (False, True):
        start = time.perf_counter()
        with bf16_compute(bf16, tuned):
            row = {"test_loss": target_loss(tuned, tokenizer, records, args.task,
                                            source_lang=args.source_lang,
                                            target_lang=args.target_lang,
                                            max_length=args.max_length)["loss"],
                   "base_test_loss": target_loss(base, tokenizer, records, args.task,
                                                 source_lang=args.source_lang,
                                                 target_lang=args.target_lang,
                                                 max_length=args.max_length)["loss"]}
            for name, texts in sets.items():
                row[f"drift_{name}"] = drift(tuned, base, tokenizer, texts,
                                             max_length=args.max_length)["kl"]
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows["bf16" if bf16 else "float32"] = row
    floor = {name: drift(Autocast(base), base, tokenizer, texts, max_length=args.max_length)["kl"]
             for name, texts in sets.items()}
    result = {"adapter": args.adapter, "data": args.data, "records": len(records),
              "texts": args.texts, "rows": rows, "base_bf16_drift": floor,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")}
    names = list(rows["float32"])
    lines = [f"# bf16 autocast in evaluation ({result['date']})", "",
             f"`benchmarks/bf16_eval.py --adapter {args.adapter} --data {args.data}` on "
             f"{result['machine']}, torch {result['torch']}: {len(records)} test records, the "
             f"first {args.texts} texts of each drift set, max_length {args.max_length}.", "",
             "| compute | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[n]:.5f}" if n != "seconds"
                                                 else f"{row[n]:.1f} s" for n in names) + " |")
    lines += ["", "Drift of the base under bf16 autocast from itself in float32 (KL nats per "
              "token): " + ", ".join(f"{k} {v:.5f}" for k, v in floor.items()) + "."]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    write_json(os.path.join(HERE, "results", f"{args.name}.json"), result)
    with atomic_text(os.path.join(HERE, "results", f"{args.name}.md")) as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
