"""Teacher-forced scores that need no generation: test loss and drift from the base model.

    loss = target_loss(model, tokenizer, records, task="translation")      # nats per token
    moved = drift(model, base, tokenizer, texts)                           # KL(base || tuned)

*Test loss* is the mean negative log-likelihood per target token of the references, with
the prompt template and target masking of training (data.build_dataset), so it is the
dev loss of training measured on another split. *Drift* is KL(base || tuned) per token on
general text that no task trains on: how far fine-tuning moved the model's predictions
away from the base model's where it should not have changed them (forgetting). Its
companion, the signed change in loss on that text, can fall while drift rises.

Both keep per-record sums (nats and token counts), so that two models can be compared
record by record and resampled together (paired bootstrap).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.loading import check_length
from ..core.precision import bf16_compute
from ..data.tokenize import IGNORE_INDEX, DataCollator, build_dataset, encode_prompt
from ..errors import NeftError


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise NeftError("the tokenizer has no pad or eos token: set tokenizer.pad_token")
    return pad


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped longest first, so rows of a batch have similar lengths."""
    if batch_size < 1:
        raise NeftError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class _EvalMode:
    """Eval mode and no autograd for the block; the previous mode afterwards. no_grad, not
    inference_mode: a model measured in the middle of training (compare's points) must not
    keep inference tensors (a NeuronDeltaLayer caches weight slices)."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models
        self.modes = [m.training for m in models]

    def __enter__(self) -> None:
        for model in self.models:
            model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.grad.__exit__(*exc)
        for model, mode in zip(self.models, self.modes, strict=True):
            model.train(mode)


def _log_probs(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """float32 next-token log-probabilities at the positions keep (batch, length - 1) marks,
    one row each: the vocabulary-wide work skips prompts and padding."""
    return torch.log_softmax(logits[:, :-1][keep], -1, dtype=torch.float32)


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -log_probs.gather(1, targets[:, None])[:, 0]


def _row_sums(values: torch.Tensor, keep: torch.Tensor) -> list[float]:
    """Per batch row sums (float64) of one value per kept position."""
    rows = keep.nonzero(as_tuple=True)[0]
    return torch.zeros(keep.shape[0], dtype=torch.float64).index_add_(
        0, rows.cpu(), values.double().cpu()).tolist()


def target_loss(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    task: str = "translation",
    template: str = "auto",
    source_lang: str | None = None,
    target_lang: str | None = None,
    max_length: int = 512,
    batch_size: int = 16,
    progress: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """Mean NLL per target token over all records, and each record's (nats, tokens).

    Returns {"loss", "tokens", "nll": [per record sum], "token_counts": [per record]}.
    A record whose target was cut away entirely by max_length counts 0 tokens. bf16: the
    forward passes run under bfloat16 autocast (core.precision).
    """
    if not records:
        raise NeftError("no records to compute a loss on")
    dataset = build_dataset(records, tokenizer, task, max_length=max_length, template=template,
                            src_lang=source_lang, tgt_lang=target_lang)
    collate = DataCollator(_pad_id(tokenizer))
    device = _device(model)
    nll = [0.0] * len(dataset)
    counts = [0] * len(dataset)
    lengths = [len(example["input_ids"]) for example in dataset.examples]
    check_length(model, max(lengths), f"the longest example (max_length {max_length})",
                 "pass --max_length {room} or less")
    with _EvalMode(model), bf16_compute(bf16, model), tqdm(
            total=len(dataset), desc="test loss", unit="ex",
                                disable=not progress, file=sys.stderr) as bar:
        for batch in _batches(lengths, batch_size):
            inputs = {k: v.to(device) for k, v in collate([dataset[i] for i in batch]).items()}
            logits = model(input_ids=inputs["input_ids"],
                           attention_mask=inputs["attention_mask"]).logits
            keep = inputs["labels"][:, 1:] != IGNORE_INDEX
            targets = inputs["labels"][:, 1:][keep]
            sums = _row_sums(_nll(_log_probs(logits, keep), targets), keep)
            tokens = keep.sum(1).tolist()
            for row, index in enumerate(batch):
                nll[index], counts[index] = sums[row], tokens[row]
            bar.update(len(batch))
    total = sum(counts)
    if not total:
        raise NeftError("no target tokens to score: the records have empty targets or "
                        "max_length leaves no room for them")
    return {"loss": sum(nll) / total, "tokens": total, "nll": nll, "token_counts": counts}


def text_windows(tokenizer: Any, texts: Sequence[str], max_length: int
                 ) -> list[tuple[int, list[int]]]:
    """(text index, token ids) windows of at most max_length tokens: a long text is cut
    into consecutive windows, each scored on its own."""
    if max_length < 2:
        raise NeftError(f"max_length must be at least 2, not {max_length}")
    windows = []
    for index, text in enumerate(texts):
        ids = encode_prompt(tokenizer, text)
        for start in range(0, len(ids), max_length):
            piece = ids[start:start + max_length]
            if len(piece) >= 2:
                windows.append((index, piece))
    return windows


def drift(
    model: nn.Module,
    base: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int = 512,
    batch_size: int = 8,
    progress: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """KL(base || tuned) per predicted token on texts, and the loss of each model there.

    Returns {"kl", "loss_base", "loss_tuned", "loss_change" (tuned - base), "tokens",
    "kl_sums", "nll_base", "nll_tuned", "token_counts"} (per text sums in nats). bf16: both
    models' forward passes run under bfloat16 autocast (core.precision).
    """
    if not texts:
        raise NeftError("no general text to measure drift on")
    windows = text_windows(tokenizer, texts, max_length)
    if not windows:
        raise NeftError("the general texts are too short to measure drift on (2+ tokens each)")
    check_length(model, max(len(ids) for _, ids in windows),
                 f"a drift window (max_length {max_length})", "pass --max_length {room} or less")
    pad = _pad_id(tokenizer)
    device = _device(model)
    kl = [0.0] * len(texts)
    nll_base = [0.0] * len(texts)
    nll_tuned = [0.0] * len(texts)
    counts = [0] * len(texts)
    with _EvalMode(model, base), bf16_compute(bf16, model, base), tqdm(
            total=len(windows), desc="drift", unit="win",
                                      disable=not progress, file=sys.stderr) as bar:
        for batch in _batches([len(ids) for _, ids in windows], batch_size):
            width = max(len(windows[i][1]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = windows[i][1]
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            keep = mask[:, 1:].bool()
            targets = input_ids[:, 1:][keep]
            tuned_logits = model(input_ids=input_ids, attention_mask=mask).logits
            base_logits = base(input_ids=input_ids.to(_device(base)),
                               attention_mask=mask.to(_device(base))).logits.to(device)
            log_tuned = _log_probs(tuned_logits, keep)
            log_base = _log_probs(base_logits, keep)
            sums = {
                "base": _row_sums(_nll(log_base, targets), keep),
                "tuned": _row_sums(_nll(log_tuned, targets), keep),
                "tokens": keep.sum(1).tolist(),
            }
            difference = log_base - log_tuned
            sums["kl"] = _row_sums(torch.linalg.vecdot(log_base.exp_(), difference), keep)
            for row, i in enumerate(batch):
                text = windows[i][0]
                kl[text] += sums["kl"][row]
                nll_base[text] += sums["base"][row]
                nll_tuned[text] += sums["tuned"][row]
                counts[text] += sums["tokens"][row]
            bar.update(len(batch))
    total = sum(counts)
    return {"kl": sum(kl) / total, "loss_base": sum(nll_base) / total,
            "loss_tuned": sum(nll_tuned) / total,
            "loss_change": (sum(nll_tuned) - sum(nll_base)) / total, "tokens": total,
            "kl_sums": kl, "nll_base": nll_base, "nll_tuned": nll_tuned, "token_counts": counts}
