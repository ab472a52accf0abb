"""Neuron selection: score every candidate neuron, keep a budget of the best.

    neurons = select_neurons(model, scorer="cosine", reference="ft-checkpoint/", percent=6)
    neurons.save("selection.safetensors")

Scorers live in one registry (registry.py; `register_scorer` adds one, with its knobs):
``cosine`` (the paper, against a fine-tuned checkpoint), ``probe`` (the paper's short
full fine-tuning, then cosine), ``reversed`` (the paper's ablation), ``random`` (the
default: no scorer has beaten it, registry.DEFAULT_SCORER; by default every selection
leaves out the massive-activation units, massive.DEFAULT_AVOID, which did beat it, but
method random, the control, does not),
``magnitude``, and ours:
``fast-probe`` (a few AdamW steps on the candidate matrices only, then cosine: the probe's
selection at a tenth of its time and NeFT training's memory) and ``gradient`` (gradient
statistics, no update at all). scoring.py scores and selects, budget.py sizes budgets,
sets.py combines sets, report.py summarises one.
"""

from .budget import QUOTAS, Budget, linear_shapes, lora_parameters, resolve_budget
from .registry import SCORERS, ScoreInput, Scorer, Scores, get_scorer, register_scorer
from .report import format_summary
from .scoring import NeuronScores, open_model, score_neurons, select_neurons
from .sets import intersect_sets, transfer_set, union_sets
from .weights import WeightSource

__all__ = ["QUOTAS", "SCORERS", "Budget", "NeuronScores", "ScoreInput", "Scorer", "Scores",
           "WeightSource", "format_summary", "get_scorer", "intersect_sets", "linear_shapes",
           "lora_parameters", "open_model", "register_scorer", "resolve_budget",
           "score_neurons", "select_neurons", "transfer_set", "union_sets"]
