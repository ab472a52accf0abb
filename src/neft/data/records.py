"""Data for training and evaluation: records, prompt templates, tokenization, batching.

Flow: ``load_records`` (files or a hub dataset) -> ``render_example`` (a task template turns
a record into a prompt and a target) -> ``tokenize_example`` / ``build_dataset`` (loss on
the target only) -> ``DataCollator`` (batches). ``harvest_gettext`` makes real translation
data from the gettext catalogs installed on any Linux machine.
"""

from __future__ import annotations

import csv
import gettext
import glob
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.io import atomic_text
from ..errors import NeftError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that the loss skips (torch's cross_entropy default)

# ----------------------------------------------------------------------------- languages

LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto",
    "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "ga": "Irish", "gl": "Galician", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "ms": "Malay", "nb": "Norwegian",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish",
    "ta": "Tamil", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
    "zh": "Chinese",
}
REGIONAL_NAMES = {
    "zh_TW": "Traditional Chinese", "zh_HK": "Traditional Chinese",
    "pt_BR": "Brazilian Portuguese",
}


def language_name(code: str) -> str:
    """English name for a language code as used in prompts: de -> German, zh_CN -> Chinese.

    A name passed instead of a code ("German") is returned as is.
    """
    lang, _, region = code.replace("-", "_").partition("_")
    regional = f"{lang.lower()}_{region.split('@')[0].upper()}"
    if regional in REGIONAL_NAMES:
        return REGIONAL_NAMES[regional]
    if lang.lower() in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[lang.lower()]
    if len(code) > 3 and code[0].isupper() and code.replace(" ", "").isalpha():
        return code
    raise NeftError(f"unknown language code {code!r}: pass its English name instead "
                    f"(e.g. 'Swahili') or one of {', '.join(sorted(LANGUAGE_NAMES))}")


# ----------------------------------------------------------------------------- records

