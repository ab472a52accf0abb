"""The one registry of scorers: `neft select`, `neft train` and select_neurons find them
here, and `neft select --help` lists them from it.

A scorer is a function of a ScoreInput returning one score per candidate neuron (a tensor
per group; higher scores are selected first) and the settings to record. Its knobs are its
``defaults``: any of them can be set from ``score_neurons(scorer_options=...)``,
`neft select --scorer_options k=v` and `neft train --scorer_options k=v` (also YAML),
with nothing else to edit:

    def score_bias(inp):
        settings = scorer_settings(inp, "bias")      # defaults, overridden by the options
        return [torch.rand(g.count) * settings["scale"] for g in inp.groups], settings

    register_scorer("bias", score_bias, defaults={"scale": 1.0})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.neurons import NeuronGroup
from ..errors import NeftError
from .weights import WeightSource

Scores = tuple[list[torch.Tensor], dict[str, Any]]
# The scorer of `neft select`, `neft train`, `neft demo` and select_neurons when none is
# named: one default everywhere. Random neurons: no scorer has beaten them on a front verdict
# (benchmarks/results/README.md), so the cheapest one is the default; the paper's rule is one
# flag away (`probe`, or `cosine` against a checkpoint).
DEFAULT_SCORER = "random"
DATA_WITHOUT_REFERENCE = "without reference"


@dataclass
class ScoreInput:
    """What a scorer may use. ``weights`` is where the base weights are read from: the
    model itself, or its checkpoint when the model was built without weights (meta).
    ``options``: the caller's settings (steps, learning_rate, batch_size, restore and any
    scorer_options)."""

    model: nn.Module
    groups: list[NeuronGroup]
    weights: WeightSource
    seed: int
    reference: WeightSource | None = None
    examples: list[dict[str, list[int]]] | None = None
    pad_token_id: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass(frozen=True)
class Scorer:
    """One scorer. ``needs_data``: True (task data), False, or "without reference" (data
    only when no reference checkpoint is given: reversed). ``needs_reference``: it reads
    a fine-tuned checkpoint (cosine), which only ``neft select`` takes. ``defaults``: its
    knobs."""

    name: str
    fn: Callable[[ScoreInput], Scores]
    needs_data: bool | str = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""
    needs_reference: bool = False

    def wants_data(self, has_reference: bool) -> bool:
        return self.needs_data is True or (self.needs_data == DATA_WITHOUT_REFERENCE
                                           and not has_reference)


SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, fn: Callable[[ScoreInput], Scores], *,
                    needs_data: bool | str = False, defaults: Mapping[str, Any] | None = None,
                    help: str | None = None, needs_reference: bool = False) -> Scorer:
    """Make ``fn`` selectable as ``name`` everywhere (a name used before is an error)."""
    if name in SCORERS:
        raise NeftError(f"scorer {name!r} is registered already")
    if needs_data not in (True, False, DATA_WITHOUT_REFERENCE):
        raise NeftError(f"scorer {name!r}: needs_data must be True, False or "
                        f"{DATA_WITHOUT_REFERENCE!r}")
    text = help if help is not None else (fn.__doc__ or "").strip().split("\n")[0]
    scorer = Scorer(name, fn, needs_data, dict(defaults or {}), text, needs_reference)
    SCORERS[name] = scorer
    return scorer


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise NeftError(f"scorer {name!r} is not known; use one of {', '.join(SCORERS)}")
    return SCORERS[name]


def check_scorer_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Options the scorer has no knob for fail at once (a typo would be ignored)."""
    known = get_scorer(name).defaults
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        hint = f"its options are {', '.join(known)}" if known else "it has no options"
        raise NeftError(f"scorer {name!r} has no option {unknown[0]!r}; {hint}")
    for key, value in (options or {}).items():
        default = known[key]
        number = isinstance(default, int | float) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise NeftError(f"scorer {name!r}: {key} is a number (default {default}), "
                            f"not {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise NeftError(f"scorer {name!r}: {key} is a word (default {default}), "
                            f"not {value!r}")


def scorer_settings(inp: ScoreInput, name: str) -> dict[str, Any]:
    """The scorer's defaults, overridden by the caller's options of the same names; steps
    and batch_size, where a scorer has them, must be positive whole numbers."""
    defaults = get_scorer(name).defaults
    settings = {**defaults, **{k: v for k, v in inp.options.items() if k in defaults}}
    for key in ("steps", "batch_size"):
        if key in settings and (int(settings[key]) != settings[key] or settings[key] < 1):
            raise NeftError(f"{key}={settings[key]} must be a positive whole number")
    return settings
