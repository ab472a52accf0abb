"""Neuron addressing: which weight rows/columns are neurons, and sets of them.

A neuron is (module path, axis, index). Axes use nn.Linear's [out, in] convention for
every layer type: ``rows`` are output units (a row of W), ``cols`` are input units (a
column of W). GPT-2's Conv1D stores W transposed; callers never see that here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..errors import NeftError

logger = logging.getLogger(__name__)

AXES = ("rows", "cols")
# Llama-2-7B's candidate neurons (32 layers x 11,008 up rows and down columns x 2): the
# paper's pool, which its budgets and thresholds are counted in.
PAPER_POOL = 704_512


# ----------------------------------------------------------------------------- layers


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style Conv1D: weight stored as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_target_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or Conv1D layer."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if is_conv1d(module):
        return module.nf, module.weight.shape[0]
    raise NeftError(f"{type(module).__name__} is not a linear layer; neurons live in nn.Linear "
                    "or Conv1D modules")


def neuron_size(shape: tuple[int, int], axis: str) -> int:
    """Parameters in one neuron: a row has `in` values, a column `out` values."""
    out_features, in_features = shape
    return in_features if axis == "rows" else out_features


# ----------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class NeuronGroup:
    """A contiguous range of candidate neurons on one axis of one module.

    ``kind`` names the role (``up``, ``down``, ``gate`` or the user's module name) so that
    selections can be summarised and quota'd per kind; ``layer`` is the block index.
    """

    module: str
    axis: str
    start: int
    count: int
    kind: str
    layer: int
    shape: tuple[int, int]

    @property
    def neuron_params(self) -> int:
        return neuron_size(self.shape, self.axis)

    @property
    def indices(self) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.count)


class MLPLayout(NamedTuple):
    """An MLP found in Hugging Face decoders, recognised from a module's own children: its
    in-projection (``up``, neurons are its rows), out-projection (``down``, columns), the
    gate projection or None, and whether ``up`` is fused as [gate; up]."""

    name: str
    up: str
    down: str
    gate: str | None = None
    fused: bool = False


# The neuron presets, tried in order; register_preset adds one.
MLP_LAYOUTS: dict[str, MLPLayout] = {}


def register_preset(name: str, up: str, down: str, gate: str | None = None,
                    fused: bool = False) -> MLPLayout:
    """Teach find_neuron_groups an MLP layout: the child names of its in- and
    out-projection (and gate), e.g. ``register_preset("gpt-j", "fc_in", "fc_out")``."""
    if name in MLP_LAYOUTS:
        raise NeftError(f"neuron preset {name!r} is registered already")
    MLP_LAYOUTS[name] = layout = MLPLayout(name, up, down, gate, fused)
    return layout


register_preset("llama", "up_proj", "down_proj", "gate_proj")  # Mistral, Qwen2, Gemma, SmolLM
register_preset("phi-3", "gate_up_proj", "down_proj", fused=True)  # up is the second half
register_preset("gpt-2", "c_fc", "c_proj")  # Conv1D
register_preset("gpt-neox", "dense_h_to_4h", "dense_4h_to_h")  # GPT-NeoX, Falcon, BLOOM
register_preset("opt", "fc1", "fc2")  # OPT, Phi-1/2
register_preset("gpt-j", "fc_in", "fc_out")


def layer_index(path: str) -> int:
    """Block number of a module path (first integer component), -1 if none."""
    match = re.search(r"\.(\d+)(\.|$)", "." + path)
    return int(match.group(1)) if match else -1


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _language_parts(model: nn.Module) -> tuple[str, ...]:
    """Path prefixes of a multimodal model's language model (Gemma 3, LLaVA, Qwen2-VL keep
    it as ``language_model`` beside a vision tower): text training never moves the
    tower's neurons, so they would spend the budget on nothing. Empty: the whole model."""
    return tuple(name + "." for name, _ in model.named_modules()
                 if name.rsplit(".", 1)[-1] == "language_model")


def _preset_groups(model: nn.Module, include_gate: bool) -> list[NeuronGroup]:
    groups: list[NeuronGroup] = []
    language = _language_parts(model)
    for path, module in model.named_modules():
        if language and not (path + ".").startswith(language):
            continue
        children = _children(module)
        for _, in_name, out_name, gate_name, fused in MLP_LAYOUTS.values():
            up, down = children.get(in_name), children.get(out_name)
            if up is None or down is None or not (is_target_layer(up) and is_target_layer(down)):
                continue
            up_shape, down_shape = linear_shape(up), linear_shape(down)
            intermediate = down_shape[1]
            if up_shape[0] != (2 * intermediate if fused else intermediate):
                continue
            prefix = f"{path}." if path else ""
            layer = layer_index(path)
            start = intermediate if fused else 0
            groups.append(NeuronGroup(prefix + in_name, "rows", start, intermediate, "up", layer,
                                      up_shape))
            groups.append(NeuronGroup(prefix + out_name, "cols", 0, intermediate, "down", layer,
                                      down_shape))
            if include_gate:
                gate = up if fused else children.get(gate_name or "")
                if gate is not None and is_target_layer(gate):
                    gate_path = prefix + (in_name if fused else gate_name)
                    groups.append(NeuronGroup(gate_path, "rows", 0, intermediate, "gate", layer,
                                              linear_shape(gate)))
            break
    return groups


