"""Evaluation: greedy generation from the training prompts, then metrics; `neft eval`.

    model, tokenizer, described = load_for_eval("smollm2-135m", adapter="outputs/run")
    result = evaluate_model(model, tokenizer, records, task="translation", target_lang="de")
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..config import option
from ..core.io import check_output_file, read_json, write_json
from ..core.loading import load_model, resolve_dtype
from ..core.precision import bf16_compute
from ..data.options import DataOptions
from ..data.prompts import render_example, resolve_template
from ..data.records import load_records
from ..data.sources import fingerprint, load_drift_sets
from ..errors import NeftError
from .generation import _generate
from .likelihood import drift, target_loss
from .load import load_for_eval
from .metrics import METRICS, language_code, parse_metrics, score

# ----------------------------------------------------------------------------- evaluation


def _scoring_language(records: Sequence[Mapping[str, Any]], task: str, source_lang: str | None,
                      target_lang: str | None) -> str | None:
    """The language the references are in, which picks the BLEU tokenizer. Like the
    prompts: a record's tgt_lang, else target_lang; a summary defaults to its source
    language; instruction and completion answers have none (BLEU's default tokenizer)."""
    def reference_language(record: Mapping[str, Any]) -> str | None:
        if record.get("tgt_lang") or target_lang:
            return record.get("tgt_lang") or target_lang
        if task == "summarization":
            return record.get("src_lang") or source_lang or "en"
        return None

    found = Counter(reference_language(record) for record in records)
    if len({language_code(lang) for lang in found}) > 1:
        raise NeftError(f"the records mix target languages ({', '.join(map(str, found))}): "
                        "evaluate one language at a time")
    return next(iter(found))


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    task: str = "translation",
    template: str = "auto",
    source_lang: str | None = None,
    target_lang: str | None = None,
    metrics: str | Sequence[str] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    no_repeat_ngram_size: int = 0,
    stop_at_newline: bool | None = None,
    comet_model: str | None = None,
    progress: bool = True,
    max_length: int = 512,
    base_model: nn.Module | None = None,
    drift_sets: Mapping[str, Sequence[str]] | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """Score a model on records: generation metrics, and the teacher-forced ones.

    Generation metrics (bleu, chrf, rouge, placeholders, comet) generate an answer to
    every record's prompt; stop_at_newline=None turns it on when no reference spans
    several lines. ``loss`` is the mean NLL per target token of the references (training's
    template and masking, max_length); ``drift`` is KL(base_model || model) per token on
    each of drift_sets ({name: texts}, default: general_text's sets of this machine).
    bf16 computes under bfloat16 autocast (weights stay as they are): about twice as fast
    on CPUs with AMX and on GPUs.
    Returns {"scores", "signatures", "settings", "generation" (when generating: speed,
    answers that never ended), "drift" (per set, with per-text sums), "samples" (id,
    source, reference, hypothesis when generated, loss and loss_tokens with loss)}.
    """
    if not records:
        raise NeftError("no records to evaluate")
    pairs = [render_example(r, task, tokenizer, template, source_lang, target_lang)
             for r in records]
    refs = [target.strip() for _, target in pairs]
    scoring_lang = _scoring_language(records, task, source_lang, target_lang)
    chosen = parse_metrics(metrics, refs)  # fail on a bad metric before generating
    if "comet" in chosen and not comet_model:
        raise NeftError("metric comet needs a local COMET checkpoint: pass --comet_model PATH")
    generating = [m for m in chosen if METRICS[m].kind == "generation"]
    if "drift" in chosen:
        if base_model is None:
            raise NeftError("metric drift needs the base model to compare with: pass "
                            "--base_model (an adapter names its own base)")
        drift_sets = drift_sets if drift_sets is not None else load_drift_sets(None)
    sources = [str(r.get("source", r.get("instruction", p))) for r, (p, _) in
               zip(records, pairs, strict=True)]
    samples = [{"id": r.get("id", i), "source": src, "reference": ref}
               for i, (r, src, ref) in enumerate(zip(records, sources, refs, strict=True))]
    result: dict[str, Any] = {"scores": {}, "signatures": {}}
    if generating:
        if stop_at_newline is None:
            stop_at_newline = not any("\n" in ref for ref in refs)
        start = time.perf_counter()
        with bf16_compute(bf16, model):
            hyps, counts, ended = _generate(model, tokenizer, [p for p, _ in pairs],
                                            batch_size, max_new_tokens, no_repeat_ngram_size,
                                            stop_at_newline, progress)
        seconds = time.perf_counter() - start
        result = score(hyps, refs, scoring_lang, generating, sources=sources,
                       comet_model=comet_model)
        result["generation"] = {
            "seconds": round(seconds, 2), "new_tokens": sum(counts),
            "tokens_per_second": round(sum(counts) / seconds, 1) if seconds else None,
            "unfinished": len(ended) - sum(ended),
        }
        for sample, hyp in zip(samples, hyps, strict=True):
            sample["hypothesis"] = hyp
    if "loss" in chosen:
        loss = target_loss(model, tokenizer, records, task, template, source_lang, target_lang,
                           max_length=max_length, batch_size=batch_size, progress=progress,
                           bf16=bf16)
        result["scores"]["loss"] = loss["loss"]
        result["signatures"]["loss"] = (f"mean NLL (nats) per target token of the references, "
                                        f"{loss['tokens']:,} tokens, training's template and "
                                        f"masking, max_length {max_length}")
        for sample, nll, tokens in zip(samples, loss["nll"], loss["token_counts"], strict=True):
            sample["loss"] = nll / tokens if tokens else None
            sample["loss_tokens"] = tokens
    if "drift" in chosen:
        result["drift"] = {}
        for name, texts in drift_sets.items():
            moved = drift(model, base_model, tokenizer, texts, max_length=max_length,
                          batch_size=max(1, batch_size // 2), progress=progress, bf16=bf16)
            result["scores"][f"drift_{name}"] = moved["kl"]
            result["scores"][f"loss_change_{name}"] = moved["loss_change"]
            result["drift"][name] = {"fingerprint": fingerprint(texts), **moved}
            result["signatures"][f"drift_{name}"] = (
                f"KL(base || tuned) nats per token on {len(texts)} {name} texts "
                f"({moved['tokens']:,} tokens, set {fingerprint(texts)}), max_length "
                f"{max_length}; loss_change: tuned minus base NLL per token there")
    result["settings"] = {
        "task": task, "template": resolve_template(template, tokenizer),
        "target_lang": scoring_lang, "metrics": chosen, "samples": len(records),
        "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "no_repeat_ngram_size": no_repeat_ngram_size, "stop_at_newline": stop_at_newline,
        "decoding": "greedy", "max_length": max_length, "bf16": bf16,
    }
    result["samples"] = samples
    return result


# ----------------------------------------------------------------------------- command


@dataclass
class EvalConfig(DataOptions):
    """Every option of `neft eval` (flags and YAML keys); the data options (as in
    training) come from DataOptions."""

    model: str | None = option("model name or path; with --adapter its base (default: the "
                               "base the adapter recorded, else smollm2-135m)")
    adapter: str | None = option("neft or PEFT (LoRA) adapter folder, e.g. a `neft train` "
                                 "output_dir, or its Hub id")
    data: str | None = option("test data: JSONL/CSV/TSV/Parquet file, folder or hub dataset")
    split: str | None = option("split of a folder or hub dataset", "test")
    max_samples: int | None = option("evaluate the first N records")
    batch_size: int = option("prompts generated together", 16)
    max_new_tokens: int = option("longest answer in tokens", 256)
    no_repeat_ngram_size: int = option("ban repeated n-grams of this size (the paper: 4; 0 off)",
                                       0)
    stop_at_newline: bool | None = option("end answers at their first line break (default: "
                                          "when no reference has one)")
    metrics: str | None = option("comma-separated: bleu, chrf, rouge, placeholders, comet "
                                 "(generated answers); loss (test loss of the references), "
                                 "drift (KL from the base model on general text) "
                                 "(default: bleu,chrf,rouge + placeholders when present)")
    max_length: int = option("tokens per example for loss and per window for drift (use "
                             "training's max_length)", 512)
    drift_data: str | None = option("general text for drift: JSONL files or folders from "
                                    "`neft data general` (default: this machine's manual "
                                    "pages and licences, harvested now)")
    base_model: str | None = option("the base model drift is measured from (default: the "
                                    "adapter's base, or the base a `neft train` output names)")
    comet_model: str | None = option("local COMET checkpoint (folder or model.ckpt) for comet")
    output_file: str | None = option("write hypotheses and scores here as JSON")
    overwrite: bool = option("replace output_file if it exists", False)
    dtype: str | None = option("model dtype: float32, bfloat16, float16 or auto")
    bf16: bool = option("compute in bfloat16 under autocast, weights kept as loaded: about 2x "
                        "faster on CPUs with AMX and on GPUs; loss and drift move ~0.1%", False)
    trust_remote_code: bool = option("allow model code from the hub (off for safety)", False)

    def __post_init__(self) -> None:
        if not self.data:
            raise NeftError("no test data: pass --data (a JSONL file, or a folder with "
                            "test.jsonl); `neft data gettext` makes one")
        # Checked here so that bad values fail before minutes of loading and generating.

        self.check_data_options()
        resolve_dtype(self.dtype)
        for name, low in (("batch_size", 1), ("max_new_tokens", 1), ("max_samples", 1),
                          ("no_repeat_ngram_size", 0), ("max_length", 2)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise NeftError(f"{name} must be at least {low}, not {value}")
        if self.output_file and os.path.isdir(self.output_file):
            raise NeftError(f"output_file {self.output_file} is a folder; give a file name "
                            f"such as {os.path.join(self.output_file, 'eval.json')}")


    def ignored_options(self) -> dict[str, str]:
        """The options these metrics never read, each with the reason (`neft eval` refuses
        them when given: --base_model without drift is a forgotten metric, not a no-op)."""
        chosen = parse_metrics(self.metrics)
        kinds = {METRICS[name].kind for name in chosen}
        shown = (f"--metrics {','.join(chosen)}" if self.metrics else
                 f"the default metrics ({','.join(chosen)})")
        ignored: dict[str, str] = {}
        if "generation" not in kinds:
            ignored.update(dict.fromkeys(
                ("max_new_tokens", "no_repeat_ngram_size", "stop_at_newline"),
                f"{shown}: no answer is generated"))
        if "likelihood" not in kinds:
            ignored["max_length"] = f"{shown}: neither loss nor drift"
        if "drift" not in chosen:
            ignored.update(dict.fromkeys(("base_model", "drift_data"),
                                         f"{shown}: no drift"))
        if "comet" not in chosen:
            ignored["comet_model"] = f"{shown}: no comet"
        return ignored


def drift_base(config: EvalConfig, described: Mapping[str, Any]) -> str:
    """The model drift is measured from: --base_model, else an adapter's base, else the
    base that a `neft train` output folder (full fine-tuning) records in neft_run.json."""
    if config.base_model:
        return config.base_model
    if described.get("adapter"):
        return described["model"]
    run_file = os.path.join(os.path.expanduser(str(described["model"])), "neft_run.json")
    if os.path.isfile(run_file):
        recorded = read_json(run_file).get("model")
        if recorded:
            return recorded
    raise NeftError(f"metric drift needs the base model that {described['model']} was tuned "
                    "from: pass --base_model")


def run_eval(config: EvalConfig, write: bool = True) -> dict[str, Any]:
    """Load, generate, score; write config.output_file when given (and ``write``: the CLI
    prints the scores first, so that a late write failure cannot lose them). Returns the
    result. The output file is checked before anything is loaded."""
    if config.output_file:
        check_output_file(config.output_file, config.overwrite, "output_file",
                          example="eval.json")
    records = load_records(config.data, split=config.split, field_map=config.field_map(),
                           limit=config.max_samples, task=config.task)
    chosen = parse_metrics(config.metrics)  # fail on a bad metric before loading the model
    drift_sets = load_drift_sets(config.drift_data) if "drift" in chosen else None
    model, tokenizer, described = load_for_eval(config.model, config.adapter, config.dtype,
                                                config.trust_remote_code)
    base = None
    if "drift" in chosen:
        base_name = drift_base(config, described)
        base, _ = load_model(base_name, dtype=config.dtype,
                             trust_remote_code=config.trust_remote_code)
        base.to(next(model.parameters()).device)
        described = {**described, "base_model": base_name}
    result = evaluate_model(model, tokenizer, records, task=config.task,
                            template=config.template, source_lang=config.source_lang,
                            target_lang=config.target_lang, metrics=config.metrics,
                            batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                            no_repeat_ngram_size=config.no_repeat_ngram_size,
                            stop_at_newline=config.stop_at_newline,
                            comet_model=config.comet_model, max_length=config.max_length,
                            base_model=base, drift_sets=drift_sets, bf16=config.bf16)
    result = {**described, "data": config.data, "split": config.split, **result,
              "config": asdict(config)}
    if config.output_file and write:
        write_json(config.output_file, result)
    return result


def _score_text(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    teacher_forced = name == "loss" or name.startswith(("drift_", "loss_change_"))
    return f"{value:.4f}" if teacher_forced else f"{value:.2f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The scores, their signatures and the generation speed, as printed by `neft eval`."""
    width = max([22, *(len(name) + 2 for name in result["scores"])])
    lines = [f"{'metric':<{width}}{'score':>8}"]
    for name, value in result["scores"].items():
        lines.append(f"{name:<{width}}{_score_text(name, value):>8}")
    lines += [f"  {name}: {signature}" for name, signature in result["signatures"].items()]
    gen = result.get("generation")
    if gen:
        lines.append(f"{result['settings']['samples']} samples, {gen['new_tokens']} new tokens "
                     f"in {gen['seconds']:.1f} s ({gen['tokens_per_second']} tokens/s); "
                     f"{gen['unfinished']} hit max_new_tokens")
    else:
        lines.append(f"{result['settings']['samples']} samples (teacher-forced, no generation)")
    return "\n".join(lines)
