"""score_neurons (every candidate neuron's score from one registered scorer),
select_neurons (a budget of the best as a NeuronSet), and the set operations."""

from __future__ import annotations

import datetime
import difflib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..core.loading import check_length, ensure_embedded_model, is_embedded, load_model
from ..core.neuron_set import NeuronSet, neuron_set_from_groups
from ..core.neurons import (
    NeuronGroup,
    count_parameters,
    find_neuron_groups,
    model_fingerprint,
    pool_size,
)
from ..core.resources import peak_cuda_mb, peak_rss_mb
from ..errors import NeftError
from . import datadriven as _datadriven  # noqa: F401 - registers probe, fast-probe, gradient
from . import scorers as _scorers  # noqa: F401 - registers cosine, random, magnitude
from .budget import (
    Budget,
    band_groups,
    choose,
    linear_shapes,
    lora_parameters,
    parse_quota,
    resolve_budget,
)
from .datadriven import prepare_examples
from .massive import DEFAULT_AVOID, massive_units, model_text, parse_avoid
from .registry import DEFAULT_SCORER, ScoreInput, check_scorer_options, get_scorer
from .weights import WeightSource

logger = logging.getLogger(__name__)


@dataclass
class NeuronScores:
    """Every candidate neuron's score from one scoring run; select any budget from it.

    ``metadata`` (scorer, settings, model and data fingerprints, time, memory) goes into
    every NeuronSet selected. ``shapes`` are the model's linear layers, for LoRA budgets.
    """

    groups: list[NeuronGroup]
    scores: list[torch.Tensor]
    metadata: dict[str, Any]
    shapes: dict[str, tuple[int, int]]

    def budget(self, *, neurons: int | None = None, percent: float | None = None,
               params: int | None = None, match_lora: int | None = None,
               lora_target_modules: Sequence[str] | None = None) -> Budget:
        lora = (None if match_lora is None
                else lora_parameters(self.shapes, match_lora, lora_target_modules))
        return resolve_budget(self.groups, int(self.metadata["model_parameters"]),
                              neurons=neurons, percent=percent, params=params,
                              lora_params=lora, lora_rank=match_lora)

    def fitted_budget(self, layers: str | None = None, **spec: Any) -> Budget:
        """The budget (as for ``budget``), refused when the layer band holds fewer
        candidates: both are read off the groups, before any scoring."""
        budget = self.budget(**spec)
        band_groups(self.groups, layers, budget.neurons)
        return budget

    def select(self, budget: Budget, quota: str | None = None,
               layers: str | None = None,
               avoid: dict[int, torch.Tensor] | None = None) -> NeuronSet:
        """The budget's best neurons; ``layers`` (see budget.parse_layers) keeps the
        selection to a band of blocks, the budget unchanged; ``avoid`` (group position ->
        positions in it, e.g. massive.massive_units) is never chosen."""
        quota = parse_quota(quota)
        keep = band_groups(self.groups, layers, budget.neurons)
        scores = list(self.scores)
        for i, positions in (avoid or {}).items():
            scores[i] = scores[i].double().clone()
            scores[i][positions] = float("-inf")
        picked = choose([self.groups[i] for i in keep], [scores[i] for i in keep],
                        budget.neurons, quota)
        chosen = {keep[j]: indices for j, indices in picked.items()}
        for i, positions in (avoid or {}).items():
            if i in chosen and bool(torch.isin(chosen[i], positions).any()):
                quota_text = f" (within each {quota}'s share)" if quota else ""
                raise NeftError(f"a budget of {budget.neurons:,} neurons{quota_text} needs "
                                "units that avoid leaves out: lower the budget, or pass "
                                "avoid none")
        metadata = {**self.metadata, "budget": budget.to_dict(), "quota": quota or "global"}
        if layers is not None:
            metadata["layers"] = layers
        if avoid:
            avoided: dict[str, list[int]] = {}
            for i, positions in avoid.items():
                group = self.groups[i]
                avoided.setdefault(f"{group.module}::{group.axis}", []).extend(
                    (positions + group.start).tolist())
            metadata["avoided"] = avoided
        return neuron_set_from_groups(self.groups, chosen, metadata)