TASK_FIELDS = {
    "translation": ("source", "target"),
    "summarization": ("source", "target"),
    "instruction": ("instruction", "output"),  # "input" is optional
    "completion": ("prompt", "completion"),
}
TASKS = tuple(TASK_FIELDS)
FILE_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise NeftError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def _field(record: Mapping[str, Any], name: str) -> Any:
    """record[name], where name may be a dotted path into nested dicts ('translation.de')."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _apply_field_map(record: dict, field_map: Mapping[str, str], where: str) -> dict:
    renamed = {key: value for key, value in record.items() if key not in field_map}
    for old, new in field_map.items():
        try:
            renamed[new] = _field(record, old)
        except KeyError:
            raise NeftError(f"{where}: no field {old!r} to map to {new!r}; fields present: "
                            f"{', '.join(record) or 'none'}") from None
    return renamed


def _require_fields(record: Mapping[str, Any], task: str, where: str) -> None:
    for name in TASK_FIELDS[task]:
        value = record.get(name)
        if value is None:
            raise NeftError(f"{where}: missing field {name!r} for task {task}; fields present: "
                            f"{', '.join(record) or 'none'} (rename yours with field_map, "
                            f"e.g. {{'de': 'target'}})")
        if not isinstance(value, str):
            raise NeftError(f"{where}: field {name!r} is {type(value).__name__}, expected text")
        if not value.strip():
            raise NeftError(f"{where}: field {name!r} is empty; fill it in or remove that "
                            "record (an empty text trains or scores nothing)")


def _looks_like_file(source: str) -> bool:
    """Hub dataset ids are 'name' or 'org/name'; paths and file names are local."""
    return (source.startswith((".", "/", "~")) or source.lower().endswith(FILE_FORMATS)
            or source.count("/") > 1)


def _read_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise NeftError(f"{path}:{lineno}: malformed JSON ({exc.msg}, column "
                                f"{exc.colno}); fix or delete that line") from None


def _read_json(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as exc:
            raise NeftError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); a .json file "
                            "must hold one list of objects (use .jsonl for one a line)") from None
    if not isinstance(rows, list):
        raise NeftError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _read_delimited(path: str, delimiter: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _read_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq  # a dependency of datasets

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise NeftError(f"{path} is not a readable Parquet file ({exc}); it may be truncated "
                        "or another format: check the file") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}[{i}]", row


def _read_file(path: str) -> Iterator[tuple[str, Any]]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".json":
        return _read_json(path)
    if ext in (".csv", ".tsv"):
        return _read_delimited(path, "\t" if ext == ".tsv" else ",")
    if ext == ".parquet":
        return _read_parquet(path)
    raise NeftError(f"{path}: unknown data file type {ext or '(none)'!r}; use one of "
                    f"{', '.join(FILE_FORMATS)}")


def _split_file(folder: str, split: str | None) -> str:
    """<folder>/<split>.<ext>: the layout neft data and the DDTP data use."""
    if split is None:
        raise NeftError(f"{folder} is a directory: pass a split (e.g. train) to read "
                        f"{folder}/train.jsonl")
    found = [os.path.join(folder, split + ext) for ext in FILE_FORMATS
             if os.path.isfile(os.path.join(folder, split + ext))]
    if not found:
        raise NeftError(f"{folder} has no {split}.jsonl (or .json/.csv/.tsv/.parquet); "
                        "pass an existing split or a file path")
    return found[0]


def _read_hub(name: str, split: str | None) -> Iterator[tuple[str, Any]]:
    """A Hugging Face dataset, 'name' or 'name:config' (e.g. 'wmt16:de-en')."""
    if split is None:
        raise NeftError(f"{name!r} is not a local file, so it is read as a Hugging Face dataset, "
                        "which needs a split: pass split='train' (--split train)")
    from ..core.loading import hub_reachable

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and not hub_reachable():  # else a minute of retries, then this
        raise NeftError(f"{name!r} is not a local file or folder, and the Hugging Face Hub "
                        "cannot be reached to load it as a dataset: check the path (a local "
                        f"one needs a form like ./{name} or {name}.jsonl)")
    import datasets

    repo, _, config = name.partition(":")
    try:
        rows = datasets.load_dataset(repo, config or None, split=split)
    except (OSError, ConnectionError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeftError(f"cannot load {name!r} as a local file or a Hugging Face dataset "
                        f"({reason}); check the path, or the dataset name and split") from None
    for i, row in enumerate(rows):
        yield f"{name}[{split}][{i}]", row


def load_records(
    source: str,
    split: str | None = None,
    field_map: Mapping[str, str] | None = None,
    limit: int | None = None,
    task: str | None = None,
) -> list[dict]:
    """Records from a local file (by extension), a folder of <split> files, or a hub dataset.

    field_map renames fields to the standard names, like datasets' rename_columns:
    {your_field: standard_field}; your_field may be a dotted path ('translation.de').
    With a task, every record is checked for that task's fields. limit keeps the first N.
    """
    if task is not None:
        _check_choice(task, TASKS, "task")
    if limit is not None and limit < 1:
        raise NeftError(f"a record limit of {limit} leaves no data; pass at least 1, or no "
                        "limit to use every record")
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        path = _split_file(path, split)
    if os.path.isfile(path):
        rows = _read_file(path)
    elif _looks_like_file(source):
        raise NeftError(f"data file {source!r} does not exist: check the path")
    else:
        rows = _read_hub(source, split)
    records = []
    try:
        for where, row in rows:
            if limit is not None and len(records) >= limit:
                break
            if not isinstance(row, Mapping):
                raise NeftError(f"{where}: expected an object with named fields, got "
                                f"{type(row).__name__}")
            record = _apply_field_map(dict(row), field_map or {}, where)
            if task is not None:
                _require_fields(record, task, where)
            records.append(record)
    except UnicodeDecodeError as exc:
        raise NeftError(f"{source}: not UTF-8 text ({exc.reason}); re-encode it as UTF-8") from None
    if not records:
        where = source if os.path.isfile(path) or not split else f"{source} [{split}]"
        raise NeftError(f"{where} has no records: give it at least one (one JSON object a line "
                        "in .jsonl, a header and rows in .csv)")
    return records


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object a line, written to a temp file then renamed: never a half file."""
    with atomic_text(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- templates

TEMPLATES = ("auto", "chat", "plain", "llama2")


def resolve_template(template: str, tokenizer: Any = None) -> str:
    """'auto' is 'chat' when the tokenizer has a chat template, else 'plain'."""
    _check_choice(template, TEMPLATES, "template")
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "plain"
    if template == "chat" and not has_chat:
        raise NeftError("the tokenizer has no chat template: use template 'plain' or 'llama2'")
    return template


def _languages(record: Mapping[str, Any], task: str, src_lang: str | None,
               tgt_lang: str | None) -> tuple[str, str]:
    """A record's own src_lang/tgt_lang fields win; the arguments fill in for records without.

    The source defaults to English; a summary defaults to the source language.
    """
    src = record.get("src_lang") or src_lang or "en"
    tgt = record.get("tgt_lang") or tgt_lang or (src if task == "summarization" else None)
    if tgt is None:
        raise NeftError("translation needs a target language: pass --target_lang de "
                        "(tgt_lang= in Python) or give records a tgt_lang field")
    return language_name(src), language_name(tgt)


def _task_text(record: Mapping[str, Any], task: str, template: str, src_lang: str | None,
               tgt_lang: str | None) -> tuple[str, str]:
    """(instruction, input text) that the template then wraps."""
    if task == "instruction":
        return record["instruction"], record.get("input") or ""
    src, tgt = _languages(record, task, src_lang, tgt_lang)
    if task == "translation":
        return f"Translate the following text from {src} to {tgt}.", record["source"]
    if template == "llama2":  # the paper's wording
        return (f"Given the below {src} article, generate a summary in {tgt}.",
                f"Article: {record['source']}")
    if src == tgt:
        return f"Summarize the following {src} text.", record["source"]
    return f"Summarize the following {src} text in {tgt}.", record["source"]


def render_example(
    record: Mapping[str, Any],
    task: str,
    tokenizer: Any = None,
    template: str = "auto",
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> tuple[str, str]:
    """(prompt_text, target_text) for one record; the model trains on prompt + target + eos
    and evaluation generates from the same prompt.

    chat:   the tokenizer's chat template, user message "{instruction}\\n{text}",
            add_generation_prompt=True; target as is.
    plain:  "### Instruction:\\n{instruction}\\n\\n### Input:\\n{text}\\n\\n### Response:\\n"
            (no Input section when there is no text); target as is.
    llama2: the paper's "[INST] {instruction} {text} [/INST]" (a newline, not a space,
            before the text of summarization and instruction tasks); target " {target}",
            its leading space being what Llama-2's format puts after [/INST].
    completion records are never wrapped: prompt and completion are used verbatim.
    """
    _check_choice(task, TASKS, "task")
    _require_fields(record, task, f"record {record.get('id', '')}".strip())
    if task == "completion":
        return record["prompt"], record["completion"]
    template = resolve_template(template, tokenizer)
    instruction, text = _task_text(record, task, template, src_lang, tgt_lang)
    target = record["output"] if task == "instruction" else record["target"]
    if template == "chat":
        content = f"{instruction}\n{text}" if text else instruction
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                               tokenize=False, add_generation_prompt=True)
        return prompt, target
    if template == "llama2":
        separator = " " if task == "translation" else "\n"
        user = f"{instruction}{separator}{text}" if text else instruction
        return f"[INST] {user} [/INST]", f" {target}"
    prompt = f"### Instruction:\n{instruction}\n\n"
    if text:
        prompt += f"### Input:\n{text}\n\n"
    return prompt + "### Response:\n", target


# ----------------------------------------------------------------------------- tokenization


def _bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds one by itself (Llama, Mistral; not SmolLM2, GPT-2)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    return bos if tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] else None


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt token ids exactly as training sees them: generate from these at evaluation.

    The tokenizer's BOS is prepended when it adds one by itself and the prompt (e.g. from
    a chat template) does not already start with it; no other special tokens are added.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = _bos_id(tokenizer)
    return [bos] + ids if bos is not None and ids[:1] != [bos] else ids


