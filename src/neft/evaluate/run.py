"""Evaluation: greedy generation from the training prompts, then metrics.

    model, tokenizer, described = load_for_eval("smollm2-135m", adapter="outputs/run")
    result = evaluate_model(model, tokenizer, records, task="translation", target_lang="de")

Prompts are rendered by neft.data.render_example and tokenized like training prompts, so
the model sees at test time exactly what it saw before its targets. Generation is batched
with left padding (decoder-only models continue from the last position), prompts sorted by
length to waste little padding, and the outputs returned in input order.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from ..config import option
from ..core.io import check_output_file, write_json
from ..core.loading import (
    EMBEDDED_NAMES,
    EMBEDDED_ORIGIN,
    check_length,
    load_adapter_base,
    load_model,
)
from ..data.prompts import render_example, resolve_template
from ..data.records import load_records
from ..data.sources import fingerprint, load_drift_sets
from ..data.tokenize import encode_prompt
from ..errors import NeftError
from .likelihood import drift, target_loss
from .metrics import GENERATION_METRICS, language_code, parse_metrics, score

ADAPTER_CONFIG = "adapter_config.json"


# ----------------------------------------------------------------------------- generation


def end_of_turn_token_id(tokenizer: Any) -> int | None:
    """The special token a chat template puts after an assistant message (SmolLM2's and
    Qwen's <|im_end|>, Llama-3's <|eot_id|>, Gemma's <end_of_turn>), found by rendering one
    turn, so that no model name list is needed. None without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "NEFTMARKER"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            tokenize=False)
    except (TemplateError, ValueError):  # a template that rejects this conversation
        return None
    after = text[text.rfind(marker) + len(marker):]
    special = set(tokenizer.all_special_ids)
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return token_id
    return None


def stop_token_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos, the model's generation eos ids and
    the chat template's end-of-turn token."""
    ids = [tokenizer.eos_token_id, end_of_turn_token_id(tokenizer)]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    stops = [i for i in dict.fromkeys(ids) if i is not None]
    if not stops:
        raise NeftError("the tokenizer has no eos token and the model no eos_token_id, so "
                        "generation could not stop: set tokenizer.eos_token")
    return stops


def prompt_token_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt exactly as training tokenizes it (data.encode_prompt)."""
    return [encode_prompt(tokenizer, prompt) for prompt in prompts]


def newline_token_ids(tokenizer: Any) -> torch.Tensor:
    """Ids of every token whose text holds a line break."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([i for i, text in enumerate(texts) if "\n" in text], dtype=torch.long)


class StopAtNewline(StoppingCriteria):
    """Ends a row once its answer has a newline after some non-blank text: single-line
    answers (messages, sentences) are complete there, and a model that has not learned to
    stop would otherwise ramble on to max_new_tokens."""

    def __init__(self, tokenizer: Any, newline_ids: torch.Tensor, prompt_length: int):
        self.tokenizer = tokenizer
        self.newline_ids = newline_ids
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor,
                 **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        newline = torch.isin(input_ids[:, -1], self.newline_ids.to(input_ids.device))
        for row in newline.nonzero().flatten().tolist():
            answer = self.tokenizer.decode(input_ids[row, self.prompt_length:],
                                           skip_special_tokens=True)
            done[row] = "\n" in answer.lstrip()
        return done


def _finish(tokenizer: Any, new_ids: list[int], ends: set[int],
            stop_at_newline: bool) -> tuple[str, int, bool]:
    """(answer text, tokens generated, whether it ended by itself) for one row.

    The stop token counts as generated; the fill after a row has finished does not.
    """
    cut = next((i for i, token in enumerate(new_ids) if token in ends), None)
    kept = new_ids if cut is None else new_ids[:cut]
    text = tokenizer.decode(kept, skip_special_tokens=True).lstrip()
    if stop_at_newline and "\n" in text:  # generation stopped right after the line break
        return text.partition("\n")[0].rstrip(), len(kept), True
    return text.rstrip(), len(kept) + (cut is not None), cut is not None


