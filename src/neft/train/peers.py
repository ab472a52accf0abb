"""PEFT's own sparse and MLP-only methods as baselines, sized to a neft budget.

Registered as methods in neft.train.methods, so `neft train`, `neft compare` and
`neft bench` all have them: each method is set up
from a trainable-parameter count, the neft budget's, so that the comparison is at equal
count:

``lora-mlp``         LoRA on the MLP modules neft draws neurons from (up/down), rank to count
``shira``            peft's SHiRA (random sparse entries), all linear layers but lm_head
``shira-mlp``        SHiRA on the MLP up/down modules only
``supertuning``      peft's Super-Tuning (top-magnitude sparse entries), all linear layers
``supertuning-mlp``  Super-Tuning on the MLP up/down modules only

LoRA and SHiRA count r (in + out) per module, so their count is met to the nearest rank;
Super-Tuning's sparsity is continuous and meets it to a fraction of a percent.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..core.neurons import find_neuron_groups, is_conv1d, is_target_layer, linear_shape
from ..errors import NeftError

logger = logging.getLogger(__name__)

PEERS = ("lora-mlp", "shira", "shira-mlp", "supertuning", "supertuning-mlp")


def target_modules(model: nn.Module, mlp_only: bool) -> dict[str, tuple[int, int]]:
    """path -> [out, in] of the modules a method targets: the MLP up/down modules of the
    neuron preset, or every linear layer but lm_head (peft's all-linear)."""
    if mlp_only:
        paths = {g.module for g in find_neuron_groups(model)}
    else:
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        paths = {path for path, module in model.named_modules()
                 if path and is_target_layer(module) and module is not output
                 and path.split(".")[-1] != "lm_head"}
    return {path: linear_shape(model.get_submodule(path)) for path in sorted(paths)}


def peer_config(method: str, model: nn.Module, parameters: int, seed: int = 0) -> Any:
    """The peft config of ``method`` with about ``parameters`` trainable values."""
    if method not in PEERS:
        raise NeftError(f"method {method!r} is not one of PEFT's peers; use one of "
                        f"{', '.join(PEERS)}")
    if parameters < 1:
        raise NeftError(f"{method} needs a positive parameter budget, not {parameters}")
    family = method.split("-")[0]
    targets = target_modules(model, mlp_only=method.endswith("-mlp") or family == "lora")
    names = sorted(targets)
    conv1d = any(is_conv1d(model.get_submodule(p)) for p in names)
    per_rank = sum(out + inp for out, inp in targets.values())
    rank = max(1, round(parameters / per_rank))
    if family == "lora":
        from peft import LoraConfig

        return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=names,
                          fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    if family == "shira":
        from peft import ShiraConfig

        return ShiraConfig(r=rank, target_modules=names, random_seed=seed,
                           fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    from peft import SupertuningConfig

    entries = sum(out * inp for out, inp in targets.values())
    if parameters >= entries:
        raise NeftError(f"{method}: a budget of {parameters:,} parameters is every entry of its "
                        f"target modules ({entries:,}); give a smaller budget")
    return SupertuningConfig(sparsity=1 - parameters / entries, target_modules=names,
                             task_type="CAUSAL_LM")


def apply_peer(model: nn.Module, method: str, parameters: int, seed: int = 0) -> nn.Module:
    """``model`` wrapped by the peft method, about ``parameters`` trainable (logged)."""
    from peft import get_peft_model

    config = peer_config(method, model, parameters, seed)
    try:
        wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        text = str(exc).strip()
        raise NeftError(f"{method} cannot be applied to this model: "
                        f"{text.splitlines()[0] if text else type(exc).__name__}") from exc
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    logger.info("%s: %d trainable parameters for a budget of %d", method, trainable, parameters)
    return wrapped
