"""The methods `neft train` can run: which parameters each makes trainable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..core.loading import recorded_name
from ..core.model import NeftConfig, get_neft_model
from ..core.neurons import NeuronSet, find_neuron_groups
from ..errors import NeftError

if TYPE_CHECKING:
    from .options import TrainConfig

METHODS = ("neft", "random", "lora", "full", "ft-inout")

# ----------------------------------------------------------------------------- models


def _budget(config: TrainConfig) -> dict[str, Any]:
    if config.num_neurons is not None:
        return {"neurons": config.num_neurons}
    if config.percent is not None:
        return {"percent": config.percent}
    return {"match_lora": config.match_lora}


def select_for_training(model: nn.Module, config: TrainConfig, dataset: Any) -> NeuronSet:
    """Neurons for methods neft (file or on-the-fly scorer) and random."""
    from ..select import NEEDS_DATA, select_neurons

    if config.method == "neft" and config.neurons:
        return NeuronSet.load(config.neurons)
    scorer = "random" if config.method == "random" else config.scorer
    # reversed has no --reference here, so it runs a probe on the training data
    data = list(dataset) if scorer in NEEDS_DATA or scorer == "reversed" else None
    return _on_rank_zero(lambda: select_neurons(model, scorer=scorer, data=data,
                                                seed=config.seed, **_budget(config)))


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


def prepare_model(model: nn.Module, config: TrainConfig, dataset: Any) -> nn.Module:
    """Make exactly the method's parameters trainable."""
    if config.method in ("neft", "random"):
        neurons = select_for_training(model, config, dataset)
        neft_config = NeftConfig(neurons=neurons, mode=config.neft_mode,
                                 base_model_name_or_path=config.model)
        return get_neft_model(model, neft_config)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
                          target_modules=targets if targets == "all-linear"
                          else [t.strip() for t in targets.split(",")])
        try:
            wrapped = get_peft_model(model, lora)
            # the adapter works from any working directory (peft records the path as typed)
            wrapped.peft_config["default"].base_model_name_or_path = recorded_name(config.model)
            return wrapped
        except ValueError as exc:  # e.g. target modules the model does not have
            text = str(exc).strip()
            raise NeftError(f"LoRA cannot be applied: {text.splitlines()[0] if text else exc!r}"
                            "; name lora_target_modules as in model.named_modules() (e.g. "
                            "q_proj,v_proj) or use all-linear") from exc
    trainable = None
    if config.method == "ft-inout":
        trainable = {g.module for g in find_neuron_groups(model)}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            param.requires_grad_(trainable is None or name in trainable)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
