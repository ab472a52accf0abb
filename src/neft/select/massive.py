"""Massive-activation units: the few MLP units whose activation dwarfs the rest of their
layer (Sun et al. 2024, "Massive activations in large language models"). Training one
of them moves the model far on all text: in SmolLM2 one such unit (layer 11, 463x its
layer's median) carried 63% of a random selection's drift, and fast-probe picks most of
the late layers' ones at every seed (benchmarks/results/massive_units.md).
``avoid="massive"`` leaves them out of any selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.loading import text_config
from ..core.neurons import NeuronGroup
from ..errors import NeftError

DEFAULT_RATIO = 40.0  # a round threshold, not tuned (SmolLM2-135M: 24 units at 41-463x)
BATCHES, BATCH_SIZE = 8, 4
SAMPLES = (32, 64)  # without task data: the model's own texts, count x tokens
# What select_neurons, `neft select` and `neft train` leave out unless told: one place
# (`neft train --method random`, the control, leaves nothing out: Method.avoid).
DEFAULT_AVOID: str | None = "massive"


def parse_avoid(avoid: str | None, also: str = "") -> float | None:
    """'massive' or 'massive:R' -> R, the multiple of the layer's median that counts;
    None or 'none' -> None (nothing left out). ``also`` names the caller's other values
    in the error."""
    if avoid is None or avoid.lower() == "none":
        return None
    name, _, ratio = avoid.partition(":")
    if name != "massive":
        raise NeftError(f"avoid {avoid!r} is not known; use massive or massive:R (units "
                        f"whose mean |activation| is R x their layer's median, default "
                        f"{DEFAULT_RATIO:g}), " + (f"none or {also}" if also else "or none"))
    try:
        value = float(ratio) if ratio else DEFAULT_RATIO
    except ValueError:
        value = float("nan")
    if not value > 1:
        raise NeftError(f"avoid {avoid!r}: R must be a number above 1, e.g. massive:40")
    return value


def model_text(model: nn.Module, seed: int, pad_id: int) -> tuple[list[dict[str, Any]], str]:
    """Text for the pass without task data, and what it is: the model's own samples
    (SAMPLES), or for a backbone that cannot generate, as many seeded random token ids:
    massive units are the model's (on SmolLM2-135M random ids mark the same four strongest
    units as its samples, and 38 units at 40x against the samples' 17)."""
    from .datadriven import base_samples, sample_length

    count, length = SAMPLES
    if callable(getattr(model, "generate", None)):
        return base_samples(model, count, length, seed, pad_id), "the model's own samples"
    vocab = getattr(text_config(model), "vocab_size", None)
    if not vocab:
        raise NeftError("avoid=massive without data needs a model that can generate, or a "
                        "config with vocab_size; pass data= (CLI --data) or avoid='none'")
    length = sample_length(model, length)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (count, length), generator=generator)
    return [{"input_ids": row, "labels": row} for row in ids.tolist()], "random token ids"


def activation_ratios(model: nn.Module, groups: Sequence[NeuronGroup],
                      examples: Sequence[Any], pad_id: int, seed: int = 1234
                      ) -> dict[int, torch.Tensor]:
    """Column group position -> each unit's mean |input| to the group's module (down_proj)
    over a few batches of the examples, as a multiple of the median over its units that
    were active at all."""
    from .datadriven import batches

    if not examples:
        raise NeftError("avoid=massive measures activations on the task data: pass data=")
    columns = [i for i, g in enumerate(groups) if g.axis == "cols"]
    sums = {i: torch.zeros(groups[i].count, dtype=torch.float64) for i in columns}
    modules = dict(model.named_modules())
    mask: list[torch.Tensor] = []

    def record(index: int):
        group = groups[index]

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            # [batch, seq, width], or flattened to [batch x seq, width] (OPT's fc2, a MoE's
            # shared expert)
            part = inputs[0].detach()[..., group.start:group.start + group.count]
            part = part.reshape(-1, group.count)
            tokens = mask[0].reshape(-1).to(part.device)
            if part.shape[0] != tokens.numel():
                raise NeftError(f"{group.module} sees {part.shape[0]} positions of a batch of "
                                f"{tokens.numel()} tokens, so its massive units cannot be "
                                "measured: pass avoid='none' (CLI --avoid none)")
            sums[index] += part[tokens].abs().double().sum(0).cpu()
        return hook

    hooks = [modules[groups[i].module].register_forward_pre_hook(record(i)) for i in columns]
    device = next(model.parameters()).device
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stream = batches(examples, BATCH_SIZE, seed, pad_id, device)
            for _ in range(min(BATCHES, max(1, len(examples) // BATCH_SIZE))):
                batch = next(stream)
                attention = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
                mask[:] = [attention.bool().cpu()]
                tokens += int(mask[0].sum())
                model(input_ids=batch["input_ids"], attention_mask=attention)
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    ratios = {}
    for i in columns:
        mean = sums[i] / max(tokens, 1)
        active = mean[mean > 0]  # ReLU models (OPT) can have most units dead: not the scale
        ratios[i] = mean / active.median() if active.numel() else torch.zeros_like(mean)
    return ratios


def massive_units(model: nn.Module, groups: Sequence[NeuronGroup],
                  examples: Sequence[Any], pad_id: int, ratio: float, seed: int = 1234
                  ) -> dict[int, torch.Tensor]:
    """Group position -> positions (within the group) of its massive units. A unit is
    massive when its mean |input| to a column group's module (down_proj), over a few
    batches of task tokens, is at least ``ratio`` x that module's median (activation_ratios);
    the row groups
    of the same layer and width (up_proj, gate_proj) lose the same units."""
    found: dict[int, torch.Tensor] = {}
    for i, ratios in activation_ratios(model, groups, examples, pad_id, seed).items():
        units = (ratios >= ratio).nonzero().flatten()
        if not units.numel():
            continue
        column = groups[i]
        for j, group in enumerate(groups):
            if j == i or (group.axis == "rows" and group.layer == column.layer
                          and group.count == column.count):
                found[j] = torch.cat([found.get(j, units.new_empty(0)), units]).unique()
    return found
