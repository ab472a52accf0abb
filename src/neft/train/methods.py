"""The one registry of training methods: `neft train` (so `neft compare`) and `neft bench`
set every method up through it.

A method is one entry: its name, a ``prepare(model, spec)`` that makes exactly its
parameters trainable (or wraps the model) and returns the model to train, and how its
size is set (``budget``). Add one with ``register_method``, as PEFT's
``register_peft_method`` does:

    def prepare_bitfit(model, spec):
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith(".bias"))
        return model

    register_method("bitfit", prepare_bitfit, saves_model=True, label="all biases")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..core.loading import recorded_name
from ..core.model import NeftConfig, get_neft_model
from ..core.neuron_set import NeuronSet
from ..core.neurons import find_neuron_groups
from ..errors import NeftError
from ..select import get_scorer, select_neurons
from ..select.massive import DEFAULT_AVOID
from ..select.scoring import unscored
from .peers import PEERS, apply_peer

if TYPE_CHECKING:
    from .options import TrainConfig

BUDGETS = ("neurons", "parameters", "lora_rank", None)


@dataclass
class MethodSpec:
    """What a method's ``prepare`` may use. `neft train` fills it from TrainConfig;
    `neft bench` from its budget (random neurons, the matching LoRA rank)."""

    neurons: NeuronSet | None = None  # for methods that select neurons (neft, random)
    budget_parameters: int | None = None  # the neft budget's trainable count (peers)
    neft_mode: str = "compact"
    lora_r: int = 8
    lora_alpha: int = 16  # TrainConfig's default (the paper's), also in `neft bench`
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    seed: int = 1234
    base_model_name_or_path: str | None = None
    options: dict[str, Any] | None = None  # anything a newer method needs (method_options)


@dataclass(frozen=True)
class Method:
    """One training method.

    ``budget``: ``"neurons"`` (the neft budget picks a NeuronSet first: neft, random),
    ``"parameters"`` (sized to the neft budget's trainable count), ``"lora_rank"``
    (lora_r; bench matches it to the budget) or None (a fixed set, named by ``label``).
    ``saves_model``: the trained model is saved whole (with its tokenizer), not an adapter.
    ``scorer``: the scorer a neuron method always uses (random), else TrainConfig's.
    ``avoid``: what a neuron method leaves out unless told (select_avoid auto): the
    default's rule for neft, nothing for random, the control it is measured against.
    """

    name: str
    prepare: Callable[[nn.Module, MethodSpec], nn.Module]
    budget: str | None = None
    saves_model: bool = False
    scorer: str | None = None
    label: str = ""
    help: str = ""
    avoid: str | None = DEFAULT_AVOID

    @property
    def selects_neurons(self) -> bool:
        return self.budget == "neurons"


METHODS: dict[str, Method] = {}


def register_method(name: str, prepare: Callable[[nn.Module, MethodSpec], nn.Module], *,
                    budget: str | None = None, saves_model: bool = False,
                    scorer: str | None = None, label: str = "", help: str = "",
                    avoid: str | None = DEFAULT_AVOID) -> Method:
    """Add a method to `neft train`, `neft compare` and `neft bench` (a name used before is
    an error: methods are not replaced silently)."""
    if name in METHODS:
        raise NeftError(f"method {name!r} is registered already")
    if budget not in BUDGETS:
        raise NeftError(f"method {name!r}: budget must be one of {BUDGETS}, not {budget!r}")
    method = Method(name, prepare, budget, saves_model, scorer, label,
                    help or (prepare.__doc__ or "").strip().split("\n")[0], avoid)
    METHODS[name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise NeftError(f"method {name!r} is not known; use one of {', '.join(METHODS)}")
    return METHODS[name]


def prepare_neft(model: nn.Module, spec: MethodSpec) -> nn.Module:
    """The chosen neurons' rows / columns, as a NeftModel adapter."""
    if spec.neurons is None:
        raise NeftError("method neft needs neurons: pass a NeuronSet (spec.neurons)")
    config = NeftConfig(neurons=spec.neurons, mode=spec.neft_mode,
                        base_model_name_or_path=spec.base_model_name_or_path)
    return get_neft_model(model, config)


def lora_targets(text: str) -> list[str] | None:
    """--lora_target_modules as module names; None for all-linear (every linear layer but
    lm_head, as peft reads it)."""
    if text == "all-linear":
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def prepare_lora(model: nn.Module, spec: MethodSpec) -> nn.Module:
    """peft's LoRA, rank lora_r on lora_target_modules."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha,
                      lora_dropout=spec.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=lora_targets(spec.lora_target_modules) or "all-linear")
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as exc:  # e.g. target modules the model does not have
        text = str(exc).strip()
        raise NeftError(f"LoRA cannot be applied: {text.splitlines()[0] if text else exc!r}"
                        "; name lora_target_modules as in model.named_modules() (e.g. "
                        "q_proj,v_proj) or use all-linear") from exc
    return _record_base(wrapped, spec)


def _record_base(wrapped: nn.Module, spec: MethodSpec) -> nn.Module:
    """A peft adapter that works from any working directory (peft records the path as
    typed)."""
    if spec.base_model_name_or_path is not None:
        wrapped.peft_config["default"].base_model_name_or_path = recorded_name(
            spec.base_model_name_or_path)
    return wrapped


def _train_only(model: nn.Module, modules: set[str] | None) -> nn.Module:
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            param.requires_grad_(modules is None or name in modules)
    return model


def peer_method(name: str) -> Callable[[nn.Module, MethodSpec], nn.Module]:
    """The prepare() of one of PEFT's peers (neft.train.peers), sized to the neft budget's
    trainable count (spec.budget_parameters)."""

    def prepare(model: nn.Module, spec: MethodSpec) -> nn.Module:
        if spec.budget_parameters is None:
            raise NeftError(f"method {name} is sized to a neft budget: pass its parameter "
                            "count (spec.budget_parameters)")
        return _record_base(apply_peer(model, name, spec.budget_parameters, spec.seed), spec)

    return prepare


def prepare_full(model: nn.Module, spec: MethodSpec) -> nn.Module:
    """Every weight."""
    return _train_only(model, None)


def prepare_ft_inout(model: nn.Module, spec: MethodSpec) -> nn.Module:
    """Every MLP in-row and out-column: all up/down weights (and their biases)."""
    return _train_only(model, {g.module for g in find_neuron_groups(model)})


register_method("neft", prepare_neft, budget="neurons",
                help="neurons from a NeuronSet file, or selected on the fly by the scorer")
register_method("random", prepare_neft, budget="neurons", scorer="random", avoid=None,
                help="random neurons at the same budget (the control: massive units "
                     "not left out unless --select_avoid says so)")
register_method("lora", prepare_lora, budget="lora_rank", help="peft's LoRA")
register_method("full", prepare_full, saves_model=True, label="all")
register_method("ft-inout", prepare_ft_inout, saves_model=True, label="all up/down")
for _peer in PEERS:  # PEFT's lora-mlp, SHiRA and Super-Tuning, sized to the neft budget
    register_method(_peer, peer_method(_peer), budget="parameters",
                    help=f"PEFT's {_peer} at the neft budget's trainable count")


def _budget(config: TrainConfig) -> dict[str, Any]:
    """select_neurons' budget: a LoRA rank is sized on --lora_target_modules, as in
    neft select and as the LoRA cells of a comparison train it."""
    if config.num_neurons is not None:
        return {"neurons": config.num_neurons}
    if config.percent is not None:
        return {"percent": config.percent}
    return {"match_lora": config.match_lora,
            "lora_target_modules": lora_targets(config.lora_target_modules)}


def check_selection_budget(model: nn.Module, config: TrainConfig) -> None:
    """The run's budget and layer band fit the model's candidate neurons (a weightless
    model will do): a comparison checks every cell before its first run, not hours in."""
    if get_method(config.method).selects_neurons and not config.neurons:
        unscored(model).fitted_budget(config.select_layers, **_budget(config))


def select_for_training(model: nn.Module, config: TrainConfig, dataset: Any) -> NeuronSet:
    """Neurons for methods neft (file or on-the-fly scorer) and random."""
    if config.method == "neft" and config.neurons:
        return NeuronSet.load(config.neurons)
    scorer = get_method(config.method).scorer or config.scorer
    # reversed has no --reference here, so it runs a probe on the training data
    wants_data = get_scorer(scorer).wants_data(has_reference=False) or config.select_avoid
    data = list(dataset) if wants_data else None
    options = config.scorer_options if scorer == config.scorer else None
    return _on_rank_zero(lambda: select_neurons(model, scorer=scorer, data=data,
                                                seed=config.seed, scorer_options=options,
                                                layers=config.select_layers,
                                                quota=config.select_quota,
                                                avoid=config.select_avoid,
                                                **_budget(config)))


def _on_rank_zero(select: Any) -> NeuronSet:
    """Under torchrun / accelerate launch, rank 0 selects (on the whole, not yet wrapped
    model) and sends the set to the other ranks, which wait: every rank must train the same
    neurons, and recomputing them on each rank could differ by a tie flipped by float
    noise, while N processes scoring at once would compete for one host's cores."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return select()
    box = [select() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def budget_parameters(model: nn.Module, config: TrainConfig) -> int:
    """The parameters neft trains at this budget (neurons x neuron size), which PEFT's
    peers are sized to."""
    return unscored(model).budget(**_budget(config)).parameters


def method_spec(config: TrainConfig, neurons: NeuronSet | None = None,
                budget_parameters: int | None = None) -> MethodSpec:
    return MethodSpec(neurons=neurons, budget_parameters=budget_parameters,
                      neft_mode=config.neft_mode, lora_r=config.lora_r,
                      lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      lora_target_modules=config.lora_target_modules, seed=config.seed,
                      base_model_name_or_path=config.model)


def prepare_model(model: nn.Module, config: TrainConfig, dataset: Any) -> nn.Module:
    """Make exactly the method's parameters trainable."""
    method = get_method(config.method)
    neurons = select_for_training(model, config, dataset) if method.selects_neurons else None
    parameters = (budget_parameters(model, config) if method.budget == "parameters"
                  else None)
    return method.prepare(model, method_spec(config, neurons, parameters))


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
