"""The comparison's outputs: compare.md (table), compare.json, compare.png.

One row per cell: its trainable parameters, learning rate (and how it was chosen), each
score as mean ± sample standard deviation over seeds with the per-seed values, time and
peak memory. The plot is quality against trainable parameters on a log axis, one marker
per method, error bars across seeds: the shape of the paper's Table 7.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import sys
from typing import Any

from ...core.io import atomic_text, save_figure, write_json
from ..bench import machine
from .plan import Plan
from .results import current
from .verdicts import RESAMPLES, verdicts
from .worker import finite

MARKDOWN_FILE = "compare.md"
JSON_FILE = "compare.json"
REPORT_PLOT_FILE = "compare.png"
NAMES = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
         "rougeL": "ROUGE-L", "placeholder_survival": "placeholders %", "comet": "COMET"}
MARKERS = {"neft": "o", "lora": "s", "random": "v", "full": "*", "ft-inout": "D"}



def _precision(bf16: object) -> str:
    """Training's bf16 setting in words (train.bf16: auto, true or false)."""
    if bf16 in (True, "true"):
        return "bfloat16 autocast (float32 weights and optimizer)"
    if bf16 in (False, "false"):
        return "float32"
    return "bfloat16 autocast on GPUs that support it, else float32"

def format_lr(value: float | None) -> str:
    """5e-4, 2.5e-4: the way learning rates are written in papers."""
    if value is None:
        return "-"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_count(value: int | None) -> str:
    if value is None:
        return "-"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return str(value)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def _sweep(plan: Plan, owner: str) -> dict[str, Any] | None:
    results = [current(plan, run) for run in plan.sweeps.get(owner, [])]
    if not results or any(r is None for r in results):
        return None
    losses = {format_lr(r["learning_rate"]): r.get("dev_loss") for r in results}
    finite = [r for r in results if r.get("dev_loss") is not None]
    chosen = min(finite, key=lambda r: (r["dev_loss"], r["learning_rate"]))["learning_rate"] \
        if finite else None
    return {"swept_on": owner, "steps": plan.cell(owner).sweep.steps,
            "seed": plan.cell(owner).sweep.seed, "dev_loss": losses, "chosen": chosen}


def collect(plan: Plan) -> dict[str, Any]:
    """Every cell's aggregate over its finished seeds, plus the sweeps and the runs."""
    rows, runs = [], []
    base = None
    for run in plan.runs:
        result = current(plan, run)
        if result is not None:
            runs.append({"folder": run.folder, **{k: v for k, v in result.items()
                                                  if k != "spec"}})
        if run.kind == "base" and result is not None:
            base = {"scores": result.get("scores", {}), "eval_seconds": result.get("eval_seconds"),
                    "peak_memory_mb": result.get("peak_memory_mb"),
                    "at_token_cap": _at_cap(result)}
    for cell in plan.cells:
        standard = cell.seeded_rate
        cell_runs = [r for r in plan.runs if r.kind == "cell" and r.cell == cell.name
                     and (standard is None or r.learning_rate == standard)]  # one run a seed
        done = {r.seed: res for r in cell_runs if (res := current(plan, r)) is not None}
        first = next(iter(done.values()), {})
        scores = {}
        for metric in plan.metrics:
            per_seed = {seed: res["scores"].get(metric) for seed, res in done.items()
                        if res.get("scores", {}).get(metric) is not None}
            scores[metric] = {"per_seed": per_seed, **_stats(list(per_seed.values()))}
        losses = {seed: res["dev_loss"] for seed, res in done.items()
                  if res.get("dev_loss") is not None}
        times = [(res.get("selection_seconds") or 0) + (res["train"].get("wall_seconds") or 0)
                 + (res.get("eval_seconds") or 0) for res in done.values()]
        total = first.get("total_parameters")
        trainable = first.get("trainable_parameters")
        series = cell.method
        if cell.method == "neft":
            series += " (file)" if cell.train.get("neurons") else f" ({cell.train['scorer']})"
        rows.append({
            "cell": cell.name, "method": cell.method, "series": series, "budget": cell.budget,
            "trainable_parameters": trainable, "total_parameters": total,
            "trainable_percent": 100 * trainable / total if trainable and total else None,
            "learning_rate": first.get("learning_rate"), "lr_source": cell.lr_source,
            "lr_sweep": _sweep(plan, cell.sweep.cell) if cell.sweep else None,
            "seeds": cell.seeds, "seeds_done": sorted(done), "scores": scores,
            "dev_loss": {"per_seed": losses, **_stats(list(losses.values()))},
            "at_token_cap": {seed: _at_cap(res) for seed, res in done.items()},
            "seconds_per_run": statistics.fmean(times) if times else None,
            "selection_seconds": first.get("selection_seconds"),
            "peak_memory_mb": max((_peak(r) for r in done.values()),
                                  default=None),
            "memory_scope": first.get("memory_scope"),
            "training": {str(seed): res.get("training") for seed, res in done.items()},
        })
    sweeps = {owner: _sweep(plan, owner) for owner in plan.sweeps}
    scored = {r["test_samples"] for r in runs if r.get("test_samples")}
    return {"rows": rows, "base": base, "sweeps": sweeps, "runs": runs,
            "test_samples": scored.pop() if len(scored) == 1 else None}  # None: runs differ


