"""Neuron utilization (the paper's section 6) and how fine-tuning reorders it.

The paper scores every neuron by "the maximum Pearson correlation between its weight
vector and the mean hidden state of each preceding layer (mean over an evaluation set)"
and ranks all neurons by it. Where the paper is not explicit, we read it as follows:

* hidden states are the residual stream, ``output_hidden_states=True``: state 0 is the
  embedding output and state i the output of block i-1, i.e. the input of block i;
* "preceding layers" of a neuron in block L are states 0..L: everything that flows into
  block L (its own output and the final norm's output are not used);
* the mean is over every non-padding token of every example (token-weighted), with the
  examples rendered and tokenized exactly as for training (prompt + reference answer);
* the Pearson correlation is taken across the hidden dimension, between the neuron's
  vector (an up-projection row or a down-projection column, both hidden-size) and a
  mean state; the maximum is of the signed r, as the paper says, not of |r|;
* ranks run over the whole candidate pool at once, 1 = the most utilized; ties (e.g.
  two identical models) keep pool order, so identical models give zero rank change.

Cost: one forward pass per model over the evaluation set (the mean states are summed
batch by batch, never stored), then one layer's matrices at a time in float64 against
at most L+1 mean states: a [neurons, L+1] matrix product, no loop over neurons.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.io import atomic_save_file, write_json
from ..core.loading import EMBEDDED_NAMES, EMBEDDED_ORIGIN, check_length
from ..core.model import adapter_folder, read_adapter_config
from ..core.neuron_set import NeuronSet
from ..core.neurons import PAPER_POOL, NeuronGroup, find_neuron_groups
from ..data.records import load_records
from ..data.tokenize import DataCollator, build_dataset
from ..errors import NeftError
from ..evaluate.load import load_for_eval
from ..select.weights import by_module, logical_matrices, neuron_vectors
from .plots import layer_means, plot_utilization
from .sets import load_set

# The paper: "strongly affected" = |rank change| > 100,000 of 704,512 Llama-2-7B neurons.
PAPER_THRESHOLD = 100_000

Example = Mapping[str, Sequence[int]]


@dataclass
class Utilization:
    """Per-neuron utilization of one model; tensors are flat over ``groups`` in order.

    ``scores``: max Pearson r (float64); ``best_state``: which hidden state gave it
    (0 = embeddings, i = output of block i-1); ``ranks``: 1 = most utilized.
    """

    groups: list[NeuronGroup]
    scores: torch.Tensor
    best_state: torch.Tensor
    ranks: torch.Tensor = field(init=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ranks = rank(self.scores)

    def per_group(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat per-neuron tensor into one tensor per group."""
        return list(values.split([g.count for g in self.groups]))

    def by_neuron(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"<module>::<axis>": tensor}`` indexed by neuron index, like a NeuronSet's
        indices (NaN, or -1 for integers, where a position is not a candidate)."""
        out: dict[str, torch.Tensor] = {}
        for group, part in zip(self.groups, self.per_group(values), strict=True):
            key = f"{group.module}::{group.axis}"
            if key not in out:
                size = group.shape[0] if group.axis == "rows" else group.shape[1]
                fill = float("nan") if part.is_floating_point() else -1
                out[key] = torch.full((size,), fill, dtype=part.dtype)
            out[key][group.start:group.start + group.count] = part
        return out

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``<module>::<axis>::<prefix>utilization|rank|best_state`` for a safetensors file."""
        out: dict[str, torch.Tensor] = {}
        for name, values in (("utilization", self.scores), ("rank", self.ranks),
                             ("best_state", self.best_state)):
            out.update({f"{key}::{prefix}{name}": tensor
                        for key, tensor in self.by_neuron(values).items()})
        return out


