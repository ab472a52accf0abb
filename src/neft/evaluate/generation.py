"""Greedy generation from the training prompts, batched with left padding.

Prompts are rendered by neft.data.render_example and tokenized like training prompts, so
the model sees at test time exactly what it saw before its targets. Generation is batched
with left padding (decoder-only models continue from the last position), prompts sorted by
length to waste little padding, and the outputs returned in input order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from jinja2 import TemplateError
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from ..core.loading import (
    check_length,
)
from ..data.tokenize import encode_prompt
from ..errors import NeftError

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