def _match(pattern: str, path: str) -> bool:
    if path == pattern or path.endswith("." + pattern):
        return True
    return re.fullmatch(pattern, path) is not None


def _explicit_groups(model: nn.Module, target_modules: Mapping[str, str]) -> list[NeuronGroup]:
    """One group per matched module and axis: a module two patterns match counts once."""
    groups: list[NeuronGroup] = []
    seen: set[tuple[str, str]] = set()
    for pattern, value in target_modules.items():
        axes = str(value).split("+")
        if not all(axis in AXES for axis in axes):
            raise NeftError(f"target_modules[{pattern!r}] = {value!r}: the axis must be 'rows' "
                            "(output units), 'cols' (input units) or 'rows+cols'")
        found = [(p, m) for p, m in model.named_modules() if p and _match(pattern, p)]
        found = [(p, m) for p, m in found if is_target_layer(m)]
        if not found:
            raise NeftError(f"target_modules: no linear layer matches {pattern!r}; module names "
                            "are as in model.named_modules(), e.g. 'mlp.fc_in' or a regex")
        kind = pattern.split(".")[-1]
        for path, module in found:
            shape = linear_shape(module)
            for axis in dict.fromkeys(axes):
                if (path, axis) in seen:
                    continue
                seen.add((path, axis))
                count = shape[0] if axis == "rows" else shape[1]
                groups.append(NeuronGroup(path, axis, 0, count, kind, layer_index(path),
                                          shape))
    return groups


def find_neuron_groups(model: nn.Module, target_modules: Mapping[str, str] | None = None,
                       include_gate: bool = False) -> list[NeuronGroup]:
    """The candidate neurons of a model: the MLP in-rows and out-columns it has.

    Presets are recognised from module structure (a module whose children are e.g.
    ``up_proj`` + ``down_proj`` of matching sizes), not from model names. Pass
    ``target_modules={"path or regex": "rows" | "cols" | "rows+cols"}`` for anything else.
    """
    if target_modules:
        return _explicit_groups(model, target_modules)
    if hasattr(model, "neft_layers"):
        raise NeftError("this model is a NeftModel already: select neurons on its base model "
                        "(model.base_model), before wrapping it")
    groups = _preset_groups(model, include_gate)
    if include_gate and groups and not any(g.kind == "gate" for g in groups):
        logger.warning("include_gate: the MLP of %s has no gate projection; its up and down "
                       "neurons are the candidates", type(model).__name__)
    experts = {name for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] == "experts"}
    if experts:
        logger.warning("%d mixture-of-experts blocks (e.g. %s): neft's presets find the dense "
                       "MLPs only%s, not the routed experts", len(experts), min(experts),
                       " (shared experts included)" if groups else "")
    if not groups:
        raise NeftError(f"no MLP neuron preset matches {type(model).__name__}; name the modules "
                        "and axes yourself, e.g. target_modules={'mlp.fc_in': 'rows', "
                        "'mlp.fc_out': 'cols'} (CLI: neft select --target_modules "
                        "mlp.fc_in=rows,mlp.fc_out=cols, then neft train --neurons FILE)")
    return groups


def pool_size(groups: Iterable[NeuronGroup]) -> int:
    return sum(g.count for g in groups)


# ----------------------------------------------------------------------------- fingerprints


def count_parameters(model: nn.Module) -> int:
    """All parameters of the base model (tied weights once), excluding neft deltas."""
    return sum(p.numel() for n, p in model.named_parameters() if "neft_delta" not in n)


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture: model type and every base parameter's name and shape.

    Dtype is left out on purpose (a bf16 and an fp32 copy are the same base model);
    neft's own wrappers are seen through, so a wrapped model has its base's fingerprint.
    """
    config = getattr(model, "config", None)
    items: list[object] = [getattr(config, "model_type", type(model).__name__)]
    for name, param in model.named_parameters():
        if "neft_delta" in name:
            continue
        items.append((name.replace(".base_layer.", "."), list(param.shape)))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