def _cut_middle(ids: list[int], keep: int) -> list[int]:
    """Keep the first and last keep/2 tokens: the instruction and the generation prompt."""
    if keep >= len(ids):
        return ids
    head = keep // 2
    return ids[:head] + ids[len(ids) - (keep - head):]


def _tokenize(tokenizer: Any, prompt: str, target: str,
              max_length: int) -> tuple[dict[str, list[int]], int, int]:
    """The example, plus the untruncated prompt and target lengths in tokens."""
    if max_length < 2:
        raise NeftError(f"max_length {max_length} is too small: use at least 2 (e.g. 512)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise NeftError("the tokenizer has no eos token, so the model could not learn to stop: "
                        "set tokenizer.eos_token")
    prompt_ids = encode_prompt(tokenizer, prompt)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    full_target = target_ids + [eos]
    kept_prompt, kept_target = prompt_ids, full_target
    if len(prompt_ids) + len(full_target) > max_length:
        keep = max(max_length - len(full_target), min(len(prompt_ids), max_length // 2))
        kept_prompt = _cut_middle(prompt_ids, keep)
        room = max_length - len(kept_prompt)
        if len(full_target) > room:
            kept_target = target_ids[:room]  # no eos: the target really goes on
    input_ids = kept_prompt + kept_target
    example = {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(kept_prompt) + kept_target,
    }
    return example, len(prompt_ids), len(target_ids)


def tokenize_example(tokenizer: Any, prompt: str, target: str,
                     max_length: int) -> dict[str, list[int]]:
    """Prompt tokens, target tokens, eos; labels are -100 on the prompt.

    The prompt is masked by its length, never by pad id (SmolLM2's pad is its eos, which
    must be learned, or the model never stops). The prompt is encoded by encode_prompt.
    Truncation to max_length, in this order:
      1. the prompt loses tokens from its middle, keeping its start (instruction) and end
         (generation prompt), but not below max_length // 2 tokens (or its own length);
      2. then the target is cut from the right and loses its eos (it did not end there).
    So a non-empty target always keeps at least max_length - max_length // 2 tokens.
    """
    return _tokenize(tokenizer, prompt, target, max_length)[0]


class TokenizedDataset(torch.utils.data.Dataset):
    """Tokenized examples for Trainer, plus the untruncated lengths length_stats reports."""

    def __init__(self, examples: list[dict[str, list[int]]], lengths: list[tuple[int, int]],
                 max_length: int):
        self.examples = examples
        self.lengths = lengths  # (prompt tokens, target tokens) before truncation
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def build_dataset(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    task: str,
    max_length: int = 512,
    template: str = "auto",
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> TokenizedDataset:
    """Render and tokenize every record (see render_example and tokenize_example)."""
    _check_choice(task, TASKS, "task")
    examples, lengths = [], []
    for i, record in enumerate(records):
        _require_fields(record, task, f"record {i}")
        prompt, target = render_example(record, task, tokenizer, template, src_lang, tgt_lang)
        example, prompt_len, target_len = _tokenize(tokenizer, prompt, target, max_length)
        examples.append(example)
        lengths.append((prompt_len, target_len))
    if not examples:
        raise NeftError("no records to build a dataset from")
    return TokenizedDataset(examples, lengths, max_length)


def _summary(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
    return {"min": ordered[0], "mean": sum(ordered) / len(ordered), "p95": p95,
            "max": ordered[-1]}


def length_stats(dataset: TokenizedDataset) -> dict[str, Any]:
    """Token lengths before truncation (total counts the eos), how many examples were
    truncated, and how many tokens training will see: what choosing max_length needs."""
    prompts = [p for p, _ in dataset.lengths]
    targets = [t for _, t in dataset.lengths]
    totals = [p + t + 1 for p, t in dataset.lengths]
    return {
        "examples": len(dataset),
        "max_length": dataset.max_length,
        "truncated": sum(total > dataset.max_length for total in totals),
        "tokens": sum(len(example["input_ids"]) for example in dataset.examples),
        "prompt": _summary(prompts),
        "target": _summary(targets),
        "total": _summary(totals),
    }


def format_length_stats(stats: Mapping[str, Any]) -> str:
    """The lines printed before training."""
    lines = [f"{stats['examples']:,} examples, {stats['tokens']:,} tokens; "
             f"{stats['truncated']:,} truncated to max_length {stats['max_length']}"]
    for part in ("prompt", "target", "total"):
        s = stats[part]
        lines.append(f"  {part:<6} tokens min {s['min']}  mean {s['mean']:.1f}  "
                     f"p95 {s['p95']}  max {s['max']}")
    return "\n".join(lines)


@dataclass
class DataCollator:
    """Right-pads a batch to its longest example (optionally a multiple of N, for tensor
    cores): input_ids with the pad id, attention_mask with 0, labels with -100."""

    pad_token_id: int | None
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise NeftError("the tokenizer has no pad token: call "
                            "neft.core.loading.ensure_pad_token(tokenizer) first")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = {key: [_as_list(f[key]) for f in features]
                for key in ("input_ids", "attention_mask", "labels") if key in features[0]}
        longest = max(len(ids) for ids in rows["input_ids"])
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {key: torch.tensor([row + [fill[key]] * (longest - len(row)) for row in values],
                                  dtype=torch.long)
                for key, values in rows.items()}


def _as_list(values: Any) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


# ----------------------------------------------------------------------------- placeholders

_PRINTF = (r"%(?:\d+\$)?[-+#0']*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?"
           r"(?:hh|ll|[hlLqjzZt])?[diouxXeEfFgGaAcCsSpnm]")
_PYTHON_NAMED = r"%\([^()\s]+\)[-+#0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
_BRACE = r"\{[A-Za-z0-9_.\[\]]*(?:![rsa])?(?::[^{}\s]*)?\}"
# Escapes (%%, {{, }}) are matched first so that they are skipped, not half-matched.
_PLACEHOLDER = re.compile(rf"%%|\{{\{{|\}}\}}|{_PYTHON_NAMED}|{_PRINTF}|{_BRACE}")
_ESCAPES = ("%%", "{{", "}}")


def placeholders(text: str) -> list[str]:
    """Format placeholders in text, in order: printf (%s, %-10lu, %1$s, %.*s), Python
    (%(name)s) and brace ({}, {0}, {name}, {name:>8}). %% and {{ }} are escapes, not
    placeholders; a space flag is not recognised, so '50% of' is not a placeholder."""
    return [m for m in _PLACEHOLDER.findall(text) if m not in _ESCAPES]


def placeholder_survival(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Share of the references' placeholders that the hypotheses reproduce exactly.

    Per pair, the multiset intersection of placeholders(ref) and placeholders(hyp),
    summed over pairs and divided by the total count in the references. Extra placeholders
    in a hypothesis are not penalised. NaN when the references hold none.
    """
    if len(hyps) != len(refs):
        raise NeftError(f"{len(hyps)} hypotheses but {len(refs)} references: pass one each")
    kept = total = 0
    for hyp, ref in zip(hyps, refs, strict=True):
        wanted = Counter(placeholders(ref))
        total += sum(wanted.values())
        kept += sum((wanted & Counter(placeholders(hyp))).values())
    return kept / total if total else math.nan


# ----------------------------------------------------------------------------- gettext

GETTEXT_LOCALE_DIR = "/usr/share/locale"


def _words(text: str) -> int:
    """Words with a letter in them, placeholders not counted."""
    return sum(any(c.isalpha() for c in word) for word in _PLACEHOLDER.sub(" ", text).split())


def _placeholder_kinds(text: str) -> Counter:
    """Placeholders without positions: '%2$s und %1$s' matches '%s and %s'."""
    return Counter(re.sub(r"(?<=%)\d+\$|(?<=\*)\d+\$", "", p) for p in placeholders(text))


def _keep_message(source: str, target: str, min_words: int) -> bool:
    return (bool(target) and target != source and "\n" not in source and "\n" not in target
            and _words(source) >= min_words
            and _placeholder_kinds(source) == _placeholder_kinds(target))


def _catalog(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return gettext.GNUTranslations(f)._catalog
    except (OSError, ValueError) as exc:  # bad magic number, or text not in its charset
        logger.warning("neft: skipping unreadable catalog %s (%s)", path, exc)
        return {}


def gettext_languages(locale_dir: str = GETTEXT_LOCALE_DIR) -> list[str]:
    """Locales with .mo catalogs, those with the most catalogs first."""
    counts = Counter(os.path.basename(os.path.dirname(os.path.dirname(path)))
                     for path in glob.glob(os.path.join(locale_dir, "*", "LC_MESSAGES", "*.mo")))
    return sorted(counts, key=lambda lang: (-counts[lang], lang))


def _split_key(source: str) -> str:
    """Near-duplicates ('Cannot open file' / 'cannot open file.') share a key, so a split."""
    return " ".join(source.casefold().split()).rstrip(".:!?… ")


def harvest_gettext(
    target_lang: str,
    locale_dir: str = GETTEXT_LOCALE_DIR,
    min_words: int = 4,
    seed: int = 0,
    dev_size: int = 500,
    test_size: int = 1000,
) -> dict[str, list[dict]]:
    """English -> target_lang pairs from the installed programs' gettext catalogs.

    Reads <locale_dir>/<target_lang>/LC_MESSAGES/*.mo. Keeps singular messages without
    context (no header, plural or msgctxt entries) that are one line after stripping the
    surrounding whitespace, have at least min_words words, a non-empty translation that
    differs from the source, and the same placeholders (positions aside) on both sides.
    Text, placeholders included, is kept as written. One record per source: its most
    common translation, ties to the first seen (catalogs in name order).
    Splits: groups of near-identical sources (see _split_key) are ordered by a seeded
    hash and dealt to test, then dev, until each has its size (a group is never divided),
    then the rest to train. So no source is in two splits and the result is deterministic.
    """
    for name, value in (("min_words", min_words), ("dev_size", dev_size),
                        ("test_size", test_size)):
        if value < 0:
            raise NeftError(f"{name} must be >= 0, got {value}")
    files = sorted(glob.glob(os.path.join(locale_dir, target_lang, "LC_MESSAGES", "*.mo")))
    if not files:
        available = gettext_languages(locale_dir)
        shown = ", ".join(available[:30]) + (f" (+{len(available) - 30} more)"
                                             if len(available) > 30 else "")
        raise NeftError(f"no gettext catalogs for {target_lang!r} in {locale_dir}; languages "
                        f"with the most catalogs: {shown or 'none'}")
    translations: dict[str, Counter] = {}
    domains: dict[tuple[str, str], str] = {}
    for path in files:
        domain = os.path.splitext(os.path.basename(path))[0]
        for msgid, msgstr in _catalog(path).items():
            if not isinstance(msgid, str) or not msgid or "\x04" in msgid:
                continue  # plural entries have tuple keys, the header "", contexts ctx\x04id
            source, target = msgid.strip(), msgstr.strip()
            if _keep_message(source, target, min_words):
                translations.setdefault(source, Counter())[target] += 1
                domains.setdefault((source, target), domain)
    groups: dict[str, list[str]] = {}
    for source in translations:
        groups.setdefault(_split_key(source), []).append(source)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for key in order:
        split = ("test" if len(splits["test"]) < test_size else
                 "dev" if len(splits["dev"]) < dev_size else "train")
        for source in groups[key]:
            target = translations[source].most_common(1)[0][0]
            splits[split].append({
                "id": f"gettext-{target_lang}-{hashlib.sha1(source.encode()).hexdigest()[:12]}",
                "kind": "gettext", "src_lang": "en", "tgt_lang": target_lang,
                "source": source, "target": target, "domain": domains[(source, target)],
            })
    if not splits["train"]:
        raise NeftError(f"only {len(translations)} usable messages for {target_lang!r}, none left "
                        "for train: lower dev_size/test_size or min_words")
    return splits