def _peak(result: dict[str, Any]) -> float:
    """The run's peak memory, or its training's when that was higher: a training reused
    from an earlier run (only the scoring was redone) keeps its own peak."""
    return max(result.get("peak_memory_mb") or 0,
               (result.get("train") or {}).get("peak_memory_mb") or 0)


def _at_cap(result: dict[str, Any]) -> int | None:
    """How many test answers ran to max_new_tokens (often a loop repeating a phrase)."""
    return (result.get("generation") or {}).get("unfinished")


def _cap_text(counts: list[int | None], total: int | None) -> str:
    known = [str(c) for c in counts if c is not None]
    return f"{', '.join(known)} of {total}" if known and total else "-"


def _score_text(entry: dict[str, Any], digits: int = 2) -> str:
    if not entry["n"]:
        return "-"
    text = f"{entry['mean']:.{digits}f}"
    if entry["n"] > 1:
        seeds = ", ".join(f"{v:.{digits}f}" for v in entry["per_seed"].values())
        text += f" ± {entry['std']:.{digits}f} ({seeds})"
    return text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _settings_text(plan: Plan, data: dict[str, Any]) -> str:
    config, first = plan.config, plan.cells[0].train
    limit = "all" if config.max_train_samples is None else f"first {config.max_train_samples:,}"
    test = ("all" if config.max_test_samples is None
            else f"the first {config.max_test_samples:,}")
    if data["test_samples"] and data["test_samples"] != config.max_test_samples:
        test += f" ({data['test_samples']:,})"
    scored = f"{test} records are scored"
    if plan.front is not None:  # the fronts' test loss reads its own count
        samples = plan.front["loss_samples"]
        scored = (f"{test} records are generated for (max_test_samples), "
                  + ("all" if samples is None else f"the first {samples:,}")
                  + " scored for the fronts' test loss (front.loss_samples),")
    accumulation = first["gradient_accumulation_steps"]
    batch = first["per_device_train_batch_size"] * accumulation
    langs = "->".join(x for x in (config.source_lang, config.target_lang) if x)
    lines = [
        f"- model `{config.model}`; task {config.task}{f' {langs}' if langs else ''}; data "
        f"`{config.data}`",
        f"- train split `{config.train_split}` ({limit} records); dev split "
        f"`{config.dev_split}` (first {config.max_dev_samples} records) for dev loss: best "
        f"checkpoint and the lr sweep; test split `{config.test_split}`: {scored} "
        + ("and never used to choose anything" if config.test_split != config.dev_split else
           "the dev split itself, which also picks the checkpoints"),
        f"- every run: {first['max_steps']} steps x batch {batch}, max_length "
        f"{first['max_length']}, dev loss every {first['eval_steps']} steps; seeds "
        f"{sorted({s for c in plan.cells for s in c.seeds})}",
        f"- decoding: greedy, max_new_tokens {plan.eval.get('max_new_tokens', 256)}, "
        f"no_repeat_ngram_size {plan.eval.get('no_repeat_ngram_size', 0)}",
        f"- compute: training {_precision(first.get('bf16'))}; evaluation "
        f"{'bfloat16 autocast' if plan.eval.get('bf16') else 'float32'}",
    ]
    swept = [c for c in plan.cells if c.sweep]
    if swept:
        sweep = swept[0].sweep
        lines.append(f"- learning rate: per {sweep.per}, a short run of {sweep.steps} steps at "
                     "each value (first seed), the value with the lowest dev loss is used for "
                     "every seed")
    return "\n".join(lines)