def select_neurons(
    model: nn.Module | str,
    scorer: str = DEFAULT_SCORER,
    *,
    neurons: int | None = None,
    percent: float | None = None,
    params: int | None = None,
    match_lora: int | None = None,
    lora_target_modules: Sequence[str] | None = None,
    quota: str | None = None,
    layers: str | None = None,
    avoid: str | None = DEFAULT_AVOID,
    **options: Any,
) -> NeuronSet:
    """Score the model's candidate neurons and keep the budget's best as a NeuronSet.

    Budget: exactly one of ``neurons``, ``percent`` (of ALL model parameters, as in the
    paper), ``params`` or ``match_lora`` (the parameters of LoRA rank R on
    ``lora_target_modules``, default all linear layers but lm_head).
    ``quota``: None ranks all layers together (the paper); ``layer``, ``kind`` or
    ``module`` (layer x kind) rank within each and split the budget by pool size.
    ``layers``: select only in these blocks ('A-B', '3,5,7', 'upper:N', 'lower:N').
    ``avoid``: 'massive' (or 'massive:R') never chooses the units whose mean activation is
    R x their layer's median (select.massive), measured on ``data``, or without data on
    the model's own samples; None or 'none' leaves nothing out.
    ``options``: as for ``score_neurons`` (reference, data, seed, steps, ...). The budget
    is checked before scoring, so a bad one fails fast.
    """
    quota = parse_quota(quota)
    known = [n for n in inspect.signature(score_neurons).parameters
             if n not in ("model", "scorer", "on_ready")]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise NeftError(f"select_neurons has no option {name!r}"
                            + (f"; did you mean {close[0]!r}?" if close else
                               f"; known: {', '.join(known)}"))
    check_scorer_options(scorer, options.get("scorer_options"))  # before a model is loaded
    spec = {"neurons": neurons, "percent": percent, "params": params, "match_lora": match_lora,
            "lora_target_modules": lora_target_modules}
    budgets: list[Budget] = []
    ratio = parse_avoid(avoid)
    loads = ratio is not None or get_scorer(scorer).wants_data(
        has_reference=options.get("reference") is not None)
    if loads and isinstance(model, str):  # a bad budget fails before minutes of loading
        skeleton = model_skeleton(model)
        if skeleton is not None:
            unscored(skeleton, options.get("target_modules"),
                     options.get("include_gate", False)).fitted_budget(layers, **spec)

    def check_budget(scores: NeuronScores) -> None:
        budgets.append(scores.fitted_budget(layers, **spec))  # before the scoring
        if options.get("progress", True):
            logger.info("neft select: %s, budget %s, pool %s neurons", scorer,
                        budgets[0].describe(), f"{scores.metadata['candidate_pool']:,}")

    if ratio is None:
        scores = score_neurons(model, scorer, on_ready=check_budget, **options)
        return scores.select(budgets[0], quota, layers)
    data = options.get("data")
    # without data the pass samples token ids from the model: no tokenizer needed
    model, _, tokenizer = open_model(model, options.pop("tokenizer", None), True,
                                     needs_tokenizer=data is not None)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    seed = options.get("seed", 1234)
    measured_on = "the task data"
    if not get_scorer(scorer).wants_data(has_reference=options.get("reference") is not None):
        options.pop("data", None)
    avoided: dict[int, torch.Tensor] = {}

    def measure_massive(scores: NeuronScores) -> None:
        """After the budget check (a bad budget fails before this pass), before scoring
        (the probes train the model, and put it back, while scoring)."""
        nonlocal measured_on
        check_budget(scores)
        if data is None:  # massive units are the model's, whatever the text
            examples, measured_on = model_text(model, seed, pad_id)
        else:
            examples = task_examples(model, data, tokenizer, options.get("task", "translation"),
                                     options.get("max_length", 128), options.get("limit"))
        avoided.update(massive_units(model, scores.groups, examples, pad_id, ratio, seed))

    scores = score_neurons(model, scorer, on_ready=measure_massive, tokenizer=tokenizer,
                           **options)
    chosen = scores.select(budgets[0], quota, layers, avoided)
    chosen.metadata["avoid"] = f"massive:{ratio:g}"
    chosen.metadata["avoid_measured_on"] = measured_on
    return chosen