def rank(scores: torch.Tensor) -> torch.Tensor:
    """1 for the highest score, n for the lowest; ties keep their order (stable)."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(order) + 1)
    return ranks


def mean_hidden_states(model: nn.Module, examples: Sequence[Example], batch_size: int = 8,
                       pad_token_id: int = 0, progress: bool = True) -> tuple[torch.Tensor, int]:
    """([states, hidden] float64 means over every non-pad token, tokens counted).

    Only the backbone runs (no lm_head: logits are not needed); sums are in float64.
    """
    if not examples:
        raise NeftError("no evaluation examples: utilization averages hidden states over an "
                        "evaluation set; pass data with at least one record")
    if batch_size < 1:
        raise NeftError(f"batch_size must be >= 1, got {batch_size}")
    from transformers import PreTrainedModel

    backbone = model.base_model if isinstance(model, PreTrainedModel) else model
    device = next(model.parameters()).device
    collate = DataCollator(pad_token_id)
    sums: torch.Tensor | None = None
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(examples), batch_size), desc="hidden states",
                              unit="batch", disable=not progress):
                chunk = examples[start:start + batch_size]
                input_ids = collate([{"input_ids": e["input_ids"]} for e in chunk])["input_ids"]
                lengths = torch.tensor([len(e["input_ids"]) for e in chunk])
                mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long().to(device)
                states = backbone(input_ids=input_ids.to(device), attention_mask=mask,
                                  output_hidden_states=True).hidden_states
                weights = mask.double()
                batch_sums = torch.stack([torch.einsum("bth,bt->h", s.double(), weights)
                                          for s in states])
                sums = batch_sums if sums is None else sums + batch_sums
                tokens += int(mask.sum())
    finally:
        model.train(was_training)
    assert sums is not None
    return (sums / tokens).cpu(), tokens


def _standardize(rows: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm, so that a dot product is Pearson's r.
    A constant row stays zero (r = 0 with everything)."""
    centred = rows - rows.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)


def utilization(model: nn.Module, means: torch.Tensor, groups: list[NeuronGroup],
                progress: bool = True, metadata: Mapping[str, Any] | None = None,
                ) -> Utilization:
    """Score every neuron of ``groups`` against the mean states ``means`` [L+1, hidden].

    A neuron of block L is compared with states 0..L (see the module docstring). Only
    neurons whose vector has the hidden size can be compared with the residual stream.
    """
    hidden = means.shape[1]
    for group in groups:
        if not 0 <= group.layer < means.shape[0] - 1:  # states: embeddings + one per block
            raise NeftError(f"{group.module} is not inside a numbered block of this model, so "
                            "it has no preceding layers: utilization covers block neurons only")
        if group.neuron_params != hidden:
            raise NeftError(f"{group.module} {group.axis} neurons have {group.neuron_params} "
                            f"values but the hidden state has {hidden}: utilization compares "
                            "neurons with the residual stream (up rows, down columns)")
    unit_means = _standardize(means.double())
    scores: list[torch.Tensor] = [torch.empty(0)] * len(groups)
    best: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(groups)
    modules = by_module(groups)
    layers: dict[int, list[str]] = {}
    for module, members in modules.items():
        layers.setdefault(groups[members[0]].layer, []).append(module)
    for layer in tqdm(sorted(layers), desc="utilization", unit="layer", disable=not progress):
        for module, weight in logical_matrices(model, model, layers[layer]):
            states = unit_means[:layer + 1].to(weight.device)
            for i in modules[module]:
                vectors = neuron_vectors(weight.detach(), groups[i]).double()
                r = _standardize(vectors) @ states.T  # [neurons, L+1]: Pearson r with each
                value, index = r.max(dim=1)
                scores[i], best[i] = value.cpu(), index.cpu()
    meta = {"states": means.shape[0], "hidden_size": hidden, **(metadata or {})}
    return Utilization(groups, torch.cat(scores), torch.cat(best), meta)


def trained_mask(neurons: NeuronSet, groups: list[NeuronGroup]) -> torch.Tensor:
    """Flat boolean mask over the pool: which neurons the set holds."""
    parts = [torch.isin(g.indices, neurons.get(g.module, g.axis)) for g in groups]
    return torch.cat(parts)


