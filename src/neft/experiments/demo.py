"""`neft demo`: the whole method on the embedded model and real data, in minutes on a CPU.

SmolLM2-135M-Instruct (shipped in a PyPI package) learns English->German software
messages harvested from this machine's gettext catalogs. Neurons are chosen with the
default scorer (select.registry.DEFAULT_SCORER) at LoRA r8's parameter count; NeFT and
LoRA r8 train on the same data for the same steps; base, NeFT and LoRA are scored on
held-out messages.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from ..analyze.plots import save_figure
from ..config import from_dict
from ..core.io import atomic_text, check_output_files, check_output_folder, write_json
from ..core.loading import load_model
from ..data.records import load_records, write_jsonl
from ..data.sources import harvest_gettext
from ..errors import NeftError
from ..evaluate import evaluate_model, load_for_eval
from ..select.registry import DEFAULT_SCORER
from ..train import TrainConfig, train


@dataclass
class DemoConfig:
    output_dir: str = "outputs/demo"
    target_lang: str = "de"
    train_examples: int = 4000
    dev_examples: int = 64
    test_examples: int = 80
    max_new_tokens: int = 64  # test targets are single messages: p95 is ~40 tokens
    max_steps: int = 50  # with install, fits the 15 minutes of `make demo` on 2 cores
    batch_size: int = 8
    neft_learning_rate: float = 5e-4  # NeFT deltas want a higher lr than LoRA (design.md)
    lora_learning_rate: float = 2e-4
    lora_r: int = 8
    scorer: str = DEFAULT_SCORER
    seed: int = 1234
    overwrite: bool = False  # replace an earlier demo's report in output_dir


def prepare_data(config: DemoConfig) -> str:
    """Harvest en->target messages once; returns the folder with train/dev/test.jsonl."""
    folder = os.path.join(config.output_dir, "data")
    if all(os.path.isfile(os.path.join(folder, f"{s}.jsonl")) for s in ("train", "dev", "test")):
        return folder
    splits = harvest_gettext(config.target_lang, seed=config.seed)
    for split, records in splits.items():
        write_jsonl(os.path.join(folder, f"{split}.jsonl"), records)
    print("data: " + ", ".join(f"{s} {len(r):,}" for s, r in splits.items()), flush=True)
    return folder


def train_method(config: DemoConfig, data: str, method: str, **options: Any) -> dict[str, Any]:
    values = dict(model="smollm2-135m", method=method, train_file=data,
                  output_dir=os.path.join(config.output_dir, method), overwrite=True,
                  max_train_samples=config.train_examples,
                  max_eval_samples=config.dev_examples, max_steps=config.max_steps,
                  eval_steps=config.max_steps // 2, logging_steps=10,
                  per_device_train_batch_size=config.batch_size, seed=config.seed,
                  max_length=192, lora_r=config.lora_r, match_lora=config.lora_r,
                  scorer=config.scorer, save_total_limit=1)
    values.update(options)
    print(f"\n== training {method} ==", flush=True)
    return train(from_dict(TrainConfig, values))


def evaluate_all(config: DemoConfig, data: str) -> dict[str, dict[str, Any]]:

    records = load_records(os.path.join(data, "test.jsonl"), limit=config.test_examples,
                           task="translation")
    results = {}
    for name in ("base", "neft", "lora"):
        adapter = None if name == "base" else os.path.join(config.output_dir, name)
        model, tokenizer, _ = load_for_eval("smollm2-135m", adapter)
        print(f"\n== evaluating {name} on {len(records)} held-out messages ==", flush=True)
        results[name] = evaluate_model(model, tokenizer, records, task="translation",
                                       metrics=("bleu", "chrf", "placeholders"),
                                       max_new_tokens=config.max_new_tokens)
    return results


def plot(config: DemoConfig, runs: dict[str, dict[str, Any]],
         scores: dict[str, dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for name in runs:
        with open(os.path.join(config.output_dir, name, "training_log.json")) as handle:
            log = json.load(handle)
        for key, style in (("loss", "-"), ("eval_loss", "o--")):
            points = [(h["step"], h[key]) for h in log if key in h]
            if points:
                steps, values = zip(*points, strict=True)
                losses.plot(steps, values, style, label=f"{name} {key.replace('_', ' ')}")
    losses.set(xlabel="optimizer step", ylabel="loss", title="training and dev loss")
    losses.legend()
    names = list(scores)
    for offset, metric in ((-0.2, "bleu"), (0.2, "chrf")):
        bars.bar([i + offset for i in range(len(names))],
                 [scores[n]["scores"][metric] for n in names], width=0.4, label=metric.upper())
    bars.set_xticks(range(len(names)), names)
    bars.set(title=f"held-out en->{config.target_lang} messages", ylabel="score")
    bars.legend()
    fig.tight_layout()
    path = os.path.join(config.output_dir, "demo.png")
    save_figure(fig, path)
    return path


def table(runs: dict[str, dict[str, Any]], scores: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | trainable params | train s/step | BLEU | chrF | placeholders kept |",
             "|---|---|---|---|---|---|"]
    for name, result in scores.items():
        run = runs.get(name)
        params = f"{run['trainable_parameters']:,}" if run else "0"
        step = f"{run['train_seconds'] / max(run['global_step'], 1):.2f}" if run else "-"
        s = result["scores"]
        kept = s.get("placeholder_survival")
        kept_text = "-" if kept is None else f"{kept:.0f}%"
        lines.append(f"| {name} | {params} | {step} | {s['bleu']:.1f} | {s['chrf']:.1f} | "
                     f"{kept_text} |")
    return "\n".join(lines)


def run_demo(config: DemoConfig | None = None) -> str:
    config = config or DemoConfig()
    if config.max_steps < 2:
        raise NeftError("the demo needs max_steps >= 2")
    report_files = [os.path.join(config.output_dir, f"demo.{ext}") for ext in ("md", "json", "png")]
    check_output_folder(config.output_dir)
    check_output_files(report_files, config.overwrite)  # before 15 minutes of training
    start = time.perf_counter()
    load_model("smollm2-135m")  # builds the cached plain checkpoint on first use
    data = prepare_data(config)
    runs = {"neft": train_method(config, data, "neft", learning_rate=config.neft_learning_rate),
            "lora": train_method(config, data, "lora", learning_rate=config.lora_learning_rate)}
    scores = evaluate_all(config, data)
    text = table(runs, scores)
    picture = plot(config, runs, scores)
    minutes = (time.perf_counter() - start) / 60
    report = (f"# neft demo\n\nSmolLM2-135M-Instruct, en->{config.target_lang} gettext "
              f"messages, {config.max_steps} steps x batch {config.batch_size}, seed "
              f"{config.seed}; {config.test_examples} held-out test messages; "
              f"{minutes:.1f} minutes in all.\n\n{text}\n\n![demo](demo.png)\n")
    path = os.path.join(config.output_dir, "demo.md")
    with atomic_text(path) as handle:
        handle.write(report)
    write_json(os.path.join(config.output_dir, "demo.json"), {"runs": runs, "scores": scores},
               allow_nan=True)
    print("\n" + text + f"\n\nwritten: {path}, {picture} ({minutes:.1f} minutes)")
    return path