def _generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int,
              max_new_tokens: int, no_repeat_ngram_size: int, stop_at_newline: bool,
              progress: bool) -> tuple[list[str], list[int], list[bool]]:
    """Answers in input order, with the tokens each generated and whether it ended."""
    if batch_size < 1 or max_new_tokens < 1:
        raise NeftError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and "
                        f"{max_new_tokens}")
    if no_repeat_ngram_size < 0:
        raise NeftError(f"no_repeat_ngram_size must be >= 0 (0: off), got {no_repeat_ngram_size}")
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    ends = {*stops, pad}  # finished rows are filled with pad
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=stops, pad_token_id=pad,
                              no_repeat_ngram_size=no_repeat_ngram_size or None)
    encoded = prompt_token_ids(tokenizer, prompts)
    longest = max((len(ids) for ids in encoded), default=0)
    check_length(model, longest + max_new_tokens,
                 f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens})",
                 "pass --max_new_tokens {room} or less, or shorter prompts", fixed=longest)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # longest first: OOM early
    device = next(model.parameters()).device
    newline_ids = newline_token_ids(tokenizer).to(device) if stop_at_newline else None
    texts, counts, ended = [""] * len(encoded), [0] * len(encoded), [False] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(encoded), desc="generating", unit="ex",
                                          disable=not progress, file=sys.stderr) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # left padding
                    input_ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    attention_mask[row, width - len(encoded[i]):] = 1
                criteria = StoppingCriteriaList()
                if newline_ids is not None:
                    criteria.append(StopAtNewline(tokenizer, newline_ids, width))
                output = model.generate(input_ids=input_ids.to(device),
                                        attention_mask=attention_mask.to(device),
                                        generation_config=config, stopping_criteria=criteria)
                for row, new_ids in zip(batch, output[:, width:].tolist(), strict=True):
                    texts[row], counts[row], ended[row] = _finish(tokenizer, new_ids, ends,
                                                                  stop_at_newline)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return texts, counts, ended


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 256,
    no_repeat_ngram_size: int = 0,
    stop_at_newline: bool = False,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to already rendered prompts, one per prompt, in input order.

    Stops at eos or the chat end-of-turn token (and, with stop_at_newline, at the first
    line break after some text). no_repeat_ngram_size=4 is the paper's setting; 0 is off.
    Answers are stripped of surrounding whitespace.
    """
    return _generate(model, tokenizer, prompts, batch_size, max_new_tokens,
                     no_repeat_ngram_size, stop_at_newline, progress)[0]


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
) -> dict[str, Any]:
    """Score a model on records: generation metrics, and the teacher-forced ones.

    Generation metrics (bleu, chrf, rouge, placeholders, comet) generate an answer to
    every record's prompt; stop_at_newline=None turns it on when no reference spans
    several lines. ``loss`` is the mean NLL per target token of the references (training's
    template and masking, max_length); ``drift`` is KL(base_model || model) per token on
    each of drift_sets ({name: texts}, default: general_text's sets of this machine).
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
    generating = [m for m in chosen if m in GENERATION_METRICS]
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
        hyps, counts, ended = _generate(model, tokenizer, [p for p, _ in pairs], batch_size,
                                        max_new_tokens, no_repeat_ngram_size, stop_at_newline,
                                        progress)
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
                           max_length=max_length, batch_size=batch_size, progress=progress)
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
                          batch_size=max(1, batch_size // 2), progress=progress)
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
        "decoding": "greedy", "max_length": max_length,
    }
    result["samples"] = samples
    return result


# ----------------------------------------------------------------------------- models


def _read_adapter_config(adapter_dir: str) -> dict[str, Any]:
    path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    if not os.path.isdir(adapter_dir):
        raise NeftError(f"adapter folder {adapter_dir} does not exist: pass the output_dir of "
                        "`neft train` (or a PEFT adapter folder)")
    if not os.path.isfile(path):
        raise NeftError(f"{adapter_dir} has no {ADAPTER_CONFIG}: pass a neft or PEFT adapter "
                        "folder, or give a full/merged model folder as --model")
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise NeftError(f"{path} is not valid JSON ({exc.msg}); re-save the adapter") from None


def _is_adapter_only(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, ADAPTER_CONFIG))
            and not os.path.isfile(os.path.join(path, "config.json")))