def provenance(command: str | None = None) -> dict[str, Any]:
    """When, by which command and on what machine the table was written (its runs may be
    older: each run's own time is in its result.json)."""

    return {"written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(["neft", *sys.argv[1:]]), "machine": machine()}


def markdown(plan: Plan, data: dict[str, Any], made: dict[str, Any]) -> str:
    metrics = plan.metrics
    header = ["cell", "method", "budget", "trainable params", "lr", "seeds", "dev loss",
              *[NAMES.get(m, m) for m in metrics], "answers at token cap", "time / run",
              "peak memory"]
    total = data["test_samples"]
    box = made["machine"]
    where = (f"{box['cpu']}, {box['cpus']} cores" + (f", {box['gpu']}" if "gpu" in box else "")
             + f", torch {box['torch']}, Python {box['python']}")
    lines = [f"# neft compare: {plan.config.task} on "
             f"{os.path.basename(str(plan.config.data).rstrip('/'))}", "",
             f"Written {made['written']} by `{made['command']}` on {where}.", "",
             _settings_text(plan, data), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if data["base"]:
        scores = data["base"]["scores"]
        values = [f"{scores[m]:.2f}" if scores.get(m) is not None else "-" for m in metrics]
        lines.append("| base | - | - | 0 | - | - | - | " + " | ".join(values)
                     + f" | {_cap_text([data['base']['at_token_cap']], total)}"
                     + f" | {_duration(data['base']['eval_seconds'])} | "
                     f"{data['base']['peak_memory_mb'] or 0:,.0f} MB |")
    for row in data["rows"]:
        params = format_count(row["trainable_parameters"])
        if row["trainable_percent"] is not None:
            params += f" ({row['trainable_percent']:.3g}%)"
        lr = format_lr(row["learning_rate"])
        if row["learning_rate"] is not None:
            lr += f" ({row['lr_source']})"
        seeds = f"{len(row['seeds_done'])}/{len(row['seeds'])}"
        memory = f"{row['peak_memory_mb']:,.0f} MB" if row["peak_memory_mb"] else "-"
        lines.append("| " + " | ".join([row["cell"], row["method"], row["budget"], params, lr,
                                        seeds, _score_text(row["dev_loss"], 3),
                                        *[_score_text(row["scores"][m]) for m in metrics],
                                        _cap_text(list(row["at_token_cap"].values()), total),
                                        _duration(row["seconds_per_run"]), memory]) + " |")
    scope = next((r["memory_scope"] for r in data["rows"] if r["memory_scope"]), None)
    lines += ["", "Scores and dev loss: mean ± sample standard deviation over seeds, per-seed "
              "values in brackets. Dev loss: the kept checkpoint's (the lowest of the run's dev "
              "evaluations, which choose it). Answers at token cap: per seed, test answers that "
              "ran to max_new_tokens (often a loop repeating a phrase). Time / run: neuron "
              "selection + training + test generation, mean over seeds. Peak memory: "
              f"{scope or 'per run'}, max over seeds (it includes NeFT's neuron selection in the "
              "run that made it)."]
    sweeps = {k: v for k, v in data["sweeps"].items() if v}
    if sweeps:
        lines += ["", "## Learning-rate sweep (dev loss)", "", "| swept on | used by | dev loss "
                  "per lr | chosen |", "|---|---|---|---|"]
        for owner, sweep in sweeps.items():
            users = ", ".join(c.name for c in plan.cells if c.sweep and c.sweep.cell == owner)
            losses = " · ".join(f"{lr}: {loss:.4f}" if loss is not None else f"{lr}: diverged"
                                for lr, loss in sweep["dev_loss"].items())
            lines.append(f"| {owner} | {users} | {losses} | {format_lr(sweep['chosen'])} |")
    if scored_by_generation(plan):
        lines += ["", f"![quality against trainable parameters]({REPORT_PLOT_FILE})", ""]
    return "\n".join(lines)


def scored_by_generation(plan: Plan) -> bool:
    """False for a fronts-only grid (front.generate: none): no quality plot to draw."""
    return plan.front is None or plan.front["generate"] != "none"


def plot(plan: Plan, data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [plan.config.plot_metric] if plan.config.plot_metric else plan.metrics[:3]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(5.5 * max(len(metrics), 1), 4.2),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        for series in dict.fromkeys(r["series"] for r in data["rows"]):
            method = series.split(" ")[0]
            points = sorted(((r["trainable_parameters"], r["scores"][metric], r["budget"])
                             for r in data["rows"] if r["series"] == series
                             and r["scores"][metric]["n"] and r["trainable_parameters"]),
                            key=lambda p: p[0])
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1]["mean"] for p in points]
            errors = [p[1]["std"] or 0.0 for p in points]
            ax.errorbar(xs, ys, yerr=errors, marker=MARKERS.get(method, "o"), capsize=3,
                        markersize=8 if method == "full" else 6, label=series)
            for x, y, (_, _, budget) in zip(xs, ys, points, strict=True):
                ax.annotate(budget, (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, alpha=0.7)
        if data["base"] and data["base"]["scores"].get(metric) is not None:
            ax.axhline(data["base"]["scores"][metric], color="gray", linestyle="--",
                       label="base model")
        ax.set_xscale("log")
        ax.set(xlabel="trainable parameters", ylabel=NAMES.get(metric, metric),
               title=NAMES.get(metric, metric))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{plan.config.task}: {os.path.basename(str(plan.config.data).rstrip('/'))} "
                 "(error bars: std over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_report(plan: Plan, into: str | None = None, command: str | None = None) -> str:
    """Write compare.md, compare.json and compare.png from the finished runs; returns the
    markdown path. Called after every run, so a stopped grid still has its table. into and
    command: another folder, and the command named in it (a results page that renders a
    grid which is still running)."""
    output_dir = into or plan.config.output_dir
    data = collect(plan)
    made = provenance(command)
    text = markdown(plan, data, made)
    fronts = verdicts(plan)
    if fronts is not None:
        text += "\n".join(front_markdown(plan, fronts)) + "\n"
    path = os.path.join(output_dir, MARKDOWN_FILE)
    with atomic_text(path) as handle:
        handle.write(text)
    write_json(os.path.join(output_dir, JSON_FILE), finite({
        "created": made["written"], "command": made["command"], "machine": made["machine"],
        "config": dataclasses.asdict(plan.config), "metrics": plan.metrics,
        "cells": data["rows"], "base": data["base"], "lr_sweeps": data["sweeps"],
        "runs": data["runs"],
        **({"fronts": front_summary(fronts)} if fronts is not None else {})}))
    if scored_by_generation(plan):
        plot(plan, data, os.path.join(output_dir, REPORT_PLOT_FILE))
    if fronts is not None:
        plot_fronts(plan, fronts, os.path.join(output_dir, FRONT_PLOT_FILE))
    return path


# ----------------------------------------------------------------------------- fronts

FRONT_PLOT_FILE = "compare-front.png"


def _signed(value: float | None, digits: int) -> str:
    """A delta, or '-' where none exists (the other front never reaches the loss)."""
    return "-" if value is None else f"{value:+.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def front_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The fronts and verdicts as JSON: points and envelopes without resamples."""
    out: dict[str, Any] = {"drift_sets": result["sets"], "verdicts": result["rows"], "cells": {}}
    for name, fronts in result["fronts"].items():
        for cell, entry in fronts.cells.items():
            xs, ys = fronts.front(cell)
            standard = entry["standard"]
            out["cells"].setdefault(cell, {})[name] = {
                "front": [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)],
                "standard": {"learning_rate": standard["learning_rate"],
                             "seeds": standard["seeds"],
                             "test_loss": None if standard["loss"] is None
                             else float(standard["loss"][0]),
                             "test_loss_std": standard["loss_std"],
                             "drift": None if standard["drift"] is None
                             else float(standard["drift"][0]),
                             "drift_std": standard["drift_std"]}}
    out["points"] = {cell: [{k: p.get(k) for k in ("folder", "learning_rate", "seed", "step",
                                                   "dev_loss", "test_loss")}
                            | {"drift": {n: d["kl"] for n, d in p["drift"].items()}}
                            for p in points]
                     for cell, points in result["data"]["cells"].items()}
    base = result["data"]["base"]
    out["base"] = None if base is None else {"test_loss": base["test_loss"]}
    return out


def _marks(row: dict[str, Any]) -> str:
    """† no seed term, ‡ read on the line from the base, § past the other front's end."""
    return ((" †" if "drift_set" in row and not row.get("seed_variance") else "")
            + (" ‡" if row.get("from_base") else "") + (" §" if row.get("past_front") else ""))


def _glance_cell(row: dict[str, Any], digits: int) -> str:
    delta = "never reached" if row["delta"] is None else _signed(row["delta"], digits)
    return f"{row['verdict'].split(' (')[0]} ({delta}){_marks(row)}"


def verdict_glance(rows: list[dict[str, Any]], sets: list[str], by: str = "other"
                   ) -> list[str]:
    """One line per other cell (or per reference, by="reference"), one column per measure
    (and drift set): the verdicts that answer "better than X?" side by side, before the
    table that gives their intervals."""
    columns: list[tuple[str, str | None]] = [
        (measure, name) for measure in ("loss at matched drift", "drift at matched loss")
        for name in sets]
    columns += list(dict.fromkeys((r["measure"], None) for r in rows if "drift_set" not in r))
    table: dict[str, dict[tuple[str, str | None], str]] = {}
    for row in rows:
        front = "drift_set" in row
        key = (row["measure"], row["drift_set"] if front else None)
        table.setdefault(row[by], {})[key] = _glance_cell(row, 4 if front else 2)
    header = [f"{m}, {n}" if n else NAMES.get(m, m) for m, n in columns]
    lines = ["At a glance (verdict, and delta in brackets):", "",
             f"| {'cell' if by == 'reference' else by} | " + " | ".join(header) + " |",
             "|---|" + "---|" * len(columns)]
    for other, cells in table.items():
        lines.append(f"| {other} | " + " | ".join(cells.get(c, "-") for c in columns) + " |")
    if any("drift_set" in r and not r.get("seed_variance") for r in rows):
        lines += ["", "†: both standard points have one seed, so the interval counts the "
                  "record bootstrap only; the seed spread would widen it."]
    if any(r.get("from_base") for r in rows):
        lines += ["", "‡: read on the straight line from the base model to the other cell's "
                  "first front point: none of its runs was measured at this drift (or loss), "
                  "so the verdict rests on that line."]
    if any(r.get("past_front") for r in rows):
        lines += ["", "§: past the other cell's last front point, where its front is taken as "
                  "flat: its runs, at the learning rates tried, reached no lower loss (a "
                  "drift verdict there: they never reached this loss at all)."]
    return lines


def front_markdown(plan: Plan, result: dict[str, Any]) -> list[str]:
    sets = result["sets"]
    first = result["fronts"][sets[0]]
    lines = ["", "## Fronts: test loss against drift", "",
             "Each point is a run at a dev evaluation: test loss (mean NLL per target token "
             "over the test split) and drift (KL(base || tuned) per token on general text: "
             + ", ".join(f"`{n}` ({plan.front['drift_sets'][n]})" for n in sets)
             + "). A cell's front is the lower-left envelope of its first seed's points "
             "(learning rates x steps), starting at the base model; its standard point is "
             "the last step at the rate all its seeds ran, mean ± std over seeds.", "",
             "| cell | lr | seeds | test loss | " + " | ".join(f"drift {n}" for n in sets) + " |",
             "|---|---|---|---|" + "---|" * len(sets)]
    base = result["data"]["base"]
    if base:
        lines.append(f"| base | - | - | {base['test_loss']:.4f} | "
                     + " | ".join("0" for _ in sets) + " |")
    for cell, entry in first.cells.items():
        standard = entry["standard"]
        drifts = [_pm(None if result["fronts"][n].cells[cell]["standard"]["drift"] is None
                      else float(result["fronts"][n].cells[cell]["standard"]["drift"][0]),
                      result["fronts"][n].cells[cell]["standard"]["drift_std"]) for n in sets]
        loss = None if standard["loss"] is None else float(standard["loss"][0])
        lines.append(f"| {cell} | {format_lr(standard['learning_rate'])} | "
                     f"{len(standard['seeds'])} | {_pm(loss, standard['loss_std'])} | "
                     + " | ".join(drifts) + " |")
    rows = result["rows"]
    if rows:
        lines += ["", f"### Verdicts: {plan.reference} against each cell", "",
                  *verdict_glance(rows, sets), "",
                  "Delta is the reference minus the other cell: lower is better for loss and "
                  "drift, higher for generation scores. 95% interval: paired bootstrap over "
                  f"records ({RESAMPLES:,} resamples) plus the seed variance of the standard "
                  "points; resolved only when it excludes 0.", "",
                  "| other | measure | drift set | at | delta | 95% interval | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            interval = ("-" if row.get("interval") is None
                        else f"[{row['interval'][0]:+.4f}, {row['interval'][1]:+.4f}]")
            digits = 4 if "drift_set" in row else 2
            at = f"{row['at']:.4f}" if "at" in row else f"best dev run, {row['records']} records"
            measure = row["measure"] if "drift_set" in row else NAMES.get(row["measure"],
                                                                          row["measure"])
            lines.append(f"| {row['other']} | {measure} | {row.get('drift_set', '-')} | {at} | "
                         f"{_signed(row['delta'], digits)} | {interval} | {row['verdict']}"
                         f"{_marks(row)} |")
    lines += ["", f"![test loss against drift]({FRONT_PLOT_FILE})", "",
              "<details><summary>every point</summary>", "",
              "| cell | lr | seed | step | dev loss | test loss | "
              + " | ".join(f"drift {n}" for n in sets) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(sets)]
    for cell, points in result["data"]["cells"].items():
        for p in sorted(points, key=lambda p: (p["learning_rate"] or 0, p["seed"], p["step"])):
            dev = "-" if p.get("dev_loss") is None else f"{p['dev_loss']:.4f}"
            lines.append(f"| {cell} | {format_lr(p['learning_rate'])} | {p['seed']} | "
                         f"{p['step']} | {dev} | {p['test_loss']:.4f} | "
                         + " | ".join(f"{p['drift'][n]['kl']:.4f}" for n in sets) + " |")
    lines += ["", "</details>"]
    return lines


def plot_fronts(plan: Plan, result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.6), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        fronts = result["fronts"][name]
        for index, (cell, entry) in enumerate(fronts.cells.items()):
            color = f"C{index}"
            method = plan.cell(cell).method
            ax.scatter(entry["xs"][:, 0], entry["ys"][:, 0], color=color, alpha=0.35, s=14,
                       marker=MARKERS.get(method, "o"))
            xs, ys = fronts.front(cell)
            ax.plot(xs, ys, color=color, label=cell)
            standard = entry["standard"]
            if standard["loss"] is not None:
                ax.errorbar(float(standard["drift"][0]), float(standard["loss"][0]),
                            xerr=standard["drift_std"] or 0, yerr=standard["loss_std"] or 0,
                            color=color, marker=MARKERS.get(method, "o"), markersize=7,
                            capsize=3)
        if fronts.base:
            ax.scatter([0], [fronts.base["test_loss"]], color="gray", marker="x", s=40,
                       label="base model")
        ax.set(xlabel=f"drift: KL(base || tuned) per token on {name}",
               ylabel="test loss (NLL per target token)", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{plan.config.task}: {os.path.basename(str(plan.config.data).rstrip('/'))} "
                 "(lines: fronts of the first seed; markers with bars: standard points, "
                 "std over seeds)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