def scaled_threshold(pool: int) -> int:
    """The paper's 100,000 of 704,512 neurons, scaled to this pool (14.2%)."""
    return round(pool * PAPER_THRESHOLD / PAPER_POOL)


def _same_pool(before: Utilization, after: Utilization) -> None:
    keys = [[(g.module, g.axis, g.start, g.count) for g in u.groups] for u in (before, after)]
    if keys[0] != keys[1]:
        raise NeftError("the two models have different candidate neurons: compare a model with "
                        "a fine-tuned copy of itself (same architecture)")


def compare(before: Utilization, after: Utilization, trained: NeuronSet | None = None,
            threshold: int | None = None, buckets: int = 10) -> dict[str, Any]:
    """How fine-tuning reordered utilization: the paper's Figure 2 and its neuron counts.

    ``rank_change`` = rank after - rank before (> 0: the neuron fell, i.e. is less
    utilized relative to the others). Strongly affected: |change| > ``threshold``
    (default: the paper's, scaled to the pool); suppressed: strongly affected and fell;
    indirectly affected: strongly affected but not in ``trained`` (None without it).
    Buckets are percentiles of the rank before (bucket 0 = the most utilized).
    """
    _same_pool(before, after)
    if buckets < 1:
        raise NeftError(f"buckets must be >= 1, got {buckets}")
    pool = len(before.ranks)
    if buckets > pool:
        raise NeftError(f"buckets {buckets} is more than the {pool} neurons ranked; pass "
                        f"--buckets {pool} or fewer")
    threshold = scaled_threshold(pool) if threshold is None else threshold
    if threshold < 0:
        raise NeftError(f"threshold must be >= 0, got {threshold}")
    change = after.ranks - before.ranks
    size = change.abs().double()
    strong = size > threshold
    bucket = (before.ranks - 1) * buckets // pool
    counts = torch.bincount(bucket, minlength=buckets)
    sums = torch.zeros(buckets, dtype=torch.float64).scatter_add_(0, bucket, size)
    d = change.double()
    spearman = 1 - 6 * d.pow(2).sum() / (pool * (pool**2 - 1)) if pool > 1 else 1.0
    result: dict[str, Any] = {
        "pool": pool,
        "threshold": threshold,
        "threshold_rule": (f"paper's {PAPER_THRESHOLD:,} of {PAPER_POOL:,} scaled to the pool"
                           if threshold == scaled_threshold(pool) else "given"),
        "mean_abs_rank_change": float(size.mean()),
        "spearman": float(spearman),
        "strongly_affected": int(strong.sum()),
        "suppressed": int((strong & (change > 0)).sum()),
        "promoted": int((strong & (change < 0)).sum()),
        "trained": None,
        "indirectly_affected": None,
        "buckets": [{"percentile": f"{100 * b / buckets:g}-{100 * (b + 1) / buckets:g}",
                     "neurons": int(counts[b]),
                     "mean_abs_rank_change": float(sums[b] / counts[b]) if counts[b] else None}
                    for b in range(buckets)],
    }
    if trained is not None:
        mask = trained_mask(trained, before.groups)
        result.update(trained=int(mask.sum()), trained_strongly_affected=int((strong & mask).sum()),
                      indirectly_affected=int((strong & ~mask).sum()))
    return result