def load_for_eval(
    model: str | None = None,
    adapter: str | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, description) for a base model, a full/merged model folder, or a
    base plus a neft or PEFT (e.g. LoRA) adapter folder.

    An adapter folder given as model is taken as the adapter. The adapter's base is model,
    else the base_model_name_or_path it recorded. Adapters are merged into the weights
    (exact for neft and LoRA), so generation runs at the plain model's speed. The model
    goes to the GPU when there is one.
    """
    if model and adapter is None and _is_adapter_only(os.path.expanduser(model)):
        model, adapter = None, model
    saved = _read_adapter_config(os.path.expanduser(adapter)) if adapter else {}
    base = model or saved.get("base_model_name_or_path") or EMBEDDED_NAMES[0]
    if base == EMBEDDED_ORIGIN:
        base = EMBEDDED_NAMES[0]
    if model is None and saved.get("base_model_name_or_path"):
        loaded, tokenizer = load_adapter_base(base, adapter, dtype=dtype,
                                              trust_remote_code=trust_remote_code)
    else:
        loaded, tokenizer = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
    kind = None
    if adapter:
        kind = str(saved.get("peft_type", "")).upper()
        if kind == "NEFT":
            from ..core.model import NeftModel

            loaded = NeftModel.from_pretrained(loaded, os.path.expanduser(adapter))
            loaded = loaded.merge_and_unload()
        elif kind:
            from peft import PeftModel

            folder = os.path.expanduser(adapter)
            if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
                raise NeftError(f"{adapter} has no adapter_model.safetensors (a pickle "
                                "adapter_model.bin is not loaded: unpickling can run code); "
                                "save the adapter with safe_serialization=True")
            try:
                loaded = PeftModel.from_pretrained(loaded, folder)
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                text = str(exc).strip()
                raise NeftError(f"adapter {adapter} does not fit model {base} "
                                f"({text.splitlines()[0] if text else type(exc).__name__}); "
                                "pass the base model it was trained on as --model") from exc
            if kind == "LORA":
                loaded = loaded.merge_and_unload()
        else:
            raise NeftError(f"{adapter}/{ADAPTER_CONFIG} has no peft_type: it is neither a neft "
                            "nor a PEFT adapter")
    if torch.cuda.is_available():
        loaded = loaded.to("cuda")
    loaded.eval()
    return loaded, tokenizer, {"model": base, "adapter": adapter,
                               "adapter_type": kind.lower() if kind else None}


# ----------------------------------------------------------------------------- command


@dataclass
class EvalConfig:
    """Every option of `neft eval` (flags and YAML keys)."""

    model: str | None = option("model name or path; with --adapter its base (default: the "
                               "base the adapter recorded, else smollm2-135m)")
    adapter: str | None = option("neft or PEFT (LoRA) adapter folder, e.g. a `neft train` "
                                 "output_dir")
    data: str | None = option("test data: JSONL/CSV/TSV/Parquet file, folder or hub dataset")
    split: str | None = option("split of a folder or hub dataset", "test")
    task: str = option("translation, summarization, instruction or completion", "translation")
    template: str = option("prompt template as in training: auto, chat, plain or llama2", "auto")
    source_lang: str | None = option("source language code (else each record's src_lang)")
    target_lang: str | None = option("target language code (else each record's tgt_lang); "
                                     "also picks the BLEU tokenizer")
    source_field: str | None = option("record field holding the source text")
    target_field: str | None = option("record field holding the reference text")
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
    trust_remote_code: bool = option("allow model code from the hub (off for safety)", False)

    def __post_init__(self) -> None:
        if not self.data:
            raise NeftError("no test data: pass --data (a JSONL file, or a folder with "
                            "test.jsonl); `neft data gettext` makes one")
        # Checked here so that bad values fail before minutes of loading and generating.
        from ..data.prompts import TEMPLATES, language_name
        from ..data.records import TASKS

        for name, allowed in (("task", TASKS), ("template", TEMPLATES)):
            if getattr(self, name) not in allowed:
                raise NeftError(f"{name} {getattr(self, name)!r} is not known; use one of "
                                f"{', '.join(allowed)}")
        for name, low in (("batch_size", 1), ("max_new_tokens", 1), ("max_samples", 1),
                          ("no_repeat_ngram_size", 0), ("max_length", 2)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise NeftError(f"{name} must be at least {low}, not {value}")
        for lang in (self.source_lang, self.target_lang):
            if lang:
                language_name(lang)
        if self.output_file and os.path.isdir(self.output_file):
            raise NeftError(f"output_file {self.output_file} is a folder; give a file name "
                            f"such as {os.path.join(self.output_file, 'eval.json')}")


def drift_base(config: EvalConfig, described: Mapping[str, Any]) -> str:
    """The model drift is measured from: --base_model, else an adapter's base, else the
    base that a `neft train` output folder (full fine-tuning) records in neft_run.json."""
    if config.base_model:
        return config.base_model
    if described.get("adapter"):
        return described["model"]
    run_file = os.path.join(os.path.expanduser(str(described["model"])), "neft_run.json")
    if os.path.isfile(run_file):
        with open(run_file, encoding="utf-8") as handle:
            recorded = json.load(handle).get("model")
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
    field_map = {name: standard for name, standard in ((config.source_field, "source"),
                                                       (config.target_field, "target")) if name}
    records = load_records(config.data, split=config.split, field_map=field_map,
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
                            base_model=base, drift_sets=drift_sets)
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
