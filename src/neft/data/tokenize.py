"""Tokenisation (the loss on the target only), the tokenized dataset and its length
statistics, and the collator that pads batches."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import NeftError
from .prompts import render_example
from .records import TASKS, check_choice, require_fields

IGNORE_INDEX = -100  # label value that the loss skips (torch's cross_entropy default)


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
    check_choice(task, TASKS, "task")
    examples, lengths = [], []
    for i, record in enumerate(records):
        require_fields(record, task, f"record {i}")
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