def format_utilization(util: Utilization, other: Utilization | None = None,
                       comparison: Mapping[str, Any] | None = None) -> str:
    """Mean utilization per layer and kind (and the second model's), then the comparison."""
    ours = layer_means(util)
    theirs = layer_means(other) if other is not None else {}
    kinds = list(ours)
    columns = [(kind, "") for kind in kinds] + [(kind, "ref") for kind in kinds if theirs]
    width = max(9, *(len(k) + len(r) + 1 for k, r in columns))
    lines = [f"mean utilization (max Pearson r) of {len(util.scores):,} neurons"
             + (" (ref: the second model)" if theirs else ""),
             f"{'layer':>5} " + " ".join(f"{(k + ' ' + r).strip():>{width}}" for k, r in columns)]
    layers = sorted({layer for per in ours.values() for layer in per})
    for layer in layers:
        cells = [(theirs if r else ours)[k].get(layer) for k, r in columns]
        lines.append(f"{layer:>5} " + " ".join(
            f"{'-' if v is None else f'{v:.3f}':>{width}}" for v in cells))
    if comparison:
        c = comparison
        lines += ["", f"rank change (rank after - rank before; pool {c['pool']:,}): mean |change| "
                      f"{c['mean_abs_rank_change']:,.0f}, Spearman {c['spearman']:.4f}",
                  "utilization percentile (before)  neurons  mean |rank change|"]
        for b in c["buckets"]:
            value = b["mean_abs_rank_change"]
            lines.append(f"{b['percentile'] + '%':>30}  {b['neurons']:>7,}  "
                         f"{'-' if value is None else f'{value:,.0f}':>18}")
        indirect = c["indirectly_affected"]
        lines += ["", f"strongly affected (|change| > {c['threshold']:,}, "
                      f"{c['threshold_rule']}): {c['strongly_affected']:,}",
                  f"  suppressed (fell): {c['suppressed']:,}   promoted (rose): {c['promoted']:,}",
                  "  indirectly affected (not trained): "
                  + ("n/a (no trained neuron set)" if indirect is None
                     else f"{indirect:,} (trained: {c['trained']:,}, of which strongly affected "
                          f"{c['trained_strongly_affected']:,})")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- end to end


def evaluation_examples(data: str, tokenizer: Any, task: str = "translation",
                        split: str | None = "test", max_samples: int | None = None,
                        max_length: int = 256, template: str = "auto",
                        source_lang: str | None = None, target_lang: str | None = None,
                        ) -> list[dict[str, list[int]]]:
    """Evaluation records rendered and tokenized as for training (prompt + answer)."""
    records = load_records(data, split=split, limit=max_samples, task=task)
    return build_dataset(records, tokenizer, task, max_length=max_length, template=template,
                         src_lang=source_lang, tgt_lang=target_lang).examples


@dataclass
class UtilizationResult:
    """Utilization of a model, optionally of a second one and how their ranks differ."""

    model: Utilization
    reference: Utilization | None = None
    comparison: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        summary = {"settings": self.settings, "pool": len(self.model.scores),
                   "model": {**self.model.metadata, "layer_means": layer_means(self.model)}}
        if self.reference is not None:
            summary["reference"] = {**self.reference.metadata,
                                    "layer_means": layer_means(self.reference)}
        summary["comparison"] = self.comparison
        return summary

    def format(self) -> str:
        return format_utilization(self.model, self.reference, self.comparison)

    def save(self, output_dir: str | os.PathLike) -> list[str]:
        """utilization.json (summary), utilization.safetensors (every neuron's score, rank,
        best state and, with a reference, its rank change) and utilization.png."""

        output_dir = os.fspath(output_dir)
        paths = [os.path.join(output_dir, f"utilization.{ext}")
                 for ext in ("json", "safetensors", "png")]
        tensors = self.model.tensors()
        if self.reference is not None:
            tensors.update(self.reference.tensors("reference_"))
            change = self.reference.ranks - self.model.ranks
            tensors.update({f"{key}::rank_change": tensor
                            for key, tensor in self.model.by_neuron(change).items()})
        write_json(paths[0], self.to_dict())
        atomic_save_file(tensors, paths[1], {"format": "neft.utilization",
                                             "settings": json.dumps(self.settings, default=str)})
        plot_utilization(self.model, paths[2], self.reference, self.comparison,
                         labels=(self.settings.get("model_label", "model"),
                                 self.settings.get("reference_label", "reference")))
        return paths


def _base_of(adapter: str) -> str:
    """The base model an adapter folder recorded (as `neft eval` resolves it)."""
    saved = read_adapter_config(os.path.expanduser(adapter), peft=True)
    base = saved.get("base_model_name_or_path")
    return EMBEDDED_NAMES[0] if not base or base == EMBEDDED_ORIGIN else base


def _free_memory() -> None:
    """Give back a model the caller has just deleted (before loading the next)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def analyze_utilization(
    data: str,
    model: str | None = None,
    *,
    adapter: str | None = None,
    reference: str | None = None,
    neurons: str | None = None,
    split: str | None = "test",
    task: str = "translation",
    template: str = "auto",
    source_lang: str | None = None,
    target_lang: str | None = None,
    max_samples: int | None = None,
    max_length: int = 256,
    batch_size: int = 8,
    include_gate: bool = False,
    target_modules: Mapping[str, str] | None = None,
    threshold: int | None = None,
    buckets: int = 10,
    dtype: str | None = None,
    progress: bool = True,
) -> UtilizationResult:
    """Utilization of ``model`` on ``data``; with ``adapter`` (``model`` + adapter, merged)
    or ``reference`` (another model or merged checkpoint), the rank change per neuron.

    One model is in memory at a time. Both see the same token ids (the first model's
    tokenizer: the second is a fine-tuned copy). ``neurons`` (a NeuronSet file) says which
    neurons were trained, for "indirectly affected"; a neft adapter tells it by itself.
    """

    if adapter and reference:
        raise NeftError("give either --adapter (compare the model with model + adapter) or "
                        "--reference (compare it with another checkpoint), not both")
    given, adapter = adapter, adapter_folder(adapter) if adapter else None
    base = model or (_base_of(adapter) if adapter else None)
    if base is None:
        raise NeftError("--model is required: the model whose neurons to score "
                        "(e.g. --model smollm2-135m)")

    def measure(name: str, loaded: nn.Module, examples: list[dict[str, list[int]]],
                pad_id: int) -> Utilization:
        groups = find_neuron_groups(loaded, target_modules, include_gate)
        means, tokens = mean_hidden_states(loaded, examples, batch_size, pad_id, progress)
        return utilization(loaded, means, groups, progress, {"name": name, "tokens": tokens})

    try:
        loaded, tokenizer, _ = load_for_eval(base, dtype=dtype)
    except NeftError as exc:
        if model is not None:
            raise
        raise NeftError(f"adapter {adapter} names its base model {base!r} (base_model_name_or_"
                        f"path in its adapter_config.json), which cannot be loaded: {exc}; "
                        "pass the base model with --model") from exc
    examples = evaluation_examples(data, tokenizer, task, split, max_samples, max_length,
                                   template, source_lang, target_lang)

    check_length(loaded, max((len(e["input_ids"]) for e in examples), default=0),
                 f"the longest example (max_length {max_length})",
                 "pass --max_length {room} or less")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    first = measure(base, loaded, examples, pad_id)
    del loaded
    _free_memory()
    settings: dict[str, Any] = {
        "model": base, "adapter": given, "reference": reference, "neurons": neurons,
        "data": data, "split": split, "task": task, "template": template,
        "examples": len(examples), "max_length": max_length, "include_gate": include_gate,
        "target_modules": dict(target_modules) if target_modules else "preset",
        "model_label": "base" if adapter else "model",
        "reference_label": "base + adapter" if adapter else "reference"}
    if not (adapter or reference):
        return UtilizationResult(first, settings=settings)

    loaded, _, described = load_for_eval(base if adapter else reference, adapter, dtype=dtype)
    second = measure(given or reference or "", loaded, examples, pad_id)
    del loaded
    _free_memory()
    trained = None
    if neurons:
        trained = load_set(neurons)
    elif described.get("adapter_type") == "neft":
        trained = load_set(adapter)
    comparison = compare(first, second, trained, threshold, buckets)
    return UtilizationResult(first, second, comparison, settings)
