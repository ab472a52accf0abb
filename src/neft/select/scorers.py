"""Scorers that need no training data: cosine (the paper), random, magnitude.

A scorer returns one score per candidate neuron (a tensor per group) and the settings
to record; higher scores are selected first (neft.select.registry).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.neurons import NeuronGroup
from ..errors import NeftError
from .registry import ScoreInput, Scores, register_scorer
from .weights import WeightSource, by_module, cosine, logical_matrices, neuron_vectors


def cosine_similarities(model: nn.Module, groups: list[NeuronGroup], base: WeightSource,
                        reference: WeightSource, progress: bool = True) -> list[torch.Tensor]:
    """Per-neuron cosine similarity between two versions of the candidate matrices,
    one module at a time (float64)."""
    modules = by_module(groups)
    sims: list[torch.Tensor] = [torch.empty(0)] * len(groups)
    pairs = zip(logical_matrices(base, model, list(modules)),
                logical_matrices(reference, model, list(modules)), strict=True)
    for (module, before), (_, after) in tqdm(pairs, total=len(modules), desc="cosine",
                                             unit="module", disable=not progress):
        for i in modules[module]:
            sims[i] = cosine(neuron_vectors(before, groups[i]), neuron_vectors(after, groups[i]))
    return sims


def _reference_of(inp: ScoreInput, scorer: str) -> WeightSource:
    if inp.reference is None:
        raise NeftError(f"scorer {scorer!r} compares with a fine-tuned checkpoint: pass "
                        "reference= (CLI --reference PATH), or use scorer 'probe' to fine-tune "
                        "one briefly")
    return inp.reference


def _describe(reference: WeightSource) -> str:
    return type(reference).__name__ if isinstance(reference, nn.Module) else str(reference)


def score_cosine(inp: ScoreInput) -> Scores:
    """Lowest similarity to the fine-tuned reference first (the paper's Algorithm 1)."""
    reference = _reference_of(inp, "cosine")
    sims = cosine_similarities(inp.model, inp.groups, inp.weights, reference, inp.progress)
    return [1 - s for s in sims], {"reference": _describe(reference), "selects": "lowest cosine"}


def score_random(inp: ScoreInput) -> Scores:
    """Uniform random neurons, reproducible from the seed: the control the paper lacks."""
    generator = torch.Generator().manual_seed(inp.seed)
    values = torch.rand(sum(g.count for g in inp.groups), generator=generator, dtype=torch.float64)
    return list(values.split([g.count for g in inp.groups])), {"selects": "uniform random"}


def score_magnitude(inp: ScoreInput) -> Scores:
    """Smallest L2 norm first. Static and free: a fixed-size update turns a short vector
    by a larger angle, and cosine selection is seen to favour low-norm neurons."""
    modules = by_module(inp.groups)
    scores: list[torch.Tensor] = [torch.empty(0)] * len(inp.groups)
    for module, weight in logical_matrices(inp.weights, inp.model, list(modules)):
        for i in modules[module]:
            scores[i] = -neuron_vectors(weight, inp.groups[i]).double().norm(dim=1)
    return scores, {"selects": "lowest L2 norm"}


register_scorer("cosine", score_cosine, needs_reference=True,
                help="vs --reference, a fine-tuned checkpoint (the paper)")
register_scorer("random", score_random, help="uniform random (seeded): the default and the control")
register_scorer("magnitude", score_magnitude, help="lowest L2 norm")