def score_neurons(
    model: nn.Module | str,
    scorer: str = DEFAULT_SCORER,
    *,
    reference: WeightSource | None = None,
    data: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None,
    tokenizer: Any = None,
    task: str = "translation",
    max_length: int = 128,
    limit: int | None = None,
    seed: int = 1234,
    target_modules: Mapping[str, str] | None = None,
    include_gate: bool = False,
    steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    restore: bool = True,
    progress: bool = True,
    on_ready: Callable[[NeuronScores], None] | None = None,
    scorer_options: Mapping[str, Any] | None = None,
) -> NeuronScores:
    """Score every candidate neuron of ``model`` with ``scorer``.

    ``model``: a loaded model, or a name/path; from a path, ``cosine``, ``reversed`` (with
    a reference), ``random`` and ``magnitude`` build the model without weights and read
    them one matrix at a time, so a 7B model needs memory for about one layer.
    ``reference``: the fine-tuned checkpoint (path or model) for ``cosine``/``reversed``.
    ``data``: dataset path, records or tokenized examples for ``probe``, ``fast-probe``
    and ``gradient`` (``task``, ``max_length``, ``limit`` as in neft.data); ``steps``,
    ``learning_rate``, ``batch_size`` override those scorers' defaults. ``restore``: the
    probes train the model in place; its weights are parked in a temporary file (not
    memory) and put back unless False. ``on_ready`` is called with the (still empty)
    result before scoring, e.g. to check a budget. ``scorer_options``: any of the
    scorer's knobs (its registry defaults), e.g. {"steps": 40}; unknown names fail.
    """
    registered = get_scorer(scorer)
    check_scorer_options(scorer, scorer_options)
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    needs_data = registered.wants_data(has_reference=reference is not None)
    if data is not None and not needs_data:
        raise NeftError(f"scorer {scorer!r} uses no data; drop data= (CLI --data), or use "
                        "'fast-probe', 'probe' or 'gradient' to select from task data")
    if needs_data and data is None:
        raise NeftError(f"scorer {scorer!r} needs task data: pass data= (CLI --data PATH)")
    model_name = model if isinstance(model, str) else (
        getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    model, weights, tokenizer = open_model(model, tokenizer, needs_data)
    result = unscored(model, target_modules, include_gate)
    metadata = result.metadata
    metadata.update({"scorer": scorer, "seed": seed, "base_model": model_name,
                     "base_fingerprint": model_fingerprint(model), "include_gate": include_gate,
                     "target_modules": dict(target_modules) if target_modules else "preset"})
    groups = result.groups
    if on_ready is not None:
        on_ready(result)

    examples = None
    if needs_data:
        examples = task_examples(model, data, tokenizer, task, max_length, limit)
        metadata.update({
            "data": str(data) if isinstance(data, str | os.PathLike) else "in memory",
            "data_fingerprint": data_fingerprint(examples), "data_examples": len(examples),
            "task": task, "max_length": max_length})
    options = {k: v for k, v in {"steps": steps, "learning_rate": learning_rate,
                                 "batch_size": batch_size, "restore": restore}.items()
               if v is not None}
    options.update(scorer_options or {})
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    result.scores, settings = registered.fn(ScoreInput(
        model, groups, weights, seed, reference, examples, pad_id, options, progress))
    metadata.update({
        "scorer_settings": settings, **resource_usage(start),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "neft_version": __version__})
    return result


def unscored(model: nn.Module, target_modules: Mapping[str, str] | None = None,
             include_gate: bool = False) -> NeuronScores:
    """The model's candidate neurons, not scored yet: enough for a budget (a weightless
    model will do)."""
    groups = find_neuron_groups(model, target_modules, include_gate)
    return NeuronScores(groups, [], {"model_parameters": count_parameters(model),
                                     "candidate_pool": pool_size(groups)},
                        linear_shapes(model))


def task_examples(model: nn.Module, data: Any, tokenizer: Any, task: str, max_length: int,
                  limit: int | None) -> Sequence[Mapping[str, Any]]:
    """The task data tokenized for a pass of the model, refused in one line when an example
    is longer than the model's positions."""
    examples = prepare_examples(data, tokenizer, task, max_length, limit)
    check_length(model, max((len(e["input_ids"]) for e in examples), default=0),
                 f"the longest example (max_length {max_length})",
                 "pass --max_length {room} or less")
    return examples


def local_folder(model: str) -> str:
    return ensure_embedded_model() if is_embedded(model) else os.path.expanduser(model)


def model_skeleton(model: str) -> nn.Module | None:
    """The model built without weights (on the meta device) from a local safetensors
    folder's config, in a fraction of a second; None for anything else (a hub name, .bin
    weights), which only loading can tell about."""
    folder = local_folder(model)
    if not (os.path.isdir(folder) and any(f.endswith(".safetensors")
                                          for f in os.listdir(folder))):
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    try:  # the hub's model code never runs here (no flag to allow it in select)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise NeftError(f"model {model} needs its own Python code (auto_map) to load; "
                            "neft select never runs such code") from exc
        text = str(exc).strip()
        raise NeftError(f"cannot read the model config in {model} "
                        f"({text.splitlines()[0] if text else type(exc).__name__}); pass a "
                        "folder written by save_pretrained") from exc


def open_model(model: nn.Module | str, tokenizer: Any = None, needs_forward: bool = False,
               needs_tokenizer: bool = True) -> tuple[nn.Module, WeightSource, Any]:
    """(model, where its weights are read from, tokenizer). From a local safetensors
    folder and no forward pass needed: a weightless (meta) model plus that folder."""
    if isinstance(model, nn.Module):
        return model, model, tokenizer

    if not needs_forward:
        skeleton = model_skeleton(model)
        if skeleton is not None:
            return skeleton, local_folder(model), tokenizer
    try:
        loaded, loaded_tokenizer = load_model(model, with_tokenizer=needs_tokenizer
                                              and tokenizer is None)
    except NeftError as exc:
        if "own Python code" in str(exc):  # load_model's hint names a flag select lacks
            raise NeftError(f"model {model} needs its own Python code (auto_map) to load; "
                            "neft select never runs such code") from exc
        raise
    return loaded, loaded, tokenizer or loaded_tokenizer


def data_fingerprint(examples: Sequence[Mapping[str, Any]]) -> str:
    """Hash of the token ids and labels of the examples (what the scorer could see)."""
    digest = hashlib.sha256()
    for example in examples:
        for key in ("input_ids", "labels"):
            digest.update(torch.as_tensor(example[key], dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def resource_usage(start: float) -> dict[str, Any]:
    """Wall time since ``start`` and peak memory: CUDA allocations where used, else the
    process's peak RSS (ru_maxrss, KiB on Linux; it includes everything the process did)."""
    usage: dict[str, Any] = {"wall_time_s": round(time.perf_counter() - start, 2),
                             "peak_rss_mb": round(peak_rss_mb())}
    cuda = peak_cuda_mb()
    if cuda is not None:
        usage["peak_cuda_mb"] = round(cuda)
    return usage


